// Backend-side STARTTLS dialogues: the happy path and every way they fail closed.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/syntax.h"

#include <gtest/gtest.h>

namespace protocol {
namespace {

using Step = BackendStartTls::Step;
using Failure = BackendStartTls::Failure;

BackendStartTls::Result feed(BackendStartTls& dialogue, std::string_view bytes) {
  return dialogue.fromBackend(std::span<const char>(bytes.data(), bytes.size()));
}

TEST(ImapBackendStartTls, HappyPathAndSanitisedGreeting) {
  auto d = makeImapBackendStartTls();
  auto r = feed(*d, "* OK [ALERT] [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n");
  ASSERT_EQ(r.step, Step::Send);
  EXPECT_EQ(r.toBackend, "P1 CAPABILITY\r\n");
  EXPECT_EQ(d->greetingForClient(), "* OK Dovecot ready.\r\n");
  EXPECT_EQ(feed(*d, "* CAPABILITY IMAP4rev1 ").step, Step::NeedMore);
  r = feed(*d, "STARTTLS LOGINDISABLED\r\nP1 OK done\r\n");
  ASSERT_EQ(r.step, Step::Send);
  EXPECT_EQ(r.toBackend, "P2 STARTTLS\r\n");
  EXPECT_EQ(feed(*d, "P2 OK Begin TLS\r\n").step, Step::StartTls);
}

TEST(ImapBackendStartTls, FailsClosed) {
  auto preauth = makeImapBackendStartTls();
  auto r = feed(*preauth, "* PREAUTH [ALERT] logged in\r\n");
  EXPECT_EQ(r.step, Step::Failed);
  EXPECT_EQ(r.failure, Failure::Greeting);

  auto missing = makeImapBackendStartTls();
  feed(*missing, "* OK hi\r\n");
  r = feed(*missing, "* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nP1 OK done\r\n");
  EXPECT_EQ(r.step, Step::Failed);
  EXPECT_EQ(r.failure, Failure::NoStartTls);

  auto refused = makeImapBackendStartTls();
  feed(*refused, "* OK hi\r\n");
  feed(*refused, "* CAPABILITY STARTTLS\r\nP1 OK done\r\n");
  r = feed(*refused, "P2 NO not now\r\n");
  EXPECT_EQ(r.failure, Failure::Refused);

  // Response injection: bytes after the go-ahead, in the same read.
  auto injected = makeImapBackendStartTls();
  feed(*injected, "* OK hi\r\n");
  feed(*injected, "* CAPABILITY STARTTLS\r\nP1 OK done\r\n");
  r = feed(*injected, "P2 OK go\r\n* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] forged\r\n");
  EXPECT_EQ(r.step, Step::Failed);
  EXPECT_EQ(r.failure, Failure::Injection);
}

TEST(Pop3BackendStartTls, HappyPathAndFailures) {
  auto d = makePop3BackendStartTls();
  auto r = feed(*d, "+OK [IN-USE] Dovecot ready.\r\n");
  EXPECT_EQ(r.toBackend, "CAPA\r\n");
  EXPECT_EQ(d->greetingForClient(), "+OK Dovecot ready.\r\n");
  r = feed(*d, "+OK\r\nUSER\r\nSTLS\r\n.\r\n");
  EXPECT_EQ(r.toBackend, "STLS\r\n");
  EXPECT_EQ(feed(*d, "+OK Begin TLS\r\n").step, Step::StartTls);

  auto missing = makePop3BackendStartTls();
  feed(*missing, "+OK hi\r\n");
  EXPECT_EQ(feed(*missing, "+OK\r\nUSER\r\n.\r\n").failure, Failure::NoStartTls);

  auto injected = makePop3BackendStartTls();
  feed(*injected, "+OK hi\r\n");
  feed(*injected, "+OK\r\nSTLS\r\n.\r\n");
  EXPECT_EQ(feed(*injected, "+OK go\r\n+OK forged\r\n").failure, Failure::Injection);

  EXPECT_EQ(feed(*makePop3BackendStartTls(), "-ERR busy\r\n").failure, Failure::Greeting);
}

TEST(SmtpBackendStartTls, HappyPathAndFailures) {
  auto d = makeSmtpBackendStartTls("proxy.example");
  EXPECT_EQ(feed(*d, "220-mail.example ESMTP\r\n").step, Step::NeedMore);
  auto r = feed(*d, "220 more text\r\n");
  EXPECT_EQ(r.toBackend, "EHLO proxy.example\r\n");
  EXPECT_EQ(d->greetingForClient(), "220 mail.example ESMTP\r\n");
  r = feed(*d, "250-mail.example\r\n250-STARTTLS\r\n250 8BITMIME\r\n");
  EXPECT_EQ(r.toBackend, "STARTTLS\r\n");
  EXPECT_EQ(feed(*d, "220 2.0.0 Ready\r\n").step, Step::StartTls);

  auto missing = makeSmtpBackendStartTls("p");
  feed(*missing, "220 hi\r\n");
  EXPECT_EQ(feed(*missing, "250-hi\r\n250 8BITMIME\r\n").failure, Failure::NoStartTls);

  auto refused = makeSmtpBackendStartTls("p");
  feed(*refused, "220 hi\r\n");
  feed(*refused, "250-hi\r\n250 STARTTLS\r\n");
  EXPECT_EQ(feed(*refused, "454 4.7.0 TLS not available\r\n").failure, Failure::Refused);

  auto injected = makeSmtpBackendStartTls("p");
  feed(*injected, "220 hi\r\n");
  feed(*injected, "250-hi\r\n250 STARTTLS\r\n");
  EXPECT_EQ(feed(*injected, "220 go\r\n250 forged\r\n").failure, Failure::Injection);

  EXPECT_EQ(feed(*makeSmtpBackendStartTls("p"), "554 no service\r\n").failure, Failure::Greeting);
}

// SPEC §5.1: response codes go wherever they stand, so no reader can take a "[" for a code.
TEST(WithoutResponseCodes, DropsCodesWhereverTheyStand) {
  EXPECT_EQ(withoutResponseCodes("[ALERT] [CAPABILITY X] text [gone]"), "text");
  EXPECT_EQ(withoutResponseCodes("[ALERT] x [CAPABILITY IMAP4rev1 AUTH=PLAIN XEVILCAP] hi"),
            "x hi");
  EXPECT_EQ(withoutResponseCodes("plain text"), "plain text");
  EXPECT_EQ(withoutResponseCodes("before [unterminated"), "before");
}

// Finding: a code in the middle of a greeting learned before TLS reached the client.
TEST(BackendStartTls, GreetingShownWithoutAnyCode) {
  auto imap = makeImapBackendStartTls();
  feed(*imap, "* OK [ALERT] x [CAPABILITY IMAP4rev1 AUTH=PLAIN XEVILCAP] hi\r\n");
  EXPECT_EQ(imap->greetingForClient(), "* OK x hi\r\n");
  auto pop3 = makePop3BackendStartTls();
  feed(*pop3, "+OK [XEVIL] ready [SASL PLAIN]\r\n");
  EXPECT_EQ(pop3->greetingForClient(), "+OK ready\r\n");
}

} // namespace
} // namespace protocol

namespace protocol {
namespace {

TEST(SmtpXclient, ForwardsTheClientAddressWhenOffered) {
  SmtpXclient x("proxy.example", xclientCommand("192.0.2.7", false, 40000), "");
  auto r = x.fromBackend(std::string_view("220 mx ESMTP\r\n"));
  EXPECT_EQ(r.toBackend, "EHLO proxy.example\r\n");
  r = x.fromBackend(std::string_view("250-mx\r\n250 XCLIENT NAME ADDR PORT PROTO HELO\r\n"));
  EXPECT_EQ(r.toBackend, "XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP\r\n");
  r = x.fromBackend(std::string_view("220 mx ESMTP for 192.0.2.7\r\n"));
  EXPECT_EQ(r.step, BackendStartTls::Step::Ready);
  EXPECT_TRUE(x.forwarded());
  EXPECT_EQ(x.greetingForClient(), "220 mx ESMTP for 192.0.2.7\r\n");
}

TEST(SmtpXclient, GoesOnWithoutItWhenNotOffered) {
  SmtpXclient x("p", xclientCommand("2001:db8::7", true, 1), "220 mx sanitised\r\n");
  EXPECT_EQ(x.start().toBackend, "EHLO p\r\n");
  auto r = x.fromBackend(std::string_view("250-mx\r\n250 8BITMIME\r\n"));
  EXPECT_EQ(r.step, BackendStartTls::Step::Ready);
  EXPECT_FALSE(x.forwarded());
  EXPECT_EQ(x.greetingForClient(), "220 mx sanitised\r\n");
  EXPECT_EQ(xclientCommand("2001:db8::7", true, 1),
            "XCLIENT NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::7 PORT=1 PROTO=ESMTP\r\n");
}

} // namespace
} // namespace protocol
