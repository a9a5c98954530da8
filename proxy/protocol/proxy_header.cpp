// The PROXY protocol (HAProxy, versions 1 and 2): encoding the header postern sends to backends
// and parsing the header a trusted load balancer sends to postern. Pure: bytes and addresses.
#include "proxy/protocol/proxy_header.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <string_view>

namespace protocol {

namespace {

constexpr char kV2Signature[12] = {'\r', '\n', '\r', '\n', '\0', '\r',
                                   '\n', 'Q',  'U',  'I',  'T',  '\n'};
constexpr std::size_t kV1MaxLength = 107; // the specification's bound, CRLF included
constexpr std::size_t kV2MaxLength = 16 + 4096;

std::string ipText(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&address)->sin_addr, text,
              sizeof text);
  } else if (address.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr, text,
              sizeof text);
  }
  return text;
}

std::uint16_t portOf(const sockaddr_storage& address) {
  return address.ss_family == AF_INET6
             ? ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port)
             : ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
}

bool setAddress(std::string_view ip, std::string_view port, bool v6, sockaddr_storage& out) {
  unsigned value = 0;
  auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || error != std::errc{} || end != port.data() + port.size() || value > 65535) {
    return false;
  }
  std::string host(ip);
  out = {};
  if (v6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(static_cast<std::uint16_t>(value));
    return inet_pton(AF_INET6, host.c_str(), &a->sin6_addr) == 1;
  }
  auto* a = reinterpret_cast<sockaddr_in*>(&out);
  a->sin_family = AF_INET;
  a->sin_port = htons(static_cast<std::uint16_t>(value));
  return inet_pton(AF_INET, host.c_str(), &a->sin_addr) == 1;
}

ProxyHeader invalid(std::string error) {
  ProxyHeader header;
  header.status = ProxyHeader::Status::Invalid;
  header.error = std::move(error);
  return header;
}

ProxyHeader parseV1(std::string_view data) {
  std::size_t end = data.find("\r\n");
  if (end == std::string_view::npos) {
    return data.size() >= kV1MaxLength ? invalid("v1 header too long") : ProxyHeader{};
  }
  if (end + 2 > kV1MaxLength) {
    return invalid("v1 header too long");
  }
  std::string_view line = data.substr(0, end);
  std::string_view fields[6];
  std::size_t count = 0;
  while (!line.empty() && count < 6) {
    std::size_t space = line.find(' ');
    fields[count++] = line.substr(0, space);
    line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  }
  ProxyHeader header;
  header.status = ProxyHeader::Status::Done;
  header.consumed = end + 2;
  if (count >= 2 && fields[1] == "UNKNOWN") {
    return header;
  }
  if (count != 6 || !line.empty() || (fields[1] != "TCP4" && fields[1] != "TCP6")) {
    return invalid("malformed v1 header");
  }
  bool v6 = fields[1] == "TCP6";
  if (!setAddress(fields[2], fields[4], v6, header.source) ||
      !setAddress(fields[3], fields[5], v6, header.destination)) {
    return invalid("bad address in v1 header");
  }
  header.hasAddresses = true;
  return header;
}

ProxyHeader parseV2(std::span<const unsigned char> data) {
  if (data.size() < 16) {
    return {};
  }
  unsigned versionCommand = data[12];
  unsigned family = data[13];
  std::size_t length = (static_cast<std::size_t>(data[14]) << 8) | data[15];
  if ((versionCommand & 0xF0) != 0x20) {
    return invalid("unsupported v2 version");
  }
  if (16 + length > kV2MaxLength) {
    return invalid("v2 header too long");
  }
  if (data.size() < 16 + length) {
    return {};
  }
  ProxyHeader header;
  header.status = ProxyHeader::Status::Done;
  header.consumed = 16 + length;
  unsigned command = versionCommand & 0x0F;
  if (command == 0x0) {
    return header; // LOCAL: a health check from the balancer itself
  }
  if (command != 0x1) {
    return invalid("unknown v2 command");
  }
  const unsigned char* body = data.data() + 16;
  if (family == 0x11 && length >= 12) {
    auto* source = reinterpret_cast<sockaddr_in*>(&header.source);
    auto* destination = reinterpret_cast<sockaddr_in*>(&header.destination);
    source->sin_family = destination->sin_family = AF_INET;
    std::memcpy(&source->sin_addr, body, 4);
    std::memcpy(&destination->sin_addr, body + 4, 4);
    std::memcpy(&source->sin_port, body + 8, 2);
    std::memcpy(&destination->sin_port, body + 10, 2);
    header.hasAddresses = true;
  } else if (family == 0x21 && length >= 36) {
    auto* source = reinterpret_cast<sockaddr_in6*>(&header.source);
    auto* destination = reinterpret_cast<sockaddr_in6*>(&header.destination);
    source->sin6_family = destination->sin6_family = AF_INET6;
    std::memcpy(&source->sin6_addr, body, 16);
    std::memcpy(&destination->sin6_addr, body + 16, 16);
    std::memcpy(&source->sin6_port, body + 32, 2);
    std::memcpy(&destination->sin6_port, body + 34, 2);
    header.hasAddresses = true;
  } else if (family != 0x00) {
    return invalid("unsupported v2 address family");
  }
  return header;
}

} // namespace

namespace {

// PROXY protocol v2 §2.2: type, 16-bit length, value.
void appendTlv(std::string& out, unsigned char type, std::string_view value) {
  std::size_t length = std::min<std::size_t>(value.size(), 0xFFFF);
  out += static_cast<char>(type);
  out += static_cast<char>(length >> 8);
  out += static_cast<char>(length & 0xFF);
  out.append(value.substr(0, length));
}

std::string tlsTlvs(const ProxyTls& tls) {
  constexpr unsigned char kAuthority = 0x02;
  constexpr unsigned char kSsl = 0x20;
  constexpr unsigned char kSslVersion = 0x21;
  constexpr unsigned char kSslCn = 0x22;
  constexpr unsigned char kSslCipher = 0x23;
  constexpr unsigned char kClientSsl = 0x01;
  constexpr unsigned char kClientCertConnection = 0x02;
  constexpr unsigned char kClientCertSession = 0x04;
  std::string ssl;
  unsigned char client = kClientSsl;
  if (tls.clientCertificate) {
    client |= kClientCertSession;
    if (tls.certificateOnThisConnection) {
      client |= kClientCertConnection;
    }
  }
  ssl += static_cast<char>(client);
  // `verify`: zero only when the client presented a certificate and it verified.
  char verify = tls.clientCertificate && tls.clientVerified ? 0 : 1;
  ssl += std::string(3, '\0');
  ssl += verify;
  appendTlv(ssl, kSslVersion, tls.version);
  if (tls.clientVerified && !tls.clientCommonName.empty()) {
    appendTlv(ssl, kSslCn, tls.clientCommonName);
  }
  appendTlv(ssl, kSslCipher, tls.cipher);
  std::string out;
  if (!tls.serverName.empty()) {
    appendTlv(out, kAuthority, tls.serverName);
  }
  appendTlv(out, kSsl, ssl);
  return out;
}

} // namespace

std::string encodeProxyHeader(config::ProxyProtocol version, const sockaddr_storage& source,
                              const sockaddr_storage& destination, const ProxyTls* tls) {
  bool v6 = source.ss_family == AF_INET6;
  bool known = (source.ss_family == AF_INET || v6) && source.ss_family == destination.ss_family;
  if (version == config::ProxyProtocol::V1) {
    if (!known) {
      return "PROXY UNKNOWN\r\n";
    }
    return std::string("PROXY ") + (v6 ? "TCP6 " : "TCP4 ") + ipText(source) + " " +
           ipText(destination) + " " + std::to_string(portOf(source)) + " " +
           std::to_string(portOf(destination)) + "\r\n";
  }
  std::string header(kV2Signature, sizeof kV2Signature);
  if (!known) {
    // LOCAL: nobody behind this connection (postern's own health checks).
    header += static_cast<char>(0x20);
    header += std::string(3, '\0');
    return header;
  }
  header += static_cast<char>(0x21); // version 2, PROXY
  header += static_cast<char>(v6 ? 0x21 : 0x11);
  std::string tlvs = tls != nullptr ? tlsTlvs(*tls) : std::string();
  std::size_t length = (v6 ? 36 : 12) + tlvs.size();
  header += static_cast<char>(length >> 8);
  header += static_cast<char>(length & 0xFF);
  if (v6) {
    auto* s = reinterpret_cast<const sockaddr_in6*>(&source);
    auto* d = reinterpret_cast<const sockaddr_in6*>(&destination);
    header.append(reinterpret_cast<const char*>(&s->sin6_addr), 16);
    header.append(reinterpret_cast<const char*>(&d->sin6_addr), 16);
    header.append(reinterpret_cast<const char*>(&s->sin6_port), 2);
    header.append(reinterpret_cast<const char*>(&d->sin6_port), 2);
  } else {
    auto* s = reinterpret_cast<const sockaddr_in*>(&source);
    auto* d = reinterpret_cast<const sockaddr_in*>(&destination);
    header.append(reinterpret_cast<const char*>(&s->sin_addr), 4);
    header.append(reinterpret_cast<const char*>(&d->sin_addr), 4);
    header.append(reinterpret_cast<const char*>(&s->sin_port), 2);
    header.append(reinterpret_cast<const char*>(&d->sin_port), 2);
  }
  return header + tlvs;
}

ProxyHeader parseProxyHeader(std::span<const char> data) {
  std::string_view text(data.data(), data.size());
  constexpr std::string_view kV1 = "PROXY ";
  std::string_view v2(kV2Signature, sizeof kV2Signature);
  if (text.size() < kV1.size() && kV1.starts_with(text)) {
    return {};
  }
  if (text.starts_with(kV1)) {
    return parseV1(text);
  }
  std::size_t prefix = std::min(text.size(), v2.size());
  if (text.substr(0, prefix) == v2.substr(0, prefix)) {
    return parseV2(std::span(reinterpret_cast<const unsigned char*>(data.data()), data.size()));
  }
  return invalid("no PROXY protocol header");
}

bool cidrContains(const config::Cidr& network, const sockaddr_storage& address) {
  const unsigned char* bytes = nullptr;
  if (address.ss_family == AF_INET && !network.ipv6) {
    bytes = reinterpret_cast<const unsigned char*>(
        &reinterpret_cast<const sockaddr_in*>(&address)->sin_addr);
  } else if (address.ss_family == AF_INET6 && network.ipv6) {
    bytes = reinterpret_cast<const unsigned char*>(
        &reinterpret_cast<const sockaddr_in6*>(&address)->sin6_addr);
  } else {
    return false;
  }
  unsigned full = network.prefix / 8;
  if (std::memcmp(bytes, network.bytes, full) != 0) {
    return false;
  }
  unsigned rest = network.prefix % 8;
  if (rest == 0) {
    return true;
  }
  unsigned mask = (0xFFu << (8 - rest)) & 0xFFu;
  return (bytes[full] & mask) == (network.bytes[full] & mask);
}

} // namespace protocol
