// The protocols postern speaks, as a table: names and the lines postern itself says in each.
#include "proxy/protocol/registry.h"

#include "metrics/labels.h"
#include "proxy/protocol/line_reader.h"
#include "proxy/protocol/sieve/sieve.h"

#include <algorithm>
#include <array>

namespace protocol {

namespace {

std::unique_ptr<BackendStartTls> imapBackend(std::string_view) { return makeImapBackendStartTls(); }
std::unique_ptr<BackendStartTls> pop3Backend(std::string_view) { return makePop3BackendStartTls(); }

std::string& hostnameStorage() {
  static std::string name = "postern";
  return name;
}

bool startsLike(std::string_view text, std::string_view prefix) {
  std::size_t n = std::min(prefix.size(), text.size());
  return text.substr(0, n) == prefix.substr(0, n);
}
bool imapGreeting(std::string_view text) {
  return startsLike(text, "* OK") || startsLike(text, "* PREAUTH");
}
bool pop3Greeting(std::string_view text) { return startsLike(text, "+OK"); }
bool smtpGreeting(std::string_view text) { return startsLike(text, "220"); }

// RFC 5530 (IMAP response codes), RFC 3206 (POP3 SYS/TEMP), RFC 3463 (SMTP enhanced codes).
std::array<ProtocolInfo, 4> makeTable(std::string_view hostname) {
  std::string host(hostname);
  return {{
      {config::Protocol::Pop3, "pop3", 110, 995, "pop3", pop3Greeting, &pop3Probe(), false, nullptr,
       false, makePop3Filter, pop3Backend, makePop3Login, makePop3Replay,
       "-ERR [SYS/TEMP] Service temporarily unavailable\r\n",
       "-ERR [SYS/TEMP] Too many connections, try again later\r\n",
       "-ERR [SYS/TEMP] Server shutting down\r\n", "-ERR Timed out waiting for authentication\r\n"},
      {config::Protocol::Imap, "imap", 143, 993, "imap", imapGreeting, &imapProbe(), false, nullptr,
       false, makeImapFilter, imapBackend, makeImapLogin, makeImapReplay,
       "* BYE [UNAVAILABLE] Service temporarily unavailable\r\n",
       "* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
       "* BYE [UNAVAILABLE] Server shutting down\r\n",
       "* BYE Autologout; timed out waiting for authentication\r\n"},
      {config::Protocol::Smtp, "smtp", 25, 465, "smtp", smtpGreeting, &smtpProbe(), true,
       makeSmtpFilterAfterLogin, true, makeSmtpFilter, makeSmtpBackendStartTls, makeSmtpLogin,
       makeSmtpReplay,
       "421 4.3.2 " + host + " Service temporarily unavailable, closing channel\r\n",
       "421 4.7.0 " + host + " Too many connections, try again later\r\n",
       "421 4.3.2 " + host + " Server shutting down, closing channel\r\n",
       "421 4.4.2 " + host + " Error: timeout exceeded\r\n"},
      sieveProtocol(hostname),
  }};
}

std::array<ProtocolInfo, 4>& table() {
  static std::array<ProtocolInfo, 4> protocols = makeTable("postern");
  return protocols;
}

} // namespace

bool greetingIsReady(config::Protocol protocol, std::string_view text) {
  return info(protocol).greetingIsReady(text);
}

const char* mechanismLabel(std::string_view name) {
  // The label set is metrics' (kMechanismLabels); "none" and "other" are not names to match.
  static constexpr std::size_t kNamed = metrics::kMechanismCount - 2;
  for (std::size_t i = 0; i < kNamed; ++i) {
    if (equalsNoCase(name, metrics::kMechanismLabels[i])) {
      return metrics::kMechanismLabels[i];
    }
  }
  return name.empty() ? "none" : "other";
}

void initialiseRegistry(std::string_view hostname) {
  hostnameStorage() = std::string(hostname);
  table() = makeTable(hostname);
}

const std::string& hostname() { return hostnameStorage(); }

std::span<const ProtocolInfo> protocols() { return table(); }

const ProtocolInfo& info(config::Protocol protocol) {
  return table()[static_cast<std::size_t>(protocol)];
}

} // namespace protocol
