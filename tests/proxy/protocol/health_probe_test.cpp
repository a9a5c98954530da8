// The health probe: greeting, capabilities, goodbye, in each protocol; and what fails it.
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/registry.h"

#include <gtest/gtest.h>

namespace protocol {
namespace {

using Step = HealthProbe::Step;

HealthProbe::Result feed(HealthProbe& probe, std::string_view bytes) {
  return probe.fromBackend(std::span<const char>(bytes.data(), bytes.size()));
}

TEST(HealthProbe, Imap) {
  HealthProbe probe(config::Protocol::Imap, "postern", false);
  EXPECT_EQ(probe.start().step, Step::NeedMore);
  EXPECT_EQ(feed(probe, "* OK ready\r\n").toBackend, "H1 CAPABILITY\r\n");
  EXPECT_EQ(feed(probe, "* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\n").step, Step::NeedMore);
  EXPECT_EQ(feed(probe, "H1 OK done\r\n").toBackend, "H2 LOGOUT\r\n");
  EXPECT_EQ(feed(probe, "* BYE bye\r\n").step, Step::NeedMore);
  EXPECT_EQ(feed(probe, "H2 OK bye\r\n").step, Step::Done);
  EXPECT_EQ(probe.capabilities(), (std::vector<std::string>{"IMAP4rev1", "IDLE", "AUTH=PLAIN"}));
}

TEST(HealthProbe, Pop3AfterStartTls) {
  HealthProbe probe(config::Protocol::Pop3, "postern", true);
  EXPECT_EQ(probe.start().toBackend, "CAPA\r\n");
  EXPECT_EQ(feed(probe, "+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n").toBackend, "QUIT\r\n");
  EXPECT_EQ(feed(probe, "+OK bye\r\n").step, Step::Done);
  EXPECT_EQ(probe.capabilities(), (std::vector<std::string>{"USER", "SASL PLAIN"}));
}

TEST(HealthProbe, SmtpMultiLineGreeting) {
  HealthProbe probe(config::Protocol::Smtp, "check.example", false);
  EXPECT_EQ(feed(probe, "220-mx\r\n").step, Step::NeedMore);
  EXPECT_EQ(feed(probe, "220 mx ESMTP\r\n").toBackend, "EHLO check.example\r\n");
  EXPECT_EQ(feed(probe, "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n").toBackend, "QUIT\r\n");
  EXPECT_EQ(feed(probe, "221 bye\r\n").step, Step::Done);
  EXPECT_EQ(probe.capabilities(), (std::vector<std::string>{"PIPELINING", "STARTTLS"}));
}

TEST(HealthProbe, Failures) {
  HealthProbe preauth(config::Protocol::Imap, "p", false);
  EXPECT_EQ(feed(preauth, "* BYE go away\r\n").step, Step::Failed);
  HealthProbe busy(config::Protocol::Pop3, "p", false);
  EXPECT_EQ(feed(busy, "-ERR busy\r\n").step, Step::Failed);
  HealthProbe refused(config::Protocol::Smtp, "p", false);
  EXPECT_EQ(feed(refused, "554 no\r\n").step, Step::Failed);
  HealthProbe ehlo(config::Protocol::Smtp, "p", false);
  feed(ehlo, "220 hi\r\n");
  EXPECT_EQ(feed(ehlo, "502 no EHLO\r\n").step, Step::Failed);
  HealthProbe noisy(config::Protocol::Imap, "p", false);
  EXPECT_EQ(feed(noisy, std::string(9000, 'x')).step, Step::Failed);
}

} // namespace
} // namespace protocol

namespace protocol {
namespace {

// The protocol table: one row per protocol, with the facts the rest of postern asks for.
TEST(ProtocolTable, RowsCarryNamesPortsAlpnAndBehaviour) {
  struct Expected {
    config::Protocol protocol;
    const char* name;
    std::uint16_t plaintext;
    std::uint16_t implicit;
  };
  for (const Expected& row : {Expected{config::Protocol::Imap, "imap", 143, 993},
                              Expected{config::Protocol::Pop3, "pop3", 110, 995},
                              Expected{config::Protocol::Smtp, "smtp", 25, 465}}) {
    const ProtocolInfo& p = info(row.protocol);
    EXPECT_EQ(p.protocol, row.protocol);
    EXPECT_STREQ(p.name, row.name);
    EXPECT_STREQ(p.alpn, row.name); // RFC 7301 registry: "imap", "pop3", "smtp"
    EXPECT_EQ(p.plaintextPort, row.plaintext);
    EXPECT_EQ(p.implicitTlsPort, row.implicit);
    EXPECT_NE(p.probe, nullptr);
    EXPECT_NE(p.makeFilter, nullptr);
    EXPECT_NE(p.makeLogin, nullptr);
    // Only SMTP stays parsed after authentication and speaks XCLIENT.
    EXPECT_EQ(p.makeFilterAfterLogin != nullptr, row.protocol == config::Protocol::Smtp);
    EXPECT_EQ(p.hasXclient, row.protocol == config::Protocol::Smtp);
    EXPECT_EQ(p.preauthEndsAtTls, row.protocol == config::Protocol::Smtp);
  }
}

// The config's names and the protocol table's rows agree, row for row.
TEST(ProtocolTable, EveryConfigNameHasItsRow) {
  for (const auto& [name, protocol] : config::kProtocolNames) {
    EXPECT_STREQ(info(protocol).name, name);
    EXPECT_STREQ(config::toString(protocol), name);
  }
}

TEST(GreetingIsReady, AcceptsReadyGreetingsAndTheirPrefixes) {
  EXPECT_TRUE(greetingIsReady(config::Protocol::Imap, "* OK ready\r\n"));
  EXPECT_TRUE(greetingIsReady(config::Protocol::Imap, "* PREAUTH hi\r\n"));
  EXPECT_TRUE(greetingIsReady(config::Protocol::Imap, "* "));
  EXPECT_FALSE(greetingIsReady(config::Protocol::Imap, "* BYE too busy\r\n"));
  EXPECT_TRUE(greetingIsReady(config::Protocol::Pop3, "+OK\r\n"));
  EXPECT_FALSE(greetingIsReady(config::Protocol::Pop3, "-ERR [SYS/TEMP] busy\r\n"));
  EXPECT_TRUE(greetingIsReady(config::Protocol::Smtp, "220 mx ESMTP\r\n"));
  EXPECT_FALSE(greetingIsReady(config::Protocol::Smtp, "421 4.3.2 busy\r\n"));
  EXPECT_FALSE(greetingIsReady(config::Protocol::Smtp, "554 go away\r\n"));
}

} // namespace
} // namespace protocol
