// The POP3 filter: CAPA rewriting, STLS, require_tls, injection, multi-line responses, SASL.
#include "filter_test_support.h"

namespace protocol {
namespace {

using testing::Driver;
using testing::starttlsPolicy;

constexpr std::string_view kGreeting = "+OK Dovecot (Debian) ready.\r\n";
constexpr std::string_view kCapa = "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                                   "AUTH-RESP-CODE\r\nSTLS\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n";

Driver greeted(const Policy& policy) {
  Driver driver(makePop3Filter(policy));
  EXPECT_EQ(driver.backend(kGreeting).toClient, kGreeting);
  return driver;
}

TEST(Pop3Filter, CapaBeforeAndAfterTls) {
  Driver d = greeted(starttlsPolicy());
  EXPECT_EQ(d.client("CAPA\r\n").toBackend, "CAPA\r\n");
  EXPECT_EQ(d.backend(kCapa).toClient, "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                                       "AUTH-RESP-CODE\r\nSTLS\r\n.\r\n");
  auto go = d.client("STLS\r\n");
  EXPECT_EQ(go.toClient, "+OK Begin TLS negotiation\r\n");
  EXPECT_TRUE(go.startTls);
  EXPECT_TRUE(go.toBackend.empty());
  d.tlsStarted();
  d.client("CAPA\r\n");
  EXPECT_EQ(d.backend(kCapa).toClient, "+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
                                       "AUTH-RESP-CODE\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n");
}

TEST(Pop3Filter, AuthenticationBeforeTlsIsRefused) {
  Driver d = greeted(starttlsPolicy());
  for (const char* command : {"USER alice\r\n", "PASS secret\r\n", "APOP alice 0123\r\n",
                              "AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"}) {
    auto out = d.client(command);
    EXPECT_EQ(out.toClient, "-ERR [AUTH] Plaintext authentication disallowed; use STLS first\r\n");
    EXPECT_TRUE(out.toBackend.empty()) << command;
    EXPECT_EQ(out.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  }
}

TEST(Pop3Filter, StlsInjectionClosesTheSession) {
  Driver d = greeted(starttlsPolicy());
  auto out = d.client("STLS\r\nCAPA\r\n");
  EXPECT_EQ(out.toClient, "-ERR Commands pipelined after STLS\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_FALSE(out.startTls);
  EXPECT_TRUE(out.toBackend.empty());
}

TEST(Pop3Filter, StlsMisuse) {
  Driver d = greeted(starttlsPolicy());
  EXPECT_EQ(d.client("STLS please\r\n").toClient, "-ERR STLS takes no arguments\r\n");
  EXPECT_TRUE(d.client("STLS\r\n").startTls);
  d.tlsStarted();
  EXPECT_EQ(d.client("STLS\r\n").toClient, "-ERR Already using TLS\r\n");
}

TEST(Pop3Filter, LoginThenRelay) {
  Driver d = greeted(starttlsPolicy());
  d.client("STLS\r\n");
  d.tlsStarted();
  EXPECT_EQ(d.client("USER alice\r\n").toBackend, "USER alice\r\n");
  EXPECT_FALSE(d.backend("+OK\r\n").relayOnly) << "USER alone does not authenticate";
  EXPECT_EQ(d.client("PASS secret\r\n").toBackend, "PASS secret\r\n");
  auto ok = d.backend("+OK Logged in.\r\n");
  EXPECT_TRUE(ok.relayOnly);
  EXPECT_EQ(ok.events, std::vector<Event>{Event::Authenticated});
}

TEST(Pop3Filter, SaslChallengesAndAnswersPassThrough) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d = greeted(policy);
  EXPECT_EQ(d.client("AUTH PLAIN\r\n").toBackend, "AUTH PLAIN\r\n");
  EXPECT_EQ(d.backend("+ \r\n").toClient, "+ \r\n");
  EXPECT_EQ(d.client("STLS\r\n").toBackend, "STLS\r\n") << "SASL data, not a command";
  EXPECT_TRUE(d.backend("+OK Logged in.\r\n").relayOnly);
}

TEST(Pop3Filter, MultiLineResponsesPassVerbatimWithDotStuffing) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d = greeted(policy);
  d.client("TOP 1 0\r\n");
  std::string top = "+OK\r\nSubject: x\r\n..stuffed\r\nSTLS\r\n\r\n.\r\n";
  EXPECT_EQ(d.backend(top).toClient, top);
  d.client("CAPA\r\n");
  EXPECT_EQ(d.backend(kCapa).toClient.find("STLS"), std::string::npos);
}

TEST(Pop3Filter, RepliesStayInOrderWhenPipelined) {
  Driver d = greeted(starttlsPolicy());
  auto sent = d.client("NOOP\r\nUSER alice\r\n");
  EXPECT_EQ(sent.toBackend, "NOOP\r\n");
  EXPECT_TRUE(sent.toClient.empty());
  EXPECT_EQ(d.backend("+OK\r\n").toClient,
            "+OK\r\n-ERR [AUTH] Plaintext authentication disallowed; use STLS first\r\n");
}

TEST(Pop3Filter, AllowAuthFalseRefusesEverything) {
  Driver d = greeted(starttlsPolicy(false, false));
  d.client("STLS\r\n");
  d.tlsStarted();
  auto out = d.client("USER alice\r\n");
  EXPECT_EQ(out.toClient, "-ERR [AUTH] Authentication is not available here\r\n");
  EXPECT_TRUE(out.toBackend.empty());
}

TEST(Pop3Filter, ForwardedStlsIsPairedWithItsOwnReply) {
  Driver d = greeted(Policy{}); // a plaintext listener: the backend's STLS runs end to end
  EXPECT_EQ(d.client("NOOP\r\nSTLS\r\n").toBackend, "NOOP\r\nSTLS\r\n");
  EXPECT_FALSE(d.backend("+OK\r\n").relayOnly) << "that +OK answered the NOOP";
  EXPECT_TRUE(d.backend("+OK Begin TLS\r\n").relayOnly);
}

// Servers split POP3 lines differently (Dovecot at the first SP only, others on runs of
// spaces and tabs): what could read either way is refused, never relayed.
TEST(Pop3Filter, LinesServersSplitDifferentlyAreRefused) {
  Driver d = greeted(starttlsPolicy());
  for (const char* line : {" USER alice\r\n", "PASS\tsecret\r\n", "USER  alice\r\n",
                           "AUTH\tPLAIN\r\n", "AUTH \tPLAIN\r\n"}) {
    testing::Transcript t = d.client(line);
    EXPECT_TRUE(t.toBackend.empty()) << line;
    EXPECT_EQ(t.toClient, "-ERR Syntax error in command\r\n") << line;
  }
}

// Finding (review): "AUTH  PLAIN" names no mechanism to Dovecot, which answers with its
// mechanism list; that "+OK" was taken for a successful login and the session went raw.
TEST(Pop3Filter, AMechanismListIsNoLogin) {
  Driver d = greeted(Policy{});
  testing::Transcript list = d.client("AUTH\r\n");
  EXPECT_EQ(list.toBackend, "AUTH\r\n");
  testing::Transcript answer = d.backend("+OK\r\nPLAIN\r\n.\r\n");
  EXPECT_FALSE(answer.relayOnly);
  EXPECT_TRUE(answer.events.empty());
  EXPECT_EQ(d.client("XOIP 10.9.8.6\r\n").toClient, "-ERR Command not permitted\r\n");
}

TEST(Pop3Filter, SplitAnywhereGivesTheSameResult) {
  testing::expectSplitInvariant([] { return makePop3Filter(starttlsPolicy()); }, kGreeting,
                                "CAPA\r\nUSER a\r\nNOOP\r\nSTLS x\r\nAPOP a b\r\nQUIT\r\n");
}

} // namespace
} // namespace protocol
