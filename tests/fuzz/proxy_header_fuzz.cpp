// libFuzzer target for the PROXY protocol header parser; a parsed header must re-encode and
// parse back to the same addresses.
#include "proxy/protocol/proxy_header.h"

#include <cstdlib>
#include <cstring>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto header =
      protocol::parseProxyHeader(std::span<const char>(reinterpret_cast<const char*>(data), size));
  if (header.status == protocol::ProxyHeader::Status::Done) {
    if (header.consumed > size) {
      std::abort();
    }
    if (header.hasAddresses) {
      std::string again =
          protocol::encodeProxyHeader(config::ProxyProtocol::V2, header.source, header.destination);
      auto parsed = protocol::parseProxyHeader(again);
      if (parsed.status != protocol::ProxyHeader::Status::Done || parsed.consumed != again.size() ||
          std::memcmp(&parsed.source, &header.source, sizeof(sockaddr_storage)) != 0) {
        std::abort();
      }
    }
  }
  return 0;
}
