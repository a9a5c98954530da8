// ManageSieve's row in the protocol table (SPEC §12): port 4190 with STARTTLS (no implicit-TLS
// port is standard; `tls = "implicit"` still works), ALPN "managesieve", its dialogues, and the
// lines postern says itself as ManageSieve responses (RFC 5804 §1.3: TRYLATER).
#include "proxy/protocol/sieve/sieve.h"
#include "proxy/protocol/syntax.h"

namespace protocol {

ProtocolInfo sieveProtocol(std::string_view) {
  ProtocolInfo row;
  row.plaintextPort = 4190;
  row.implicitTlsPort = 0;
  row.alpn = "managesieve";
  // A greeting is a capability list (quoted names) ending in OK; a refusal is NO or BYE.
  row.greetingIsReady = [](std::string_view text) {
    return text.empty() || text.front() == '"' || startsLike(text, "OK");
  };
  row.probe = &sieveProbe();
  row.makeFilter = makeSieveFilter;
  row.makeBackendStartTls = makeSieveBackendStartTls;
  row.makeLogin = makeSieveLogin;
  row.makeReplay = makeSieveReplay;
  row.unavailable = "BYE (TRYLATER) \"Service temporarily unavailable\"\r\n";
  row.tooManyConnections = "BYE (TRYLATER) \"Too many connections, try again later\"\r\n";
  row.shuttingDown = "BYE (TRYLATER) \"Server shutting down\"\r\n";
  row.kicked = "BYE \"Disconnected by the administrator\"\r\n";
  row.timedOut = "BYE \"Timed out waiting for authentication\"\r\n";
  return row;
}

} // namespace protocol
