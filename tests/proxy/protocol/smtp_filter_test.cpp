// The SMTP filter: EHLO rewriting, STARTTLS, require_tls, injection, pipelining, DATA bodies.
#include "filter_test_support.h"

namespace protocol {
namespace {

using testing::Driver;
using testing::starttlsPolicy;

constexpr std::string_view kGreeting = "220 mail.example.test ESMTP Postfix\r\n";
constexpr std::string_view kEhloReply = "250-mail.example.test\r\n"
                                        "250-PIPELINING\r\n"
                                        "250-SIZE 10240000\r\n"
                                        "250-STARTTLS\r\n"
                                        "250-AUTH PLAIN LOGIN\r\n"
                                        "250-AUTH=PLAIN LOGIN\r\n"
                                        "250-XCLIENT NAME ADDR PROTO\r\n"
                                        "250-CHUNKING\r\n"
                                        "250 8BITMIME\r\n";

Driver greeted(const Policy& policy) {
  Driver driver(makeSmtpFilter(policy));
  EXPECT_EQ(driver.backend(kGreeting).toClient, kGreeting);
  return driver;
}

TEST(SmtpFilter, EhloBeforeTlsOnASubmissionPort) {
  Driver d = greeted(starttlsPolicy());
  EXPECT_EQ(d.client("EHLO client.example\r\n").toBackend, "EHLO client.example\r\n");
  EXPECT_EQ(d.backend(kEhloReply).toClient, "250-mail.example.test\r\n"
                                            "250-PIPELINING\r\n"
                                            "250-SIZE 10240000\r\n"
                                            "250-8BITMIME\r\n"
                                            "250 STARTTLS\r\n");
}

TEST(SmtpFilter, EhloAfterTlsKeepsAuthAndDropsStarttls) {
  Driver d = greeted(starttlsPolicy());
  auto go = d.client("STARTTLS\r\n");
  EXPECT_EQ(go.toClient, "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_TRUE(go.startTls);
  EXPECT_TRUE(go.toBackend.empty()) << "STARTTLS never reaches the backend";
  d.tlsStarted();
  d.client("EHLO client.example\r\n");
  auto reply = d.backend(kEhloReply);
  EXPECT_EQ(reply.toClient, "250-mail.example.test\r\n"
                            "250-PIPELINING\r\n"
                            "250-SIZE 10240000\r\n"
                            "250-AUTH PLAIN LOGIN\r\n"
                            "250-AUTH=PLAIN LOGIN\r\n"
                            "250 8BITMIME\r\n");
  EXPECT_FALSE(reply.relayOnly) << "SMTP stays parsed: XCLIENT must stay refused";
  EXPECT_EQ(d.client("AUTH PLAIN AGFsaWNlAHg=\r\n").toBackend, "AUTH PLAIN AGFsaWNlAHg=\r\n");
}

TEST(SmtpFilter, AuthAndMailBeforeTlsAreRefused) {
  Driver d = greeted(starttlsPolicy());
  auto auth = d.client("AUTH PLAIN AGFsaWNlAHg=\r\n");
  EXPECT_EQ(auth.toClient, "530 5.7.0 Must issue a STARTTLS command first\r\n");
  EXPECT_TRUE(auth.toBackend.empty());
  ASSERT_EQ(auth.events.size(), 1u);
  EXPECT_EQ(auth.events[0], Event::AuthRefusedPlaintext);
  auto mail = d.client("MAIL FROM:<a@example.test>\r\n");
  EXPECT_EQ(mail.toClient, "530 5.7.0 Must issue a STARTTLS command first\r\n");
  EXPECT_TRUE(mail.toBackend.empty());
}

TEST(SmtpFilter, StarttlsMisuse) {
  Driver d = greeted(starttlsPolicy());
  auto withArgument = d.client("STARTTLS now\r\n");
  EXPECT_EQ(withArgument.toClient, "501 5.5.4 Syntax: STARTTLS\r\n");
  EXPECT_FALSE(withArgument.startTls);
  EXPECT_EQ(withArgument.events, std::vector<Event>{Event::StartTlsRefused});
  EXPECT_TRUE(d.client("STARTTLS\r\n").startTls);
  d.tlsStarted();
  auto again = d.client("STARTTLS\r\n");
  EXPECT_EQ(again.toClient, "503 5.5.1 Error: TLS already active\r\n");
  EXPECT_FALSE(again.startTls);
}

TEST(SmtpFilter, CommandsPipelinedAfterStarttlsCloseTheSession) {
  // CVE-2011-0411: "STARTTLS\r\nRSET\r\n" in one write.
  Driver d = greeted(starttlsPolicy());
  auto out = d.client("STARTTLS\r\nRSET\r\n");
  EXPECT_EQ(out.toClient, "554 5.5.1 Error: commands pipelined after STARTTLS\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_FALSE(out.startTls);
  EXPECT_TRUE(out.toBackend.empty());
  EXPECT_EQ(out.events, std::vector<Event>{Event::StartTlsInjection});
}

TEST(SmtpFilter, StateIsForgottenAfterTls) {
  Driver d = greeted(starttlsPolicy());
  d.client("EHLO a\r\n");
  d.backend(kEhloReply);
  EXPECT_TRUE(d.client("STARTTLS\r\n").startTls);
  d.tlsStarted();
  auto mail = d.client("MAIL FROM:<a@example.test>\r\n");
  EXPECT_EQ(mail.toClient, "503 5.5.1 Error: send EHLO/HELO first\r\n");
  EXPECT_TRUE(mail.toBackend.empty());
  EXPECT_EQ(d.client("NOOP\r\n").toBackend, "NOOP\r\n");
}

TEST(SmtpFilter, StarttlsAfterPendingRepliesWaitsForThem) {
  Driver d = greeted(starttlsPolicy());
  auto sent = d.client("NOOP\r\nSTARTTLS\r\n");
  EXPECT_EQ(sent.toBackend, "NOOP\r\n");
  EXPECT_TRUE(sent.toClient.empty());
  EXPECT_FALSE(sent.startTls);
  auto reply = d.backend("250 2.0.0 Ok\r\n");
  EXPECT_EQ(reply.toClient, "250 2.0.0 Ok\r\n220 2.0.0 Ready to start TLS\r\n");
  EXPECT_TRUE(reply.startTls);
}

TEST(SmtpFilter, BytesArrivingWhileStarttlsWaitsAreInjection) {
  Driver d = greeted(starttlsPolicy());
  d.client("NOOP\r\nSTARTTLS\r\n");
  auto late = d.client("RSET\r\n");
  EXPECT_TRUE(late.close);
  EXPECT_TRUE(late.toBackend.empty());
}

TEST(SmtpFilter, MxPortOffersStarttlsAndRefusesAuth) {
  Driver d = greeted(starttlsPolicy(/*requireTls=*/false, /*allowAuth=*/false));
  d.client("EHLO a\r\n");
  auto ehlo = d.backend(kEhloReply);
  EXPECT_EQ(ehlo.toClient.find("AUTH"), std::string::npos);
  EXPECT_NE(ehlo.toClient.find("250 STARTTLS\r\n"), std::string::npos);
  auto auth = d.client("AUTH LOGIN\r\n");
  EXPECT_EQ(auth.toClient, "503 5.5.1 Error: authentication not enabled\r\n");
  EXPECT_TRUE(auth.toBackend.empty());
  EXPECT_EQ(d.client("MAIL FROM:<b@example.test>\r\n").toBackend, "MAIL FROM:<b@example.test>\r\n");
}

TEST(SmtpFilter, PipelinedTransactionAndBodyPassUntouched) {
  Policy policy;
  policy.allowAuth = false;
  Driver d = greeted(policy);
  std::string commands = "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n";
  EXPECT_EQ(d.client(commands).toBackend, commands);
  auto replies =
      d.backend("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(replies.toClient,
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  // Body lines that look like commands are data: never refused, never parsed.
  std::string body = "Subject: x\r\n\r\nAUTH PLAIN abc\r\n..leading dot\r\nSTARTTLS\r\n.\r\n";
  auto sent = d.client(body);
  EXPECT_EQ(sent.toBackend, body);
  EXPECT_TRUE(sent.toClient.empty());
  d.backend("250 2.0.0 Ok: queued\r\n");
  auto after = d.client("AUTH PLAIN abc\r\n");
  EXPECT_EQ(after.toClient, "503 5.5.1 Error: authentication not enabled\r\n");
}

TEST(SmtpFilter, LocalRepliesKeepTheirPlaceInThePipeline) {
  Driver d = greeted(starttlsPolicy());
  auto sent = d.client("NOOP\r\nMAIL FROM:<a@x>\r\n");
  EXPECT_EQ(sent.toBackend, "NOOP\r\n");
  EXPECT_TRUE(sent.toClient.empty()) << "the 530 waits for the NOOP's reply";
  EXPECT_EQ(d.backend("250 2.0.0 Ok\r\n").toClient,
            "250 2.0.0 Ok\r\n530 5.7.0 Must issue a STARTTLS command first\r\n");
}

TEST(SmtpFilter, SaslExchangeLinesAreData) {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  Driver d = greeted(policy);
  EXPECT_EQ(d.client("AUTH LOGIN\r\n").toBackend, "AUTH LOGIN\r\n");
  EXPECT_EQ(d.backend("334 VXNlcm5hbWU6\r\n").toClient, "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(d.client("STARTTLS\r\n").toBackend, "STARTTLS\r\n") << "a SASL line, not a command";
  d.backend("334 UGFzc3dvcmQ6\r\n");
  d.client("c2VjcmV0\r\n");
  auto ok = d.backend("235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(ok.events, std::vector<Event>{Event::Authenticated});
  // Authenticated or not, a client never speaks XCLIENT to a backend that trusts postern.
  auto spoof = d.client("XCLIENT ADDR=203.0.113.1 LOGIN=victim\r\n");
  EXPECT_TRUE(spoof.toBackend.empty());
  EXPECT_EQ(spoof.toClient, "550 5.7.1 Error: not permitted\r\n");
}

TEST(SmtpFilter, VerbsAreTokenisedLikeTheServerDoes) {
  Driver d = greeted(starttlsPolicy());
  for (const char* line : {" AUTH PLAIN AGFsaWNlAHg=\r\n", "\tAUTH PLAIN x\r\n",
                           "MAIL\tFROM:<a@example.test>\r\n", "  mail from:<a@x>\r\n"}) {
    auto out = d.client(line);
    EXPECT_TRUE(out.toBackend.empty()) << line;
    EXPECT_EQ(out.toClient, "530 5.7.0 Must issue a STARTTLS command first\r\n") << line;
  }
  EXPECT_TRUE(d.client("XCLIENT\tADDR=1.2.3.4\r\n").toBackend.empty());
}

TEST(SmtpFilter, NothingMayFollowDataBeforeThe354) {
  Policy policy;
  policy.allowAuth = false;
  Driver d = greeted(policy);
  auto out = d.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n");
  EXPECT_EQ(out.toBackend, "MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_EQ(out.toClient, "554 5.5.1 Error: data or commands sent before the 354 reply\r\n");
}

TEST(SmtpFilter, BareLineFeedInABodyIsRefused) {
  Policy policy;
  policy.allowAuth = false;
  Driver d = greeted(policy);
  d.client("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n");
  d.backend("250 ok\r\n250 ok\r\n354 go\r\n");
  // "\n.\n" would end the message for a lenient backend: SMTP smuggling.
  auto out = d.client("Subject: x\r\n\r\nhi\n.\nXCLIENT ADDR=1.2.3.4\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_EQ(out.toClient, "554 5.5.2 Error: bare <LF> received\r\n");
  EXPECT_EQ(out.toBackend.find("XCLIENT"), std::string::npos);
}

TEST(SmtpFilter, PlaintextListenerDoesNotOfferStarttls) {
  Policy policy;
  Driver d = greeted(policy);
  d.client("EHLO a\r\n");
  EXPECT_EQ(d.backend(kEhloReply).toClient.find("STARTTLS"), std::string::npos);
  auto out = d.client("STARTTLS\r\n");
  EXPECT_EQ(out.toClient, "502 5.5.1 Error: STARTTLS is not offered here\r\n");
  EXPECT_TRUE(out.toBackend.empty());
}

TEST(SmtpFilter, ClientMayNotSpeakForPostern) {
  Policy policy;
  Driver d = greeted(policy);
  auto out = d.client("XCLIENT ADDR=10.0.0.1\r\n");
  EXPECT_EQ(out.toClient, "550 5.7.1 Error: not permitted\r\n");
  EXPECT_TRUE(out.toBackend.empty());
  EXPECT_TRUE(d.client("BDAT 10 LAST\r\n").toClient.starts_with("502 "));
}

TEST(SmtpFilter, OverlongLineIsAProtocolError) {
  Policy policy = starttlsPolicy();
  policy.maxLineLength = 512;
  Driver d = greeted(policy);
  auto out = d.client(std::string(600, 'a'));
  EXPECT_EQ(out.toClient, "500 5.5.2 Error: line too long\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_TRUE(out.toBackend.empty());
}

TEST(SmtpFilter, SplitAnywhereGivesTheSameResult) {
  testing::expectSplitInvariant([] { return makeSmtpFilter(starttlsPolicy()); }, kGreeting,
                                "EHLO a\r\nAUTH PLAIN x\r\nMAIL FROM:<a@x>\r\nNOOP\r\n"
                                "XCLIENT ADDR=1.2.3.4\r\nSTARTTLS now\r\nQUIT\r\n");
}

} // namespace
} // namespace protocol

namespace protocol {
namespace {

// A line pipelined after AUTH is SASL data only once the server asked for it with 334; after a
// refusal it is a command again, and XCLIENT from a client never reaches the server.
TEST(SmtpFilter, LinesAfterAuthWaitForTheServersAnswer) {
  Policy plain = testing::starttlsPolicy(false);
  plain.listenerTls = config::TlsMode::Implicit;
  testing::Driver d(makeSmtpFilter(plain));
  d.backend("220 mx ESMTP\r\n");
  d.client("EHLO c\r\n");
  d.backend("250-mx\r\n250 AUTH PLAIN\r\n");
  auto sent = d.client("AUTH FOO\r\nXCLIENT ADDR=10.66.66.66\r\n");
  EXPECT_EQ(sent.toBackend, "AUTH FOO\r\n");
  auto after = d.backend("504 5.5.4 Unsupported mechanism\r\n");
  EXPECT_EQ(after.toClient,
            "504 5.5.4 Unsupported mechanism\r\n550 5.7.1 Error: not permitted\r\n");
  EXPECT_EQ(after.toBackend, "");
  // A real exchange: the response goes once the server asked for it.
  EXPECT_EQ(d.client("AUTH PLAIN\r\nAGEAYg==\r\n").toBackend, "AUTH PLAIN\r\n");
  EXPECT_EQ(d.backend("334 \r\n").toBackend, "AGEAYg==\r\n");
  auto done = d.client("XCLIENT ADDR=10.66.66.66\r\n");
  EXPECT_EQ(done.toBackend, ""); // still waiting for the verdict
  auto ok = d.backend("235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(ok.toClient,
            "235 2.7.0 Authentication successful\r\n550 5.7.1 Error: not permitted\r\n");
  EXPECT_EQ(ok.toBackend, "");
  auto again = d.client("AUTH PLAIN AGEAYg==\r\n");
  EXPECT_EQ(again.toClient, "503 5.5.1 Error: already authenticated\r\n");
  EXPECT_EQ(again.toBackend, "");
}

TEST(SmtpFilter, AfterLoginModeAuthIsAnsweredByPostern) {
  Policy policy = testing::starttlsPolicy(false);
  policy.listenerTls = config::TlsMode::Implicit;
  testing::Driver d(makeSmtpFilterAfterLogin(policy));
  auto out = d.client("AUTH PLAIN\r\nMAIL FROM:<a@b>\r\n");
  EXPECT_EQ(out.toClient, "503 5.5.1 Error: already authenticated\r\n");
  EXPECT_EQ(out.toBackend, "MAIL FROM:<a@b>\r\n");
}

} // namespace
} // namespace protocol
