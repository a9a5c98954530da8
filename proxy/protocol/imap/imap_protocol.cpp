// IMAP's row in the protocol table: ports 143 and 993, ALPN "imap", its dialogues, and the
// lines postern says itself (RFC 5530 response codes).
#include "proxy/protocol/registry.h"
#include "proxy/protocol/syntax.h"

namespace protocol {

ProtocolInfo imapProtocol(std::string_view) {
  ProtocolInfo row;
  row.plaintextPort = 143;
  row.implicitTlsPort = 993;
  row.alpn = "imap";
  row.greetingIsReady = [](std::string_view text) {
    return startsLike(text, "* OK") || startsLike(text, "* PREAUTH");
  };
  row.probe = &imapProbe();
  row.makeFilter = makeImapFilter;
  row.makeBackendStartTls = [](std::string_view) { return makeImapBackendStartTls(); };
  row.makeLogin = makeImapLogin;
  row.makeReplay = makeImapReplay;
  row.unavailable = "* BYE [UNAVAILABLE] Service temporarily unavailable\r\n";
  row.tooManyConnections = "* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
  row.shuttingDown = "* BYE [UNAVAILABLE] Server shutting down\r\n";
  row.kicked = "* BYE Disconnected by the administrator\r\n";
  row.timedOut = "* BYE Autologout; timed out waiting for authentication\r\n";
  return row;
}

} // namespace protocol
