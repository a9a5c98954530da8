// ManageSieve's row in the protocol table (SPEC §12): port 4190 with STARTTLS (no implicit-TLS
// port is standard; `tls = "implicit"` still works), ALPN "managesieve", the lines postern
// says itself as ManageSieve responses (RFC 5804 §1.3: TRYLATER for temporary failures).
#include "proxy/protocol/sieve/sieve.h"

namespace protocol {

namespace {

// A greeting is a capability list (quoted names) ending in OK; a refusal starts NO or BYE.
bool sieveGreeting(std::string_view text) {
  std::string_view ok = "OK";
  return text.empty() || text.front() == '"' ||
         text.substr(0, std::min(text.size(), ok.size())) ==
             ok.substr(0, std::min(text.size(), ok.size()));
}

} // namespace

ProtocolInfo sieveProtocol(std::string_view) {
  return {config::Protocol::Sieve,
          "sieve",
          4190,
          0,
          "managesieve",
          sieveGreeting,
          &sieveProbe(),
          false,
          nullptr,
          false,
          makeSieveFilter,
          makeSieveBackendStartTls,
          makeSieveLogin,
          makeSieveReplay,
          "BYE (TRYLATER) \"Service temporarily unavailable\"\r\n",
          "BYE (TRYLATER) \"Too many connections, try again later\"\r\n",
          "BYE (TRYLATER) \"Server shutting down\"\r\n",
          "BYE \"Timed out waiting for authentication\"\r\n"};
}

} // namespace protocol
