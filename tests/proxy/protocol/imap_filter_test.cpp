// The IMAP filter: capability rewriting, STARTTLS, require_tls, literals, AUTHENTICATE.
#include "filter_test_support.h"

namespace protocol {
namespace {

using testing::Driver;
using testing::starttlsPolicy;

constexpr std::string_view kGreeting =
    "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ STARTTLS AUTH=PLAIN AUTH=LOGIN] Ready.\r\n";

TEST(ImapFilter, GreetingBeforeTls) {
  Driver d(makeImapFilter(starttlsPolicy()));
  EXPECT_EQ(d.backend(kGreeting).toClient,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED] Ready.\r\n");
}

TEST(ImapFilter, ImplicitTlsHidesTheBackendsStarttls) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d(makeImapFilter(policy));
  EXPECT_EQ(d.backend(kGreeting).toClient,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN] Ready.\r\n");
}

TEST(ImapFilter, CapabilityAfterStarttls) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto go = d.client("a1 STARTTLS\r\n");
  EXPECT_EQ(go.toClient, "a1 OK Begin TLS negotiation now\r\n");
  EXPECT_TRUE(go.startTls);
  EXPECT_TRUE(go.toBackend.empty());
  d.tlsStarted();
  EXPECT_EQ(d.client("a2 CAPABILITY\r\n").toBackend, "a2 CAPABILITY\r\n");
  EXPECT_EQ(
      d.backend("* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED AUTH=PLAIN\r\n"
                "a2 OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Done\r\n")
          .toClient,
      "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na2 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Done\r\n");
}

TEST(ImapFilter, LoginBeforeTlsIsRefused) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  for (const char* command : {"a LOGIN alice secret\r\n", "b AUTHENTICATE PLAIN\r\n",
                              "c authenticate plain AGFsaWNlAHNlY3JldA==\r\n"}) {
    auto out = d.client(command);
    EXPECT_TRUE(
        out.toClient.ends_with(" NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n"))
        << out.toClient;
    EXPECT_TRUE(out.toBackend.empty()) << command;
    EXPECT_EQ(out.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  }
}

TEST(ImapFilter, RefusedLoginWithNonSynchronisingLiteralSwallowsIt) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto out = d.client("a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\nb NOOP\r\n");
  EXPECT_EQ(out.toClient, "a NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n");
  EXPECT_EQ(out.toBackend, "b NOOP\r\n") << "the password never reaches the backend";
}

TEST(ImapFilter, StarttlsInjectionClosesTheSession) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto out = d.client("a STARTTLS\r\nb CAPABILITY\r\n");
  EXPECT_EQ(out.toClient, "a BAD Commands pipelined after STARTTLS\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_FALSE(out.startTls);
  EXPECT_TRUE(out.toBackend.empty());
  EXPECT_EQ(out.events, std::vector<Event>{Event::StartTlsInjection});
}

TEST(ImapFilter, StarttlsMisuse) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  EXPECT_EQ(d.client("a STARTTLS now\r\n").toClient, "a BAD STARTTLS takes no arguments\r\n");
  EXPECT_TRUE(d.client("b STARTTLS\r\n").startTls);
  d.tlsStarted();
  EXPECT_EQ(d.client("c STARTTLS\r\n").toClient, "c BAD TLS is already active\r\n");
}

TEST(ImapFilter, LiteralContentIsNeverParsed) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  d.client("a STARTTLS\r\n");
  d.tlsStarted();
  std::string login = "b LOGIN {5}\r\n";
  EXPECT_EQ(d.client(login).toBackend, login);
  EXPECT_EQ(d.backend("+ OK\r\n").toClient, "+ OK\r\n");
  // Before authentication a {n+} goes on as {n}; its bytes follow the server's "+", which
  // the client (it did not ask for one) never sees.
  std::string rest = "c STA {10+}\r\nRTTLS\r\nx\r\n\r\n";
  auto literal = d.client("alice " + rest);
  EXPECT_EQ(literal.toBackend, "alice c STA {10}\r\n");
  EXPECT_FALSE(literal.startTls);
  EXPECT_TRUE(literal.toClient.empty());
  auto go = d.backend("+ OK\r\n");
  EXPECT_EQ(go.toClient, "");
  EXPECT_EQ(go.toBackend, "RTTLS\r\nx\r\n\r\n");
  EXPECT_FALSE(go.startTls);
  auto ok = d.backend("b OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
  EXPECT_TRUE(ok.relayOnly);
  EXPECT_EQ(ok.events, std::vector<Event>{Event::Authenticated});
}

TEST(ImapFilter, ASynchronisingLiteralWaitsForTheServersGoAhead) {
  Driver d(makeImapFilter(starttlsPolicy()));
  d.backend(kGreeting);
  EXPECT_EQ(d.client("a NOOP {60}\r\n").toBackend, "a NOOP {60}\r\n");
  // The backend refuses instead of saying "+": what follows is a command again, and checked.
  d.backend("a BAD no literals here\r\n");
  auto login = d.client("b LOGIN alice secret\r\n");
  EXPECT_TRUE(login.toBackend.empty());
  EXPECT_EQ(login.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  // Literal bytes before the "+" are a protocol error.
  Driver early(makeImapFilter(starttlsPolicy()));
  early.backend(kGreeting);
  auto out = early.client("a NOOP {5}\r\nhello\r\n");
  EXPECT_EQ(out.toBackend, "a NOOP {5}\r\n");
  EXPECT_TRUE(out.close);
}

TEST(ImapFilter, AuthenticateContinuationsAreData) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d(makeImapFilter(policy));
  d.backend(kGreeting);
  EXPECT_EQ(d.client("a AUTHENTICATE PLAIN\r\n").toBackend, "a AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(d.backend("+ \r\n").toClient, "+ \r\n");
  auto answer = d.client("x STARTTLS\r\n");
  EXPECT_EQ(answer.toBackend, "x STARTTLS\r\n");
  EXPECT_FALSE(answer.startTls);
  EXPECT_TRUE(d.backend("a OK Logged in\r\n").relayOnly);
}

TEST(ImapFilter, BackendLiteralsAreNotRewritten) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d(makeImapFilter(policy));
  d.backend(kGreeting);
  d.client("a FETCH 1 BODY[]\r\n");
  std::string fetch = "* 1 FETCH (BODY[] {24}\r\n* CAPABILITY STARTTLS\r\n)\r\na OK done\r\n";
  EXPECT_EQ(d.backend(fetch).toClient, fetch);
}

TEST(ImapFilter, PreauthGreetingMeansRelay) {
  Driver d(makeImapFilter(starttlsPolicy()));
  auto out = d.backend("* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n");
  EXPECT_TRUE(out.relayOnly);
}

TEST(ImapFilter, OverlongLine) {
  Policy policy = starttlsPolicy();
  policy.maxLineLength = 512;
  Driver d(makeImapFilter(policy));
  d.backend(kGreeting);
  auto out = d.client("a NOOP " + std::string(600, 'x'));
  EXPECT_EQ(out.toClient, "* BYE Line too long\r\n");
  EXPECT_TRUE(out.close);
}

TEST(ImapFilter, SplitAnywhereGivesTheSameResult) {
  testing::expectSplitInvariant([] { return makeImapFilter(starttlsPolicy()); }, kGreeting,
                                "a CAPABILITY\r\nb LOGIN {5+}\r\nalice x\r\nc NOOP\r\n"
                                "d STARTTLS x\r\ne SELECT {5+}\r\nINBOX\r\n");
}

} // namespace
} // namespace protocol

namespace protocol {
namespace {

TEST(ImapFilter, PartialLinesAreDeliveredWhenASideEnds) {
  Driver d(makeImapFilter(testing::starttlsPolicy()));
  d.backend(kGreeting);
  EXPECT_TRUE(d.backend("* BYE no newline").toClient.empty());
  Output out;
  std::unique_ptr<Filter> filter = makeImapFilter(testing::starttlsPolicy());
  filter->fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()), out);
  out.clear();
  std::string_view tail = "* BYE closing without CRLF";
  filter->fromBackend(std::span<const char>(tail.data(), tail.size()), out);
  EXPECT_TRUE(out.toClient.empty());
  filter->backendEnded(out);
  EXPECT_EQ(out.toClient, tail);
  out.clear();
  // A client's unfinished line is not relayed at its end: nothing unchecked reaches the server.
  std::string_view partial = "a NOOP";
  filter->fromClient(std::span<const char>(partial.data(), partial.size()), out);
  filter->clientEnded(out);
  EXPECT_TRUE(out.toBackend.empty());
}

} // namespace
} // namespace protocol
