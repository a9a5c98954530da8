// Login mode's pure parts: SASL encodings, the three front dialogues (split at every byte), the
// three replays against scripted server dialogues, and capability arithmetic.
#include "proxy/protocol/login/login.h"

#include <gtest/gtest.h>

#include <optional>
#include <string>

namespace protocol {
namespace {

// ---- SASL encodings ---------------------------------------------------------------------

TEST(Sasl, Base64RoundTripsEveryLength) {
  std::string data;
  for (int i = 0; i < 64; ++i) {
    std::string encoded = encodeBase64(data);
    EXPECT_EQ(encoded.size() % 4, 0U);
    EXPECT_EQ(decodeBase64(encoded), data);
    data.push_back(static_cast<char>(i * 37));
  }
  EXPECT_EQ(encodeBase64("\0alice\0wonderland"), "");
  EXPECT_EQ(encodeBase64(std::string("\0alice\0wonderland", 17)), "AGFsaWNlAHdvbmRlcmxhbmQ=");
}

TEST(Sasl, Base64RefusesWhatIsNotBase64) {
  for (const char* bad : {"abc", "ab=c", "a===", "ab\r\n", "ab c", "YQ==YQ==", "====", "Y!=="}) {
    EXPECT_FALSE(decodeBase64(bad).has_value()) << bad;
  }
  EXPECT_EQ(decodeBase64(""), "");
}

TEST(Sasl, PlainParsesAuthzidUserAndPassword) {
  auto c = parsePlain(std::string("admin\0alice\0pass word", 21));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->authzid, "admin");
  EXPECT_EQ(c->user, "alice");
  EXPECT_EQ(c->secret, "pass word");
  EXPECT_EQ(buildPlain(*c), std::string("admin\0alice\0pass word", 21));
  EXPECT_FALSE(parsePlain("alice"));
  EXPECT_FALSE(parsePlain(std::string("\0\0secret", 8))); // no user
  EXPECT_FALSE(parsePlain(std::string("a\0b\0c\0d", 7))); // too many parts
}

TEST(Sasl, XOAuth2AndOAuthBearer) {
  auto x = parseXOAuth2("user=alice@example.org\x01"
                        "auth=Bearer tok123\x01\x01");
  ASSERT_TRUE(x);
  EXPECT_EQ(x->user, "alice@example.org");
  EXPECT_EQ(x->secret, "tok123");
  EXPECT_EQ(x->kind, Credentials::Kind::XOAuth2);
  EXPECT_EQ(buildXOAuth2(*x), "user=alice@example.org\x01"
                              "auth=Bearer tok123\x01\x01");
  EXPECT_FALSE(parseXOAuth2("user=alice\x01"
                            "auth=Basic abc\x01\x01"));
  EXPECT_FALSE(parseXOAuth2("user=alice\x01"
                            "auth=Bearer abc"));

  auto o = parseOAuthBearer("n,a=al=2Cice,\x01host=h\x01port=993\x01"
                            "auth=Bearer t0k\x01\x01");
  ASSERT_TRUE(o);
  EXPECT_EQ(o->user, "al,ice");
  EXPECT_EQ(o->secret, "t0k");
  auto back = parseOAuthBearer(buildOAuthBearer(*o, "imap.example", 143));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->user, "al,ice");
  EXPECT_EQ(back->secret, "t0k");
  EXPECT_FALSE(parseOAuthBearer("p=tls-unique,,\x01"
                                "auth=Bearer t\x01\x01"));
  EXPECT_FALSE(parseOAuthBearer("n,,\x01host=h\x01\x01")); // no token
  // No authorisation identity: postern routes and throttles by user, so it is refused.
  EXPECT_FALSE(parseOAuthBearer("n,,\x01"
                                "auth=Bearer t\x01\x01"));
}

TEST(Sasl, CaptureLoginAsksForUserThenPassword) {
  SaslCapture capture(Mechanism::Login);
  EXPECT_EQ(capture.start(std::nullopt), SaslCapture::Step::Challenge);
  EXPECT_EQ(decodeBase64(capture.challenge()), "Username:");
  EXPECT_EQ(capture.respond(encodeBase64("alice")), SaslCapture::Step::Challenge);
  EXPECT_EQ(decodeBase64(capture.challenge()), "Password:");
  EXPECT_EQ(capture.respond(encodeBase64("wonder land")), SaslCapture::Step::Done);
  EXPECT_EQ(capture.credentials().user, "alice");
  EXPECT_EQ(capture.credentials().secret, "wonder land");
  SaslCapture cancelled(Mechanism::Plain);
  EXPECT_EQ(cancelled.start(std::nullopt), SaslCapture::Step::Challenge);
  EXPECT_EQ(cancelled.respond("*"), SaslCapture::Step::Cancelled);
  SaslCapture bad(Mechanism::Plain);
  EXPECT_EQ(bad.start("not base64!"), SaslCapture::Step::BadEncoding);
}

TEST(Sasl, CredentialsMoveLeavesNothingBehind) {
  Credentials a;
  a.user = "alice";
  a.secret = "wonderland";
  Credentials b = std::move(a);
  EXPECT_EQ(b.secret, "wonderland");
  EXPECT_TRUE(a.secret.empty());
  EXPECT_TRUE(a.user.empty());
  b.clear();
  EXPECT_TRUE(b.secret.empty());
}

// ---- capabilities -----------------------------------------------------------------------

TEST(Capabilities, CommonKeepsWhatEveryServerHas) {
  EXPECT_TRUE(commonCapabilities({}).empty());
  auto imap = commonCapabilities(
      {{"IMAP4rev1", "IDLE", "AUTH=PLAIN", "AUTH=XOAUTH2"}, {"imap4rev1", "AUTH=PLAIN", "ID"}});
  EXPECT_EQ(imap, (std::vector<std::string>{"IMAP4rev1", "AUTH=PLAIN"}));
  auto pop3 = commonCapabilities(
      {{"TOP", "USER", "SASL PLAIN LOGIN XOAUTH2"}, {"USER", "SASL LOGIN XOAUTH2", "UIDL"}});
  EXPECT_EQ(pop3, (std::vector<std::string>{"USER", "SASL LOGIN XOAUTH2"}));
  auto smtp = commonCapabilities({{"PIPELINING", "AUTH PLAIN"}, {"PIPELINING", "AUTH LOGIN"}});
  EXPECT_EQ(smtp, (std::vector<std::string>{"PIPELINING"}));
}

// ---- front dialogues --------------------------------------------------------------------

struct Said {
  std::string toClient;
  std::vector<Event> events;
  bool startTls = false;
  bool close = false;
  bool quit = false;
  std::optional<std::string> user;
  std::string secret;
  std::string tag;
  std::string helo;
  std::string mechanism;
};

class Front {
public:
  explicit Front(std::unique_ptr<LoginDialogue> dialogue) : dialogue_(std::move(dialogue)) {}
  Said greet() {
    dialogue_->greet(out_);
    return take();
  }
  Said client(std::string_view bytes) {
    dialogue_->fromClient(std::span<const char>(bytes.data(), bytes.size()), out_);
    return take();
  }
  Said tlsStarted() {
    dialogue_->tlsStarted(out_);
    return take();
  }
  Said rejected() {
    dialogue_->rejected(out_);
    return take();
  }
  Said throttled() {
    dialogue_->throttled(out_);
    return take();
  }
  std::string rest() { return dialogue_->acceptedRest(); }

private:
  Said take() {
    Said said{out_.toClient, {}, out_.startTls, out_.close, out_.quit};
    for (auto& record : out_.events) {
      said.events.push_back(record.event);
    }
    if (out_.credentials) {
      said.user = out_.credentials->user;
      said.secret = out_.credentials->secret;
      said.tag = out_.credentials->tag;
      said.mechanism = out_.credentials->mechanism;
    }
    said.helo = out_.clientHelo;
    out_.reset();
    return said;
  }
  std::unique_ptr<LoginDialogue> dialogue_;
  LoginOutput out_;
};

Policy policy(config::TlsMode tls, bool requireTls) {
  Policy p;
  p.listenerTls = tls;
  p.requireTls = requireTls;
  p.hostname = "mx.example";
  p.maxLineLength = 4096;
  return p;
}

const std::vector<std::string> kDovecotImap = {
    "IMAP4rev1", "SASL-IR",  "LOGIN-REFERRALS", "ID",         "ENABLE",
    "IDLE",      "LITERAL+", "STARTTLS",        "AUTH=PLAIN", "AUTH=XOAUTH2"};

Front imap(config::TlsMode tls = config::TlsMode::StartTls, bool requireTls = true,
           std::vector<std::string> caps = kDovecotImap) {
  return Front(makeImapLogin(policy(tls, requireTls), {std::move(caps)}));
}

// Feeds `script` whole and split in two at every position: the same replies and credentials.
template <typename Make> void expectSplitInvariant(Make make, std::string_view script) {
  Front whole = make();
  whole.greet();
  Said expected = whole.client(script);
  for (std::size_t cut = 0; cut <= script.size(); ++cut) {
    Front split = make();
    split.greet();
    Said first = split.client(script.substr(0, cut));
    bool done = first.user || first.close || first.quit || first.startTls;
    Said second = done ? Said{} : split.client(script.substr(cut));
    Said& got = done ? first : second;
    EXPECT_EQ(first.toClient + second.toClient, expected.toClient) << "cut at " << cut;
    EXPECT_EQ(got.user, expected.user) << "cut at " << cut;
    EXPECT_EQ(got.secret, expected.secret) << "cut at " << cut;
    // The decisions too, not only the bytes: events, close, quit and STARTTLS.
    std::vector<Event> events = first.events;
    events.insert(events.end(), second.events.begin(), second.events.end());
    EXPECT_EQ(events, expected.events) << "cut at " << cut;
    EXPECT_EQ(first.close || second.close, expected.close) << "cut at " << cut;
    EXPECT_EQ(first.quit || second.quit, expected.quit) << "cut at " << cut;
    EXPECT_EQ(first.startTls || second.startTls, expected.startTls) << "cut at " << cut;
  }
}

TEST(ImapLogin, CapabilitiesFollowTheServersAndThePolicy) {
  Front f = imap();
  EXPECT_EQ(f.greet().toClient,
            "* OK [CAPABILITY IMAP4rev1 ENABLE IDLE LITERAL+ SASL-IR ID STARTTLS LOGINDISABLED] "
            "postern ready.\r\n");
  Said go = f.client("a STARTTLS\r\n");
  EXPECT_EQ(go.toClient, "a OK Begin TLS negotiation now.\r\n");
  EXPECT_TRUE(go.startTls);
  f.tlsStarted();
  EXPECT_EQ(f.client("b CAPABILITY\r\n").toClient,
            "* CAPABILITY IMAP4rev1 ENABLE IDLE LITERAL+ SASL-IR ID AUTH=PLAIN AUTH=LOGIN "
            "AUTH=XOAUTH2\r\nb OK Capability completed.\r\n");
}

TEST(ImapLogin, NothingKnownYetStillOffersPasswords) {
  Front f = imap(config::TlsMode::Implicit, true, {});
  EXPECT_EQ(f.greet().toClient,
            "* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN AUTH=LOGIN] postern ready.\r\n");
}

TEST(ImapLogin, AuthenticationBeforeTlsIsRefused) {
  Front f = imap();
  f.greet();
  Said s = f.client("a LOGIN alice secret\r\n");
  EXPECT_EQ(s.toClient, "a NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n");
  EXPECT_EQ(s.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  EXPECT_FALSE(s.user);
  s = f.client("b AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n");
  EXPECT_EQ(s.toClient, "b NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n");
  EXPECT_FALSE(s.user);
}

TEST(ImapLogin, LoginWithAtomsQuotedStringsAndLiterals) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  Said s = f.client("a1 LOGIN alice wonderland\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonderland");
  EXPECT_EQ(s.tag, "a1");
  EXPECT_EQ(s.toClient, "");
  f.rejected();
  s = f.client("a2 LOGIN \"al ice\" \"pa\\\"ss\\\\word\"\r\n");
  EXPECT_EQ(s.user, "al ice");
  EXPECT_EQ(s.secret, "pa\"ss\\word");
  f.rejected();
  s = f.client("a3 LOGIN {5}\r\n");
  EXPECT_EQ(s.toClient, "+ Ready for literal data\r\n");
  s = f.client("alice {9}\r\n");
  EXPECT_EQ(s.toClient, "+ Ready for literal data\r\n");
  s = f.client("wo\r\nderla\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wo\r\nderla");
  EXPECT_EQ(s.tag, "a3");
  f.rejected();
  s = f.client("a4 LOGIN {5+}\r\nalice {10+}\r\nwonderland\r\n");
  EXPECT_EQ(s.toClient, "");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonderland");
}

TEST(ImapLogin, LoginSplitAtEveryByte) {
  expectSplitInvariant([] { return imap(config::TlsMode::Implicit); },
                       "a NOOP\r\nb LOGIN {5}\r\nalice \"wonder land\"\r\n");
  expectSplitInvariant([] { return imap(config::TlsMode::Implicit); },
                       "a AUTHENTICATE PLAIN\r\nAGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
}

TEST(ImapLogin, AuthenticateWithAndWithoutInitialResponse) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  Said s = f.client("a AUTHENTICATE PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonderland");
  EXPECT_EQ(s.mechanism, "plain");
  f.rejected();
  EXPECT_EQ(f.client("b AUTHENTICATE PLAIN\r\n").toClient, "+ \r\n");
  s = f.client("AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.tag, "b");
  f.rejected();
  EXPECT_EQ(f.client("c AUTHENTICATE LOGIN\r\n").toClient, "+ VXNlcm5hbWU6\r\n");
  EXPECT_EQ(f.client("YWxpY2U=\r\n").toClient, "+ UGFzc3dvcmQ6\r\n");
  s = f.client("d29uZGVybGFuZA==\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonderland");
  f.rejected();
  s = f.client("d AUTHENTICATE XOAUTH2 " +
               encodeBase64("user=alice\x01"
                            "auth=Bearer tok\x01\x01") +
               "\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "tok");
  EXPECT_EQ(s.mechanism, "xoauth2");
}

TEST(ImapLogin, SaslErrorsAndUnofferedMechanisms) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  f.client("a AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(f.client("*\r\n").toClient, "a BAD Authentication cancelled\r\n");
  f.client("b AUTHENTICATE PLAIN\r\n");
  EXPECT_EQ(f.client("%%%%\r\n").toClient, "b BAD Invalid base64 data\r\n");
  EXPECT_EQ(f.client("c AUTHENTICATE OAUTHBEARER\r\n").toClient,
            "c NO [CANNOT] Unsupported authentication mechanism\r\n");
  EXPECT_EQ(f.client("d AUTHENTICATE CRAM-MD5\r\n").toClient,
            "d NO [CANNOT] Unsupported authentication mechanism\r\n");
  EXPECT_EQ(f.client("e AUTHENTICATE PLAIN " + encodeBase64("alice") + "\r\n").toClient,
            "e NO [AUTHENTICATIONFAILED] Invalid authentication data\r\n");
  // After all that the session still logs in.
  EXPECT_EQ(f.client("f LOGIN alice x\r\n").user, "alice");
}

TEST(ImapLogin, LocalCommandsAndBadInput) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  EXPECT_EQ(f.client("a NOOP\r\n").toClient, "a OK NOOP completed.\r\n");
  EXPECT_EQ(f.client("b ID (\"name\" \"mutt\")\r\n").toClient,
            "* ID NIL\r\nb OK ID completed.\r\n");
  EXPECT_EQ(f.client("c SELECT INBOX\r\n").toClient,
            "c BAD Command not available before login\r\n");
  EXPECT_EQ(f.client("d LOGIN alice\r\n").toClient,
            "d BAD LOGIN takes a user name and a password\r\n");
  EXPECT_EQ(f.client("e LOGIN \"alice\r\n").toClient, "e BAD Invalid arguments\r\n");
  EXPECT_EQ(f.client("f STARTTLS\r\n").toClient, "f BAD TLS is already active\r\n");
  EXPECT_EQ(f.client("* LOGIN alice x\r\n").toClient, "* BAD Invalid tag\r\n");
  EXPECT_EQ(f.client("+ LOGIN alice x\r\n").toClient, "* BAD Invalid tag\r\n");
  Said big = f.client("g LOGIN {99999}\r\n");
  EXPECT_TRUE(big.close);
  EXPECT_EQ(big.toClient, "* BYE Literal too large\r\n");
  Front g = imap(config::TlsMode::Implicit);
  g.greet();
  Said bye = g.client("z LOGOUT\r\n");
  EXPECT_TRUE(bye.quit);
  EXPECT_EQ(bye.toClient, "* BYE Logging out\r\nz OK Logout completed.\r\n");
  Front h = imap(config::TlsMode::Implicit);
  h.greet();
  Said long_ = h.client(std::string(5000, 'a'));
  EXPECT_TRUE(long_.close);
  EXPECT_EQ(long_.toClient, "* BYE Line too long\r\n");
}

TEST(ImapLogin, ACommandIsBoundedLiteralsIncluded) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  Said s = f.client("a NOOP {3000+}\r\n" + std::string(3000, 'x') + " {3000+}\r\n");
  EXPECT_TRUE(s.close); // 6000 bytes of literals in one command: over max_line_length (4096)
  EXPECT_EQ(s.toClient, "* BYE Literal too large\r\n");
  Front g = imap(config::TlsMode::Implicit);
  g.greet();
  std::string many = "a ID (";
  for (int i = 0; i < 70; ++i) {
    many += "\"k\" ";
  }
  Said t = g.client(many + ")\r\n");
  EXPECT_TRUE(t.close);
  EXPECT_EQ(t.toClient, "* BYE Command too long\r\n");
}

TEST(ImapLogin, StartTlsInjectionClosesTheSession) {
  Front f = imap();
  f.greet();
  Said s = f.client("a STARTTLS\r\nb LOGIN alice secret\r\n");
  EXPECT_TRUE(s.close);
  EXPECT_FALSE(s.startTls);
  EXPECT_EQ(s.toClient, "a BAD Commands pipelined after STARTTLS\r\n");
  EXPECT_EQ(s.events, std::vector<Event>{Event::StartTlsInjection});
}

TEST(ImapLogin, PipelinedCommandsWaitForTheVerdict) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  Said s = f.client("a LOGIN alice wrong\r\nb LOGIN alice right\r\nc SELECT INBOX\r\n");
  EXPECT_EQ(s.secret, "wrong");
  s = f.rejected(); // the next attempt comes out of what was buffered
  EXPECT_EQ(s.secret, "right");
  EXPECT_EQ(f.rest(), "c SELECT INBOX\r\n");
}

TEST(ImapLogin, ThrottledAttemptGetsATaggedRefusal) {
  Front f = imap(config::TlsMode::Implicit);
  f.greet();
  f.client("a7 LOGIN alice x\r\n");
  EXPECT_EQ(f.throttled().toClient,
            "a7 NO [UNAVAILABLE] Too many failed logins, try again later\r\n");
}

Front pop3(config::TlsMode tls = config::TlsMode::StartTls, bool requireTls = true) {
  return Front(makePop3Login(
      policy(tls, requireTls),
      {{"CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "STLS", "USER", "SASL PLAIN LOGIN"}}));
}

TEST(Pop3Login, CapaFollowsThePolicy) {
  Front f = pop3();
  EXPECT_EQ(f.greet().toClient, "+OK postern ready.\r\n");
  EXPECT_EQ(f.client("CAPA\r\n").toClient,
            "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            "STLS\r\n.\r\n");
  Said s = f.client("USER alice\r\n");
  EXPECT_EQ(s.toClient, "-ERR [AUTH] Plaintext authentication disallowed; use STLS first\r\n");
  EXPECT_EQ(s.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  EXPECT_TRUE(f.client("STLS\r\n").startTls);
  f.tlsStarted();
  EXPECT_EQ(f.client("CAPA\r\n").toClient,
            "+OK Capability list follows\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nPIPELINING\r\n"
            "USER\r\nSASL PLAIN LOGIN\r\n.\r\n");
  EXPECT_EQ(f.client("STLS\r\n").toClient, "-ERR Already using TLS\r\n");
}

TEST(Pop3Login, UserPassAndSasl) {
  Front f = pop3(config::TlsMode::Implicit);
  f.greet();
  EXPECT_EQ(f.client("PASS x\r\n").toClient, "-ERR No user name given\r\n");
  EXPECT_EQ(f.client("USER alice\r\n").toClient, "+OK\r\n");
  Said s = f.client("PASS wonder land \r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonder land ");
  EXPECT_EQ(s.mechanism, "user");
  f.rejected();
  s = f.client("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  EXPECT_EQ(s.secret, "wonderland");
  f.rejected();
  EXPECT_EQ(f.client("AUTH XOAUTH2\r\n").toClient, "-ERR Unsupported authentication mechanism\r\n");
  EXPECT_EQ(f.client("AUTH PLAIN\r\n").toClient, "+ \r\n");
  EXPECT_EQ(f.client("*\r\n").toClient, "-ERR Authentication cancelled\r\n");
  EXPECT_EQ(f.client("AUTH PLAIN ###\r\n").toClient, "-ERR Invalid base64 data\r\n");
  EXPECT_EQ(f.client("AUTH\r\n").toClient, "+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n");
  EXPECT_EQ(f.client("STAT\r\n").toClient, "-ERR Unknown command or not logged in\r\n");
  EXPECT_TRUE(f.client("QUIT\r\n").quit);
}

TEST(Pop3Login, SplitAtEveryByte) {
  expectSplitInvariant([] { return pop3(config::TlsMode::Implicit); },
                       "CAPA\r\nUSER alice\r\nPASS wonderland\r\n");
  expectSplitInvariant([] { return pop3(config::TlsMode::Implicit); },
                       "AUTH PLAIN\r\nAGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
}

TEST(Pop3Login, UserIsForgottenAfterStls) {
  Front f = pop3(config::TlsMode::StartTls, false);
  f.greet();
  EXPECT_EQ(f.client("USER alice\r\n").toClient, "+OK\r\n");
  f.client("STLS\r\n");
  f.tlsStarted();
  EXPECT_EQ(f.client("PASS x\r\n").toClient, "-ERR No user name given\r\n");
}

Front smtp(config::TlsMode tls = config::TlsMode::StartTls, bool requireTls = true) {
  return Front(
      makeSmtpLogin(policy(tls, requireTls),
                    {{"PIPELINING", "SIZE 10240000", "ETRN", "STARTTLS", "AUTH PLAIN LOGIN",
                      "ENHANCEDSTATUSCODES", "8BITMIME", "CHUNKING", "XCLIENT NAME ADDR"}}));
}

TEST(SmtpLogin, EhloFollowsThePolicy) {
  Front f = smtp();
  EXPECT_EQ(f.greet().toClient, "220 mx.example ESMTP postern\r\n");
  EXPECT_EQ(f.client("EHLO client.example\r\n").toClient,
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 STARTTLS\r\n");
  Said s = f.client("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  EXPECT_EQ(s.toClient, "530 5.7.0 Must issue a STARTTLS command first\r\n");
  EXPECT_FALSE(s.user);
  EXPECT_TRUE(f.client("STARTTLS\r\n").startTls);
  f.tlsStarted();
  EXPECT_EQ(f.client("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n").toClient,
            "503 5.5.1 Error: send EHLO first\r\n");
  EXPECT_EQ(f.client("EHLO client.example\r\n").toClient,
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-ETRN\r\n"
            "250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n");
  EXPECT_EQ(f.client("MAIL FROM:<a@b>\r\n").toClient, "530 5.7.0 Authentication required\r\n");
  s = f.client("AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.helo, "client.example");
}

TEST(SmtpLogin, AuthLoginAndErrors) {
  Front f = smtp(config::TlsMode::Implicit);
  f.greet();
  f.client("EHLO c\r\n");
  EXPECT_EQ(f.client("AUTH LOGIN\r\n").toClient, "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(f.client("YWxpY2U=\r\n").toClient, "334 UGFzc3dvcmQ6\r\n");
  Said s = f.client("d29uZGVybGFuZA==\r\n");
  EXPECT_EQ(s.user, "alice");
  EXPECT_EQ(s.secret, "wonderland");
  f.rejected();
  EXPECT_EQ(f.client("AUTH PLAIN\r\n").toClient, "334 \r\n");
  EXPECT_EQ(f.client("*\r\n").toClient, "501 5.7.0 Error: authentication cancelled\r\n");
  EXPECT_EQ(f.client("AUTH PLAIN !!!!\r\n").toClient, "501 5.5.2 Error: invalid base64 data\r\n");
  EXPECT_EQ(f.client("AUTH XOAUTH2 abcd\r\n").toClient,
            "504 5.5.4 Unsupported authentication mechanism\r\n");
  EXPECT_EQ(f.client("NOOP\r\n").toClient, "250 2.0.0 Ok\r\n");
  EXPECT_EQ(f.client("XCLIENT ADDR=1.2.3.4\r\n").toClient, "550 5.7.1 Error: not permitted\r\n");
  EXPECT_EQ(f.throttled().toClient, "454 4.7.0 Too many failed logins, try again later\r\n");
  EXPECT_EQ(f.client("AUTH\r\n").toClient, "501 5.5.4 Syntax: AUTH mechanism\r\n");
  Said bye = f.client("QUIT\r\n");
  EXPECT_TRUE(bye.quit);
  EXPECT_EQ(bye.toClient, "221 2.0.0 Bye\r\n");
}

TEST(SmtpLogin, SplitAtEveryByte) {
  expectSplitInvariant([] { return smtp(config::TlsMode::Implicit); },
                       "EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nd29uZGVybGFuZA==\r\n");
}

// ---- replays ----------------------------------------------------------------------------

struct Server {
  std::unique_ptr<LoginReplay> replay;
  LoginReplay::Result say(std::string_view bytes) {
    return replay->fromBackend(std::span<const char>(bytes.data(), bytes.size()));
  }
};

Credentials password(std::string user, std::string secret, std::string tag = "a1") {
  Credentials c;
  c.user = std::move(user);
  c.secret = std::move(secret);
  c.tag = std::move(tag);
  return c;
}

ReplayContext context(bool greeted = false) {
  ReplayContext c;
  c.clientIp = "192.0.2.7";
  c.clientPort = 40000;
  c.serverHost = "imap.example";
  c.serverPort = 143;
  c.hostname = "postern.example";
  c.clientHelo = "client.example";
  c.greeted = greeted;
  return c;
}

using Step = LoginReplay::Step;

TEST(ImapReplay, ForwardsTheAddressThenPlainWithTheClientsTag) {
  Server s{makeImapReplay(password("alice", "wonderland"), context())};
  EXPECT_EQ(s.replay->start().step, Step::NeedMore);
  auto r = s.say("* OK [CAPABILITY IMAP4rev1 SASL-IR ID AUTH=PLAIN] Dovecot ready.\r\n");
  EXPECT_EQ(r.step, Step::Send);
  EXPECT_EQ(r.toBackend,
            "I ID (\"x-originating-ip\" \"192.0.2.7\" \"x-originating-port\" \"40000\")\r\n");
  r = s.say("* ID NIL\r\nI OK ID completed.\r\n");
  EXPECT_EQ(r.toBackend, "a1 AUTHENTICATE PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  r = s.say("* CAPABILITY IMAP4rev1 IDLE\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\n");
  EXPECT_EQ(r.step, Step::Accepted);
  EXPECT_EQ(r.toClient,
            "* CAPABILITY IMAP4rev1 IDLE\r\na1 OK [CAPABILITY IMAP4rev1] Logged in\r\n");
}

TEST(ImapReplay, AsksForCapabilitiesAndFallsBackToLogin) {
  Server s{makeImapReplay(password("al ice", "pa\"ss"), context(true))};
  auto r = s.replay->start();
  EXPECT_EQ(r.toBackend, "C CAPABILITY\r\n");
  r = s.say("* CAPABILITY IMAP4rev1\r\nC OK done\r\n");
  EXPECT_EQ(r.toBackend, "a1 LOGIN \"al ice\" \"pa\\\"ss\"\r\n");
  r = s.say("a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  EXPECT_EQ(r.step, Step::Rejected);
  EXPECT_EQ(r.toClient, "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
}

TEST(ImapReplay, AuthenticateLoginWhenThatIsAllTheServerTakes) {
  Server s{makeImapReplay(password("alice", "wonderland"), context())};
  auto r = s.say("* OK [CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=LOGIN] ready\r\n");
  EXPECT_EQ(r.toBackend, "a1 AUTHENTICATE LOGIN\r\n");
  EXPECT_EQ(s.say("+ VXNlcm5hbWU6\r\n").toBackend, "YWxpY2U=\r\n");
  EXPECT_EQ(s.say("+ UGFzc3dvcmQ6\r\n").toBackend, "d29uZGVybGFuZA==\r\n");
  EXPECT_EQ(s.say("a1 OK Logged in\r\n").step, Step::Accepted);
}

TEST(ImapReplay, TokensNeedTheirMechanismAndErrorChallengesAreAnswered) {
  Credentials token = password("alice", "tok");
  token.kind = Credentials::Kind::XOAuth2;
  Server none{makeImapReplay(std::move(token), context())};
  EXPECT_EQ(none.say("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n").step, Step::Failed);
  Credentials again = password("alice", "tok");
  again.kind = Credentials::Kind::XOAuth2;
  Server s{makeImapReplay(std::move(again), context())};
  auto r = s.say("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n");
  EXPECT_EQ(r.toBackend, "a1 AUTHENTICATE XOAUTH2\r\n");
  EXPECT_EQ(s.say("+ \r\n").toBackend, encodeBase64("user=alice\x01"
                                                    "auth=Bearer tok\x01\x01") +
                                           "\r\n");
  EXPECT_EQ(s.say("+ eyJzdGF0dXMiOiI0MDEifQ==\r\n").toBackend, "\r\n");
  EXPECT_EQ(s.say("a1 NO [AUTHENTICATIONFAILED] bad token\r\n").step, Step::Rejected);
}

TEST(ImapReplay, PreauthAndGarbageAreFailedServers) {
  Server pre{makeImapReplay(password("a", "b"), context())};
  EXPECT_EQ(pre.say("* PREAUTH welcome\r\n").step, Step::Failed);
  Server bye{makeImapReplay(password("a", "b"), context())};
  EXPECT_EQ(bye.say("* BYE go away\r\n").step, Step::Failed);
}

TEST(Pop3Replay, SaslPlainElseUserPass) {
  Server sasl{makePop3Replay(password("alice", "wonderland"), context())};
  EXPECT_EQ(sasl.say("+OK Dovecot ready.\r\n").toBackend, "CAPA\r\n");
  auto r = sasl.say("+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n");
  EXPECT_EQ(r.toBackend, "AUTH PLAIN AGFsaWNlAHdvbmRlcmxhbmQ=\r\n");
  r = sasl.say("+OK Logged in.\r\n");
  EXPECT_EQ(r.step, Step::Accepted);
  EXPECT_EQ(r.toClient, "+OK Logged in.\r\n");

  Server user{makePop3Replay(password("alice", "wonderland"), context())};
  user.say("+OK ready\r\n");
  EXPECT_EQ(user.say("+OK\r\nUSER\r\n.\r\n").toBackend, "USER alice\r\n");
  EXPECT_EQ(user.say("+OK\r\n").toBackend, "PASS wonderland\r\n");
  r = user.say("-ERR [AUTH] Authentication failed.\r\n");
  EXPECT_EQ(r.step, Step::Rejected);
  EXPECT_EQ(r.toClient, "-ERR [AUTH] Authentication failed.\r\n");
}

TEST(SmtpReplay, GreetsWithTheClientsNameAndUsesLoginWithoutPlain) {
  Server s{makeSmtpReplay(password("alice", "wonderland"), context())};
  EXPECT_EQ(s.say("220-mx.example ESMTP\r\n").step, Step::NeedMore);
  auto r = s.say("220 mx.example ready\r\n");
  EXPECT_EQ(r.toBackend, "EHLO client.example\r\n");
  r = s.say("250-mx.example\r\n250-PIPELINING\r\n250 AUTH LOGIN\r\n");
  EXPECT_EQ(r.toBackend, "AUTH LOGIN\r\n");
  EXPECT_EQ(s.say("334 VXNlcm5hbWU6\r\n").toBackend, "YWxpY2U=\r\n");
  EXPECT_EQ(s.say("334 UGFzc3dvcmQ6\r\n").toBackend, "d29uZGVybGFuZA==\r\n");
  r = s.say("235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(r.step, Step::Accepted);
  EXPECT_EQ(r.toClient, "235 2.7.0 Authentication successful\r\n");
}

TEST(SmtpReplay, PlainWhenOfferedAndRejectionsRelayed) {
  Server s{makeSmtpReplay(password("alice", "bad"), context(true))};
  EXPECT_EQ(s.replay->start().toBackend, "EHLO client.example\r\n");
  auto r = s.say("250-mx\r\n250 AUTH PLAIN LOGIN\r\n");
  EXPECT_EQ(r.toBackend, "AUTH PLAIN " + encodeBase64(std::string("\0alice\0bad", 10)) + "\r\n");
  r = s.say("535 5.7.8 Error: authentication failed\r\n");
  EXPECT_EQ(r.step, Step::Rejected);
  EXPECT_EQ(r.toClient, "535 5.7.8 Error: authentication failed\r\n");
  Server refused{makeSmtpReplay(password("a", "b"), context())};
  EXPECT_EQ(refused.say("554 go away\r\n").step, Step::Failed);
}

} // namespace
} // namespace protocol
