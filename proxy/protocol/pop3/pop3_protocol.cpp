// POP3's row in the protocol table: ports 110 and 995, ALPN "pop3", its dialogues, and the
// lines postern says itself (RFC 3206 SYS/TEMP).
#include "proxy/protocol/registry.h"
#include "proxy/protocol/syntax.h"

namespace protocol {

ProtocolInfo pop3Protocol(std::string_view) {
  ProtocolInfo row;
  row.plaintextPort = 110;
  row.implicitTlsPort = 995;
  row.alpn = "pop3";
  row.greetingIsReady = [](std::string_view text) { return startsLike(text, "+OK"); };
  row.probe = &pop3Probe();
  row.makeFilter = makePop3Filter;
  row.makeBackendStartTls = [](std::string_view) { return makePop3BackendStartTls(); };
  row.makeLogin = makePop3Login;
  row.makeReplay = makePop3Replay;
  row.unavailable = "-ERR [SYS/TEMP] Service temporarily unavailable\r\n";
  row.tooManyConnections = "-ERR [SYS/TEMP] Too many connections, try again later\r\n";
  row.shuttingDown = "-ERR [SYS/TEMP] Server shutting down\r\n";
  row.kicked = "-ERR [SYS/PERM] Disconnected by the administrator\r\n";
  row.timedOut = "-ERR Timed out waiting for authentication\r\n";
  return row;
}

} // namespace protocol
