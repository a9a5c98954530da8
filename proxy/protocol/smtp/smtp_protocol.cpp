// SMTP's row in the protocol table: ports 25 and 465, ALPN "smtp", its dialogues, what is
// SMTP's alone (relay sessions end their pre-authentication limits at TLS, the session stays
// parsed after login, XCLIENT), and the lines postern says itself (RFC 3463 enhanced codes;
// RFC 5321 §4.2: replies start with the host name).
#include "proxy/protocol/registry.h"
#include "proxy/protocol/syntax.h"

namespace protocol {

ProtocolInfo smtpProtocol(std::string_view hostname) {
  std::string host(hostname);
  ProtocolInfo row;
  row.plaintextPort = 25;
  row.implicitTlsPort = 465;
  row.alpn = "smtp";
  row.greetingIsReady = [](std::string_view text) { return startsLike(text, "220"); };
  row.probe = &smtpProbe();
  row.preauthEndsAtTls = true;
  row.makeFilterAfterLogin = makeSmtpFilterAfterLogin;
  row.hasXclient = true;
  row.makeFilter = makeSmtpFilter;
  row.makeBackendStartTls = makeSmtpBackendStartTls;
  row.makeLogin = makeSmtpLogin;
  row.makeReplay = makeSmtpReplay;
  row.unavailable = "421 4.3.2 " + host + " Service temporarily unavailable, closing channel\r\n";
  row.tooManyConnections = "421 4.7.0 " + host + " Too many connections, try again later\r\n";
  row.shuttingDown = "421 4.3.2 " + host + " Server shutting down, closing channel\r\n";
  row.kicked = "421 4.7.0 " + host + " Disconnected by the administrator\r\n";
  row.timedOut = "421 4.4.2 " + host + " Error: timeout exceeded\r\n";
  return row;
}

} // namespace protocol
