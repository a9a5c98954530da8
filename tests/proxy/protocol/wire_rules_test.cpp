// SPEC §5.1, one reading of the wire: each rule in every dialogue that holds or watches the
// client (passthrough filter, SMTP after login, login dialogue), for all three protocols, with
// every script fed whole and split at every byte (same replies, same bytes relayed, same close
// and the same events wherever the reads fall). Each test names the finding it would have caught.
#include "proxy/protocol/filter.h"
#include "proxy/protocol/imap/imap_syntax.h"
#include "proxy/protocol/login/login.h"
#include "proxy/protocol/syntax.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace protocol {
namespace {

struct Outcome {
  std::string toClient;
  std::string toBackend;
  bool close = false;
  bool startTls = false;
  std::vector<Event> events;
};

void add(Outcome& into, Output& out) {
  into.toClient += out.toClient;
  into.toBackend += out.toBackend;
  into.close = into.close || out.close;
  into.startTls = into.startTls || out.startTls;
  for (const EventRecord& record : out.events) {
    into.events.push_back(record.event);
  }
  out.clear();
}

// A dialogue under test: the passthrough filter (after its backend greeting) or a login
// dialogue (after postern's greeting); `feed` gives it client bytes.
struct Subject {
  std::function<void(std::string_view, Outcome&)> feed;
  std::function<void(std::string_view, Outcome&)> backend; // filters only
};

using Make = std::function<Subject()>;

Subject filter(std::shared_ptr<Filter> f, std::string_view greeting) {
  Output out;
  f->fromBackend(std::span<const char>(greeting.data(), greeting.size()), out);
  out.clear();
  return {[f](std::string_view bytes, Outcome& into) {
            Output out;
            f->fromClient(std::span<const char>(bytes.data(), bytes.size()), out);
            add(into, out);
          },
          [f](std::string_view bytes, Outcome& into) {
            Output out;
            f->fromBackend(std::span<const char>(bytes.data(), bytes.size()), out);
            add(into, out);
          }};
}

Subject login(std::shared_ptr<LoginDialogue> d) {
  LoginOutput greeting;
  d->greet(greeting);
  return {[d](std::string_view bytes, Outcome& into) {
            LoginOutput out;
            d->fromClient(std::span<const char>(bytes.data(), bytes.size()), out);
            add(into, out);
            into.close = into.close || out.quit;
          },
          nullptr};
}

// The script whole, then split in two at every byte: everything the dialogue decides is the
// same. Returns the whole run's outcome for the test's own assertions.
Outcome runSplit(const Make& make, std::string_view script) {
  Outcome whole;
  make().feed(script, whole);
  for (std::size_t cut = 0; cut <= script.size(); ++cut) {
    Subject split = make();
    Outcome got;
    split.feed(script.substr(0, cut), got);
    if (!got.close) {
      split.feed(script.substr(cut), got);
    }
    EXPECT_EQ(got.toClient, whole.toClient) << "cut at " << cut;
    EXPECT_EQ(got.toBackend, whole.toBackend) << "cut at " << cut;
    EXPECT_EQ(got.close, whole.close) << "cut at " << cut;
    EXPECT_EQ(got.startTls, whole.startTls) << "cut at " << cut;
    EXPECT_EQ(got.events, whole.events) << "cut at " << cut;
  }
  return whole;
}

Policy policy(config::TlsMode tls, bool requireTls, std::size_t maxLine = 8192) {
  Policy p;
  p.listenerTls = tls;
  p.requireTls = requireTls;
  p.maxLineLength = maxLine;
  p.hostname = "mx.example";
  return p;
}

const Policy kSubmission = policy(config::TlsMode::StartTls, true);
const Policy kPlain = policy(config::TlsMode::None, false);
const Policy kImplicit = policy(config::TlsMode::Implicit, false);

Make smtpFilter(Policy p = kSubmission) {
  return [p] { return filter(makeSmtpFilter(p), "220 mx ESMTP\r\n"); };
}
Make smtpAfterLogin() {
  return [] { return filter(makeSmtpFilterAfterLogin(kImplicit), ""); };
}
Make smtpLogin(Policy p = kSubmission) {
  return [p] { return login(makeSmtpLogin(p, {})); };
}
Make pop3Filter(Policy p = kSubmission) {
  return [p] { return filter(makePop3Filter(p), "+OK ready\r\n"); };
}
Make pop3Login(Policy p = kSubmission, std::vector<std::string> caps = {}) {
  return [p, caps] { return login(makePop3Login(p, {caps})); };
}
Make imapFilter(Policy p = kSubmission) {
  return [p] { return filter(makeImapFilter(p), "* OK ready\r\n"); };
}
Make imapLogin(Policy p = kSubmission) {
  return [p] { return login(makeImapLogin(p, {})); };
}

// Every byte SPEC §5.1 calls a control byte in a command line: 0x00-0x1F but HTAB, and 0x7F.
std::vector<char> controlBytes() {
  std::vector<char> bytes;
  for (int b = 0; b < 0x20; ++b) {
    if (b != '\t' && b != '\n') {
      bytes.push_back(static_cast<char>(b));
    }
  }
  bytes.push_back('\x7f');
  return bytes;
}

std::string with(std::string_view before, char separator, std::string_view after) {
  return std::string(before) + separator + std::string(after) + "\r\n";
}

// ---- control bytes ---------------------------------------------------------------------------

// Finding 1: Postfix splits verbs on VT, FF and CR too; "XCLIENT\vADDR=..." reached it, and
// "AUTH\vPLAIN"/"MAIL\vFROM" passed a submission port before TLS.
TEST(ControlBytes, SmtpRefusesThemInEveryDialogue) {
  for (char c : controlBytes()) {
    for (const char* verb : {"XCLIENT", "AUTH", "MAIL", "DATA", "NOOP", "EHLO"}) {
      std::string line = with(verb, c, "ADDR=10.9.8.7 NAME=spoofed.example");
      SCOPED_TRACE(testing::Message() << verb << " + byte " << static_cast<int>(c));
      for (const Make& make : {smtpFilter(), smtpFilter(kPlain), smtpAfterLogin()}) {
        Outcome o = runSplit(make, "EHLO a\r\n" + line);
        EXPECT_EQ(o.toBackend, "EHLO a\r\n");
        EXPECT_FALSE(o.close);
      }
      Outcome o = runSplit(smtpLogin(), line);
      EXPECT_EQ(o.toClient, "500 5.5.2 Error: invalid characters in command\r\n");
    }
  }
}

// The refusal keeps its place among replies still owed by the server (PIPELINING), and the
// session goes on.
TEST(ControlBytes, SmtpRefusalIsAnsweredInOrder) {
  Subject s = smtpFilter()();
  Outcome o;
  s.feed("EHLO a\r\nXCLIENT\x0b"
         "ADDR=10.9.8.7\r\nNOOP\r\n",
         o);
  EXPECT_EQ(o.toBackend, "EHLO a\r\nNOOP\r\n");
  EXPECT_EQ(o.toClient, "");
  s.backend("250-mx\r\n250 PIPELINING\r\n250 2.0.0 Ok\r\n", o);
  EXPECT_EQ(o.toClient, "250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
                        "500 5.5.2 Error: invalid characters in command\r\n250 2.0.0 Ok\r\n");
}

// Finding 1, last part: "DATA\v" was relayed, postern missed the body, and its bare-LF defence
// never ran.
TEST(ControlBytes, DataWithAControlByteNeverStartsABody) {
  Subject s = smtpFilter(kPlain)();
  Outcome o;
  s.feed("EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", o);
  s.backend("250 mx\r\n250 ok\r\n250 ok\r\n", o);
  s.feed("DATA\x0b\r\n", o);
  EXPECT_EQ(o.toBackend, "EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n");
  EXPECT_NE(o.toClient.find("500 5.5.2 Error: invalid characters in command"), std::string::npos);
  Outcome data;
  s.feed("DATA\r\n", data);
  s.backend("354 go\r\n", data);
  s.feed("x\n.\nMAIL FROM:<e@f>\r\n", data);
  EXPECT_TRUE(data.close); // the smuggling defence runs: the body is parsed
  EXPECT_NE(data.toClient.find("bare <LF>"), std::string::npos);
}

TEST(ControlBytes, Pop3RefusesThemInEveryDialogue) {
  for (char c : controlBytes()) {
    for (const char* verb : {"USER", "PASS", "AUTH", "XCLIENT", "CAPA", "STLS"}) {
      SCOPED_TRACE(testing::Message() << verb << " + byte " << static_cast<int>(c));
      std::string line = with(verb, c, "ADDR=10.9.8.6");
      for (const Make& make : {pop3Filter(), pop3Filter(kPlain)}) {
        Outcome o = runSplit(make, line);
        EXPECT_EQ(o.toBackend, "");
        EXPECT_EQ(o.toClient, "-ERR Invalid characters in command\r\n");
      }
      EXPECT_EQ(runSplit(pop3Login(), line).toClient, "-ERR Invalid characters in command\r\n");
    }
  }
}

TEST(ControlBytes, ImapRefusesThemInEveryDialogue) {
  for (char c : controlBytes()) {
    for (const char* verb : {"LOGIN", "AUTHENTICATE", "ID", "NOOP", "STARTTLS"}) {
      SCOPED_TRACE(testing::Message() << verb << " + byte " << static_cast<int>(c));
      std::string line = with(std::string("a1 ") + verb, c, "alice secret");
      for (const Make& make : {imapFilter(), imapFilter(kPlain), imapLogin()}) {
        Outcome o = runSplit(make, line);
        EXPECT_EQ(o.toBackend, "");
        EXPECT_EQ(o.toClient, "a1 BAD Invalid characters in command\r\n");
        EXPECT_FALSE(o.close);
      }
    }
  }
  // HTAB is no control byte, but no IMAP separator either: "a1\tLOGIN" has no valid tag.
  EXPECT_EQ(runSplit(imapFilter(kPlain), "a1\tLOGIN x y\r\n").toClient, "* BAD Invalid tag\r\n");
}

// A control byte in a line the server is waiting for (a SASL response, the rest of a command
// after a literal) cannot be answered locally without leaving the two sides out of step: the
// session ends.
TEST(ControlBytes, MidCommandTheSessionEnds) {
  Subject imap = imapFilter(kImplicit)();
  Outcome o;
  imap.feed("a AUTHENTICATE PLAIN\r\n", o);
  imap.backend("+ \r\n", o);
  imap.feed("AGFsaWNlAHg=\x0b\r\n", o);
  EXPECT_TRUE(o.close);
  EXPECT_EQ(o.toBackend, "a AUTHENTICATE PLAIN\r\n");

  Subject pop3 = pop3Filter(kImplicit)();
  Outcome p;
  pop3.feed("AUTH PLAIN\r\n", p);
  pop3.backend("+ \r\n", p);
  pop3.feed("AGFsaWNlAHg=\x01\r\n", p);
  EXPECT_TRUE(p.close);
  EXPECT_EQ(p.toBackend, "AUTH PLAIN\r\n");
}

// ---- literals and the pre-authentication budget ------------------------------------------------

// Finding 2: {18446744073709551615+} wrapped the command-size counter and every following byte
// was kept; the synchronising form even got "+ Ready".
TEST(Literals, HugeCountsAreRefusedBeforeAByteIsTaken) {
  for (const char* announce :
       {"{18446744073709551615+}", "{18446744073709551615}", "{18446744073709551616}",
        "{99999999999999999999999+}", "{8193+}", "{8180}"}) {
    SCOPED_TRACE(announce);
    std::string line = std::string("a LOGIN alice ") + announce + "\r\n";
    for (const Make& make : {imapLogin(kImplicit), imapFilter(kImplicit)}) {
      Outcome o = runSplit(make, line + std::string(100, 'x'));
      EXPECT_TRUE(o.close);
      EXPECT_TRUE(o.toClient.starts_with("* BYE ")) << o.toClient;
      EXPECT_EQ(o.toClient.find("+ "), std::string::npos);
      EXPECT_EQ(o.toBackend, "");
    }
  }
}

TEST(Literals, OneCommandIsBoundedLiteralsIncluded) {
  Policy small = policy(config::TlsMode::Implicit, false, 64);
  // Each literal fits, together they do not.
  std::string script =
      "a LOGIN {20+}\r\n" + std::string(20, 'u') + " {30+}\r\n" + std::string(30, 'p') + "\r\n";
  Outcome front = runSplit(imapLogin(small), script);
  EXPECT_TRUE(front.close);
  EXPECT_EQ(front.toClient, "* BYE Literal too large\r\n");
  // The filter sends each {n+} on as {n} and waits for the server's "+" (which the client
  // never sees) before the literal's bytes go.
  Subject s = imapFilter(small)();
  Outcome o;
  s.feed(script, o);
  EXPECT_EQ(o.toBackend, "a LOGIN {20}\r\n");
  s.backend("+ go\r\n", o);
  EXPECT_TRUE(o.close);
  EXPECT_EQ(o.toClient, "* BYE Literal too large\r\n");
  // Within the budget they pass.
  Subject fits = imapFilter(small)();
  Outcome f;
  fits.feed("a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", f);
  fits.backend("+ go\r\n", f);
  fits.backend("+ go\r\n", f);
  EXPECT_EQ(f.toBackend, "a LOGIN {5}\r\nalice {6}\r\nsecret\r\n");
  EXPECT_EQ(f.toClient, "");
  EXPECT_FALSE(f.close);
}

// Review finding: a line the server cannot parse is answered with BAD and skipped to its end
// only; a {n+} literal after it, forwarded at once, ran there as commands (an ID claiming an
// address, a LOGIN past require_tls). Now the bytes wait for the server's "+" and are dropped
// with their command when it says BAD.
TEST(Literals, ANonSynchronisingLiteralWaitsForTheServer) {
  // The literal's bytes are a whole command: the rest of the literal-bearing command is empty.
  const std::string payload = "b ID (\"x-originating-ip\" \"6.6.6.6\")\r\n";
  const std::string count = std::to_string(payload.size() - 2);
  for (std::string head : {"a NOOP \"x {" + count + "+}\r\n", "a NO%OP {" + count + "+}\r\n"}) {
    Subject s = imapFilter(kPlain)();
    Outcome o;
    s.feed(head + payload, o);
    std::string sent = head;
    sent.replace(sent.find("+}"), 2, "}");
    EXPECT_EQ(o.toBackend, sent);
    s.backend("a BAD Error in IMAP command received by server.\r\n", o);
    EXPECT_EQ(o.toClient, "a BAD Error in IMAP command received by server.\r\n");
    Outcome after;
    s.feed("c NOOP\r\n", after);
    EXPECT_EQ(after.toBackend, "c NOOP\r\n") << "the literal was dropped, nothing else";
    EXPECT_EQ(o.toBackend, sent) << "nothing of the literal went on";
  }
  // AUTHENTICATE takes no literal at all (Dovecot reads its line's rest as the response).
  Outcome auth =
      runSplit(imapFilter(kImplicit), "a AUTHENTICATE PLAIN {38+}\r\n" + std::string(38, 'x'));
  EXPECT_EQ(auth.toBackend, "");
  EXPECT_EQ(auth.toClient, "a BAD AUTHENTICATE takes no literal\r\n");
}

// Review finding: with a tag reused while its first command was outstanding, the first
// answer ended the second command's wait for "+" (or a SASL exchange) early.
TEST(Pipelines, ATagInUseIsRefused) {
  Subject s = imapFilter(kPlain)();
  Outcome o;
  s.feed("b NOOP\r\nb NOOP {14}\r\n", o);
  EXPECT_EQ(o.toBackend, "b NOOP\r\n");
  EXPECT_EQ(o.toClient, "b BAD Tag already in use\r\n");
  // Tags Dovecot does not take are refused too: "]" and over-long ones.
  EXPECT_EQ(runSplit(imapFilter(kPlain), "a] NOOP\r\n").toClient, "* BAD Invalid tag\r\n");
  EXPECT_EQ(runSplit(imapFilter(kPlain), std::string(65, 't') + " NOOP\r\n").toClient,
            "* BAD Invalid tag\r\n");
}

// Review finding: Postfix before 3.9 drops the CRs before an LF, so ".\r\r\n" ended its message
// while postern still relayed a body; what followed ran as commands (XCLIENT).
TEST(ControlBytes, ABareCrInABodyIsRefused) {
  Subject s = smtpFilter(kPlain)();
  Outcome o;
  s.feed("EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n", o);
  s.backend("250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n", o);
  Outcome body;
  s.feed("hi\r\n.\r\r\nXCLIENT ADDR=127.0.0.1\r\n", body);
  EXPECT_TRUE(body.close);
  EXPECT_EQ(body.toClient, "554 5.5.2 Error: bare <CR> received\r\n");
  EXPECT_EQ(body.toBackend.find("XCLIENT"), std::string::npos);
}

TEST(Literals, ReadTheSameByEveryone) {
  using imap::Literal;
  EXPECT_EQ(imap::literalAtEnd("a {5}").kind, Literal::Kind::Announced);
  EXPECT_EQ(imap::literalAtEnd("a {5+}").size, 5U);
  EXPECT_FALSE(imap::literalAtEnd("a {5+}").synchronising);
  EXPECT_EQ(imap::literalAtEnd("a {18446744073709551615}").size, ~std::size_t{0});
  for (const char* invalid : {"a {}", "a {+}", "a {5a}", "a {18446744073709551616}", "a {-1}"}) {
    EXPECT_EQ(imap::literalAtEnd(invalid).kind, Literal::Kind::Invalid) << invalid;
  }
  EXPECT_EQ(imap::literalAtEnd("a }").kind, Literal::Kind::None);
  ByteBudget budget(100);
  EXPECT_TRUE(budget.take(60));
  EXPECT_FALSE(budget.take(~std::size_t{0})); // never wraps
  EXPECT_FALSE(budget.take(41));
  EXPECT_TRUE(budget.take(40));
  EXPECT_EQ(budget.used(), 100U);
}

// ---- pipelines ------------------------------------------------------------------------------

std::string noops(int count) {
  std::string script;
  for (int i = 0; i < count; ++i) {
    script += "t" + std::to_string(i) + " NOOP\r\n";
  }
  return script;
}

// Finding 3: IMAP pipelines were unbounded and each answer searched the whole queue.
TEST(Pipelines, ImapIsCappedAtAThousand) {
  Subject s = imapFilter(kImplicit)();
  Outcome o;
  s.feed(noops(1001), o);
  EXPECT_TRUE(o.close);
  EXPECT_EQ(o.toClient, "* BYE Too many pipelined commands\r\n");
  EXPECT_EQ(o.toBackend, noops(1000));
}

TEST(Pipelines, ImapAnswersInOrderKeepTheQueueMoving) {
  Subject s = imapFilter(kImplicit)();
  Outcome o;
  for (int round = 0; round < 5; ++round) {
    s.feed(noops(1000), o);
    std::string answers;
    for (int i = 0; i < 1000; ++i) {
      answers += "t" + std::to_string(i) + " OK NOOP done\r\n";
    }
    s.backend(answers, o);
    ASSERT_FALSE(o.close) << round;
  }
  // Out-of-order answers still find their command.
  s.feed("x NOOP\r\ny NOOP\r\n", o);
  s.backend("y OK\r\nx OK\r\n", o);
  EXPECT_FALSE(o.close);
}

TEST(Pipelines, Pop3AndSmtpAreCappedToo) {
  std::string pop3;
  for (int i = 0; i < 1001; ++i) {
    pop3 += "NOOP\r\n";
  }
  Outcome p;
  pop3Filter(kImplicit)().feed(pop3, p);
  EXPECT_TRUE(p.close);
  EXPECT_EQ(p.toClient, "-ERR Too many pipelined commands\r\n");
  std::string smtp = "EHLO a\r\n";
  for (int i = 0; i < 1000; ++i) {
    smtp += "NOOP\r\n";
  }
  Outcome s;
  smtpFilter(kImplicit)().feed(smtp, s);
  EXPECT_TRUE(s.close);
  EXPECT_EQ(s.toClient, "421 4.7.0 Error: too many pipelined commands\r\n");
}

// A line pipelined after a SASL command waits for the server's challenge; bounded like a line.
TEST(Pipelines, LinesHeldForASaslChallengeAreBounded) {
  Policy small = policy(config::TlsMode::Implicit, false, 64);
  for (const Make& make : {Make([&] { return filter(makeSmtpFilter(small), "220 mx\r\n"); }),
                           Make([&] { return filter(makePop3Filter(small), "+OK\r\n"); }),
                           Make([&] { return filter(makeImapFilter(small), "* OK\r\n"); })}) {
    Subject s = make();
    Outcome o;
    s.feed("EHLO a\r\n", o); // (a command in POP3 and IMAP too, answered by the server)
    s.backend("250 mx\r\n", o);
    Outcome held;
    s.feed("a AUTH PLAIN\r\nAUTH PLAIN\r\na AUTHENTICATE PLAIN\r\n", held);
    s.feed(std::string(200, 'x'), held);
    EXPECT_TRUE(held.close);
  }
}

// ---- address claims ---------------------------------------------------------------------------

// Finding 4: POP3 XCLIENT and IMAP ID x-originating-ip reached a Dovecot that trusts postern.
TEST(AddressClaims, Pop3XclientIsRefusedAndHidden) {
  for (const char* line : {"XCLIENT ADDR=10.9.8.6\r\n", "xclient addr=10.9.8.6\r\n",
                           "XOIP 10.9.8.6\r\n", "xoip 10.9.8.6\r\n"}) {
    Outcome o = runSplit(pop3Filter(kPlain), line);
    EXPECT_EQ(o.toBackend, "");
    EXPECT_EQ(o.toClient, "-ERR Command not permitted\r\n");
  }
  Outcome tab = runSplit(pop3Filter(kPlain), "XClient\tADDR=10.9.8.6\r\n");
  EXPECT_EQ(tab.toBackend, "");
  EXPECT_EQ(tab.toClient, "-ERR Syntax error in command\r\n");
  Subject s = pop3Filter(kPlain)();
  Outcome o;
  s.feed("CAPA\r\n", o);
  s.backend("+OK\r\nTOP\r\nXCLIENT\r\nUSER\r\nSASL PLAIN\r\n.\r\n", o);
  EXPECT_EQ(o.toClient, "+OK\r\nTOP\r\nUSER\r\nSASL PLAIN\r\n.\r\n");
  // Dovecot offers it in its greeting to a trusted address: that code goes too.
  Subject greeted = filter(makePop3Filter(kPlain), "");
  Outcome greeting;
  greeted.backend("+OK [XCLIENT] Dovecot (Debian) ready.\r\n", greeting);
  EXPECT_EQ(greeting.toClient, "+OK Dovecot (Debian) ready.\r\n");
  EXPECT_EQ(runSplit(pop3Login(), "XCLIENT ADDR=10.9.8.6\r\n").toClient,
            "-ERR Command not permitted\r\n");
  Subject front = login(makePop3Login(kImplicit, {{"TOP", "XCLIENT", "USER", "SASL PLAIN"}}));
  Outcome capa;
  front.feed("CAPA\r\n", capa);
  EXPECT_EQ(capa.toClient.find("XCLIENT"), std::string::npos) << capa.toClient;
}

TEST(AddressClaims, SmtpXclientAndXforwardAreRefusedEverywhere) {
  for (const char* verb : {"XCLIENT", "xclient", "XForward", "XFORWARD"}) {
    for (char separator : {' ', '\t'}) {
      std::string line = with(verb, separator, "ADDR=10.9.8.7");
      for (const Make& make : {smtpFilter(kPlain), smtpAfterLogin()}) {
        Outcome o = runSplit(make, "EHLO a\r\n" + line);
        EXPECT_EQ(o.toBackend, "EHLO a\r\n");
      }
    }
  }
  Subject s = smtpFilter(kPlain)();
  Outcome o;
  s.feed("EHLO a\r\n", o);
  s.backend("250-mx\r\n250-XCLIENT ADDR NAME\r\n250-XFORWARD ADDR\r\n250-BINARYMIME\r\n"
            "250-CHUNKING\r\n250 8BITMIME\r\n",
            o);
  EXPECT_EQ(o.toClient, "250-mx\r\n250 8BITMIME\r\n");
  EXPECT_EQ(runSplit(smtpLogin(), "XCLIENT ADDR=10.9.8.7\r\n").toClient,
            "550 5.7.1 Error: not permitted\r\n");
  // The login dialogue hides the same set (BINARYMIME was shown there).
  Subject front = login(makeSmtpLogin(kImplicit, {{"XCLIENT ADDR", "BINARYMIME", "8BITMIME"}}));
  Outcome ehlo;
  front.feed("EHLO a\r\n", ehlo);
  EXPECT_EQ(ehlo.toClient.find("BINARYMIME"), std::string::npos) << ehlo.toClient;
  EXPECT_EQ(ehlo.toClient.find("XCLIENT"), std::string::npos) << ehlo.toClient;
}

TEST(AddressClaims, ImapIdIsRelayedWithoutThem) {
  Outcome o = runSplit(imapFilter(kPlain),
                       "a ID (\"name\" \"mutt\" \"x-originating-ip\" \"10.9.8.6\" "
                       "\"X-Connected-Port\" \"1\" \"x-forward-foo\" NIL \"version\" NIL)\r\n"
                       "b ID (\"x-originating-ip\" \"10.9.8.6\")\r\nc ID NIL\r\n");
  EXPECT_EQ(o.toBackend, "a ID (\"name\" \"mutt\" \"version\" NIL)\r\nb ID NIL\r\nc ID NIL\r\n");
  // What cannot be read as postern reads it is refused: a literal, an escape only some servers
  // take, an atom.
  for (const char* line : {"a ID (\"x-originating-ip\" {8+}\r\n10.9.8.6)\r\n",
                           "a ID (\"x-originating\\-ip\" \"10.9.8.6\")\r\n",
                           "a ID (x-originating-ip \"10.9.8.6\")\r\n"}) {
    Outcome refused = runSplit(imapFilter(kPlain), line);
    EXPECT_EQ(refused.toBackend, "") << line;
    EXPECT_TRUE(refused.toClient.starts_with("a BAD")) << line;
  }
  // The login dialogue answers ID itself.
  Outcome front = runSplit(imapLogin(), "a ID (\"x-originating-ip\" \"10.9.8.6\")\r\n");
  EXPECT_EQ(front.toClient, "* ID NIL\r\na OK ID completed.\r\n");
}

// A line pipelined after an AUTHENTICATE/AUTH is SASL data only once the server asked for it;
// after a refusal it is a command, read and checked as one.
TEST(AddressClaims, NothingSmuggledBehindARefusedSaslExchange) {
  Subject imap = imapFilter(kPlain)();
  Outcome o;
  imap.feed("a AUTHENTICATE FOO\r\nb ID (\"x-originating-ip\" \"10.9.8.6\")\r\n", o);
  EXPECT_EQ(o.toBackend, "a AUTHENTICATE FOO\r\n");
  imap.backend("a NO Unsupported mechanism\r\n", o);
  EXPECT_EQ(o.toBackend, "a AUTHENTICATE FOO\r\nb ID NIL\r\n");

  Subject pop3 = pop3Filter(kPlain)();
  Outcome p;
  pop3.feed("AUTH FOO\r\nXCLIENT ADDR=10.9.8.6\r\n", p);
  EXPECT_EQ(p.toBackend, "AUTH FOO\r\n");
  pop3.backend("-ERR Unsupported mechanism\r\n", p);
  EXPECT_EQ(p.toBackend, "AUTH FOO\r\n");
  EXPECT_EQ(p.toClient, "-ERR Unsupported mechanism\r\n-ERR Command not permitted\r\n");
}

// ---- greetings ----------------------------------------------------------------------------------

// Finding 6: a code after the start of the greeting survived, and one dialogue read a
// mid-line "[CAPABILITY" as a code while another read it as text.
TEST(Greetings, CodesGoWhereverTheyStand) {
  Subject s = filter(makeImapFilter(kSubmission), "");
  Outcome o;
  s.backend("* OK [ALERT] x [CAPABILITY IMAP4rev1 AUTH=PLAIN XEVILCAP] hi\r\n", o);
  EXPECT_EQ(o.toClient, "* OK x hi\r\n");
  Outcome code;
  Subject t = filter(makeImapFilter(kSubmission), "");
  t.backend("* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Dovecot [REFERRAL imap://x/] ready.\r\n", code);
  EXPECT_EQ(code.toClient, "* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n");
  // Every reader agrees: a "[CAPABILITY" that is not the code is no capability list.
  EXPECT_FALSE(imap::capabilities("* OK [ALERT] x [CAPABILITY IMAP4rev1 XEVILCAP] hi"));
  EXPECT_FALSE(imap::capabilities("* OK x [CAPABILITY IMAP4rev1 XEVILCAP] hi"));
  EXPECT_EQ(*imap::capabilities("* OK [CAPABILITY IMAP4rev1 X] hi"),
            (std::vector<std::string>{"IMAP4rev1", "X"}));
  EXPECT_EQ(*imap::capabilities("a1 OK [CAPABILITY A B] done"),
            (std::vector<std::string>{"A", "B"}));
  EXPECT_EQ(*imap::capabilities("* CAPABILITY A B"), (std::vector<std::string>{"A", "B"}));
  EXPECT_FALSE(imap::capabilities("* CAPABILITYX A"));
  // A mid-line code in a tagged reply is text too.
  Subject u = filter(makeImapFilter(kSubmission), "* OK ready\r\n");
  Outcome tagged;
  u.feed("a NOOP\r\n", tagged);
  u.backend("a OK done [CAPABILITY XEVILCAP AUTH=PLAIN]\r\n", tagged);
  EXPECT_EQ(tagged.toClient, "a OK done [CAPABILITY XEVILCAP AUTH=PLAIN]\r\n");
}

// ---- SMTP after authentication -----------------------------------------------------------------

// Finding 7: after 235 the pre-authentication line limit still refused a 1,500-byte line.
TEST(SmtpAfterAuthentication, LinesUpTo64KiBAreRelayed) {
  Policy small = policy(config::TlsMode::Implicit, false, 1000);
  Subject s = filter(makeSmtpFilter(small), "220 mx\r\n");
  Outcome o;
  s.feed("EHLO a\r\nAUTH PLAIN AGFsaWNlAHg=\r\n", o);
  s.backend("250 mx\r\n235 2.7.0 ok\r\n", o);
  std::string rcpt = "RCPT TO:<" + std::string(1500, 'r') + "@example>\r\n";
  s.feed(rcpt, o);
  EXPECT_FALSE(o.close);
  EXPECT_TRUE(o.toBackend.ends_with(rcpt));
  std::string huge = "RCPT TO:<" + std::string(70000, 'r') + "@example>\r\n";
  Outcome refused;
  s.feed(huge, refused);
  EXPECT_TRUE(refused.close);
  EXPECT_EQ(refused.toClient, "500 5.5.2 Error: line too long\r\n");
  // The same for a session login mode handed over.
  Outcome after = runSplit(smtpAfterLogin(), rcpt);
  EXPECT_EQ(after.toBackend, rcpt);
  // And still parsed: XCLIENT stays refused.
  Outcome x = runSplit(smtpAfterLogin(), "XCLIENT ADDR=10.9.8.7\r\n");
  EXPECT_EQ(x.toBackend, "");
}

} // namespace
} // namespace protocol
