// ManageSieve (SPEC §12): the syntax module, the passthrough filter (capability lists in the
// greeting, after CAPABILITY and unasked after STARTTLS; require_tls; STARTTLS injection;
// literals; SASL exchanges), backend STARTTLS, the health probe and login mode with its replay.
// Every filter script also runs split at every byte, both directions.
#include "filter_test_support.h"
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/registry.h"
#include "proxy/protocol/sieve/sieve.h"
#include "proxy/protocol/sieve/sieve_syntax.h"

namespace protocol {
namespace {

using testing::Driver;
using testing::expectSplitInvariant;
using testing::starttlsPolicy;

// Dovecot 2.3's managesieve-login greeting (the same lines as its CAPABILITY answer).
constexpr std::string_view kGreeting = "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                                       "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                                       "\"NOTIFY\" \"mailto\"\r\n"
                                       "\"SASL\" \"PLAIN LOGIN\"\r\n"
                                       "\"STARTTLS\"\r\n"
                                       "\"VERSION\" \"1.0\"\r\n"
                                       "OK \"Dovecot ready.\"\r\n";

constexpr std::string_view kListWithoutSasl = "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                                              "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                                              "\"NOTIFY\" \"mailto\"\r\n"
                                              "\"VERSION\" \"1.0\"\r\n";

const std::string kPlain = "AGFsaWNlAHNlY3JldA=="; // \0alice\0secret

Policy implicitPolicy() {
  Policy policy;
  policy.listenerTls = config::TlsMode::Implicit;
  return policy;
}

TEST(SieveSyntax, CommandLines) {
  auto parsed = sieve::parseCommandLine("AUTHENTICATE \"PLAIN\" \"abc\"\r\n");
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed.command->verb, "AUTHENTICATE");
  EXPECT_EQ(parsed.command->arguments, "\"PLAIN\" \"abc\"");
  EXPECT_EQ(sieve::parseCommandLine("STARTTLS\t").error, sieve::CommandError::ControlByte);
  EXPECT_EQ(sieve::parseCommandLine("STARTTLS\v").error, sieve::CommandError::ControlByte);
  EXPECT_EQ(sieve::parseCommandLine(" STARTTLS").error, sieve::CommandError::Malformed);
  EXPECT_EQ(sieve::parseCommandLine("\"STARTTLS\"").error, sieve::CommandError::Malformed);
  EXPECT_FALSE(sieve::parseCommandLine(""));
}

TEST(SieveSyntax, ResponsesAndCapabilities) {
  auto ok = sieve::parseResponse("OK (SASL \"a)b\") \"done\"");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, "OK");
  EXPECT_EQ(ok->code, "SASL \"a)b\"");
  EXPECT_EQ(ok->text, "\"done\"");
  EXPECT_TRUE(sieve::isResponse("no"));
  EXPECT_TRUE(sieve::isResponse("BYE \"x\""));
  EXPECT_FALSE(sieve::isResponse("\"OK\""));
  EXPECT_FALSE(sieve::isResponse("OKAY"));
  EXPECT_FALSE(sieve::parseResponse("NO (unclosed \"x\""));
  auto sasl = sieve::parseCapability("\"SASL\" \"PLAIN LOGIN\"");
  ASSERT_TRUE(sasl);
  EXPECT_EQ(sasl->name, "SASL");
  EXPECT_EQ(sieve::valueWords(*sasl), (std::vector<std::string>{"PLAIN", "LOGIN"}));
  auto bare = sieve::parseCapability("\"STARTTLS\"");
  ASSERT_TRUE(bare);
  EXPECT_FALSE(bare->value);
  EXPECT_FALSE(sieve::parseCapability("\"SASL\"  \"PLAIN\""));
  EXPECT_FALSE(sieve::parseCapability("\"SASL\" \"PLAIN\" x"));
  EXPECT_EQ(sieve::capabilityLine("SASL", "PLAIN"), "\"SASL\" \"PLAIN\"\r\n");
  EXPECT_EQ(sieve::reply("NO", "a \"b\"", "TRYLATER"), "NO (TRYLATER) \"a \\\"b\\\"\"\r\n");
}

TEST(SieveFilter, GreetingBeforeTlsOffersStarttlsAndHidesSasl) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  EXPECT_EQ(d.backend(kGreeting).toClient,
            std::string(kListWithoutSasl) + "\"STARTTLS\"\r\nOK \"Dovecot ready.\"\r\n");
}

TEST(SieveFilter, WithoutRequireTlsSaslStaysBeforeTls) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  std::string greeting = d.backend(kGreeting).toClient;
  EXPECT_NE(greeting.find("\"SASL\" \"PLAIN LOGIN\"\r\n"), std::string::npos);
  EXPECT_NE(greeting.find("\"STARTTLS\"\r\n"), std::string::npos);
}

TEST(SieveFilter, ImplicitTlsHidesTheServersStarttls) {
  Driver d(makeSieveFilter(implicitPolicy()));
  EXPECT_EQ(d.backend(kGreeting).toClient, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                                           "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                                           "\"NOTIFY\" \"mailto\"\r\n"
                                           "\"SASL\" \"PLAIN LOGIN\"\r\n"
                                           "\"VERSION\" \"1.0\"\r\n"
                                           "OK \"Dovecot ready.\"\r\n");
}

TEST(SieveFilter, StarttlsIsPosternsAndTheListComesUnaskedAfterIt) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto go = d.client("STARTTLS\r\n");
  EXPECT_EQ(go.toClient, "OK \"Begin TLS negotiation now.\"\r\n");
  EXPECT_TRUE(go.startTls);
  EXPECT_TRUE(go.toBackend.empty());
  EXPECT_EQ(go.events, std::vector<Event>{Event::StartTlsOk});
  // RFC 5804 §2.2: the capabilities again, as TLS shows them: SASL now, no STARTTLS.
  EXPECT_EQ(d.tlsStarted().toClient, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                                     "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                                     "\"NOTIFY\" \"mailto\"\r\n"
                                     "\"SASL\" \"PLAIN LOGIN\"\r\n"
                                     "\"VERSION\" \"1.0\"\r\n"
                                     "OK \"TLS negotiation successful.\"\r\n");
  auto again = d.client("STARTTLS\r\n");
  EXPECT_EQ(again.toClient, "NO \"TLS is already active\"\r\n");
  EXPECT_EQ(again.events, std::vector<Event>{Event::StartTlsRefused});
}

TEST(SieveFilter, CapabilityAnswersAreRewritten) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  EXPECT_EQ(d.client("capability\r\n").toBackend, "capability\r\n");
  std::string answer(kGreeting.substr(0, kGreeting.rfind("OK")));
  EXPECT_EQ(d.backend(answer + "OK \"Capability completed.\"\r\n").toClient,
            std::string(kListWithoutSasl) + "\"STARTTLS\"\r\nOK \"Capability completed.\"\r\n");
}

TEST(SieveFilter, AuthenticateBeforeTlsIsRefused) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto out = d.client("AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  EXPECT_EQ(out.toClient, "NO (ENCRYPT-NEEDED) \"Use STARTTLS before authenticating\"\r\n");
  EXPECT_TRUE(out.toBackend.empty());
  EXPECT_EQ(out.events, std::vector<Event>{Event::AuthRefusedPlaintext});
  // A refused AUTHENTICATE's literal is skipped, never read as commands.
  auto literal = d.client("AUTHENTICATE \"PLAIN\" {20+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\nNOOP\r\n");
  EXPECT_EQ(literal.toBackend, "NOOP\r\n");
}

TEST(SieveFilter, StarttlsInjectionIsRefused) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto out = d.client("STARTTLS\r\nAUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  EXPECT_EQ(out.toClient, "BYE \"Commands pipelined after STARTTLS\"\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_FALSE(out.startTls);
  EXPECT_TRUE(out.toBackend.empty());
  EXPECT_EQ(out.events, std::vector<Event>{Event::StartTlsInjection});
}

TEST(SieveFilter, StarttlsWaitsForEarlierAnswersAndRefusesWhatFollowsIt) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  auto first = d.client("NOOP\r\nSTARTTLS\r\n");
  EXPECT_EQ(first.toBackend, "NOOP\r\n");
  EXPECT_FALSE(first.startTls);
  auto answered = d.backend("OK \"NOOP completed\"\r\n");
  EXPECT_EQ(answered.toClient, "OK \"NOOP completed\"\r\nOK \"Begin TLS negotiation now.\"\r\n");
  EXPECT_TRUE(answered.startTls);

  Driver late(makeSieveFilter(starttlsPolicy()));
  late.backend(kGreeting);
  late.client("NOOP\r\nSTARTTLS\r\n");
  auto injected = late.client("LOGOUT\r\n");
  EXPECT_TRUE(injected.close);
  EXPECT_EQ(injected.events, std::vector<Event>{Event::StartTlsInjection});
}

TEST(SieveFilter, ControlBytesAndMalformedLinesAreAnsweredNotRelayed) {
  for (std::string line : {std::string("STARTTLS\v\r\n"), std::string("LOGOUT\x7f\r\n"),
                           std::string("NOOP\t\"x\"\r\n"), std::string("NO\0OP\r\n", 7)}) {
    Driver d(makeSieveFilter(starttlsPolicy(false)));
    d.backend(kGreeting);
    auto out = d.client(line);
    EXPECT_EQ(out.toClient, sieve::kInvalidCharacters) << line;
    EXPECT_TRUE(out.toBackend.empty()) << line;
    EXPECT_FALSE(out.close) << line;
  }
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto spaced = d.client(" STARTTLS\r\n");
  EXPECT_EQ(spaced.toClient, "NO \"Syntax error in command\"\r\n");
  EXPECT_TRUE(spaced.toBackend.empty());
  // A control byte on a line whose literal follows at once: its bytes would come as commands.
  auto literal = d.client("PUTSCRIPT \"a\x01\" {5+}\r\n");
  EXPECT_EQ(literal.toClient, sieve::kInvalidCharactersBye);
  EXPECT_TRUE(literal.close);
}

TEST(SieveFilter, ClientAddressClaimsAreRefused) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto out = d.client("xclient ADDR=192.0.2.9 PORT=1\r\n");
  EXPECT_EQ(out.toClient, "NO \"Command not permitted\"\r\n");
  EXPECT_TRUE(out.toBackend.empty());
}

TEST(SieveFilter, LiteralsAreBoundedAndSynchronisingOnesRefused) {
  Policy policy = starttlsPolicy(false);
  policy.maxLineLength = 64;
  Driver d(makeSieveFilter(policy));
  d.backend(kGreeting);
  auto fits = d.client("NOOP {10+}\r\nkeep; tag \r\n");
  EXPECT_EQ(fits.toBackend, "NOOP {10+}\r\nkeep; tag \r\n");
  d.backend("OK (TAG \"keep; tag \") \"Done\"\r\n");
  // RFC 5804 §4: "{n}" is the server's; skipped as the server would read its bytes.
  auto sync = d.client("NOOP {6}\r\nLOGOUT\r\nNOOP\r\n");
  EXPECT_EQ(sync.toClient, "NO \"Synchronizing literals are not allowed\"\r\n");
  EXPECT_EQ(sync.toBackend, "NOOP\r\n");
  d.backend("OK \"NOOP Completed\"\r\n");
  auto big = d.client("NOOP {18446744073709551615+}\r\n");
  EXPECT_EQ(big.toClient, sieve::kLiteralTooLarge);
  EXPECT_TRUE(big.close);
  EXPECT_TRUE(big.toBackend.empty());
  Driver wrap(makeSieveFilter(policy));
  wrap.backend(kGreeting);
  auto invalid = wrap.client("NOOP {99999999999999999999999+}\r\n");
  EXPECT_EQ(invalid.toClient, sieve::kInvalidLiteral);
  EXPECT_TRUE(invalid.close);
}

// Review finding: Dovecot's managesieve-login skips to the end of a line it refuses (an unknown
// verb, an atom where a string belongs, a bad escape) and reads a literal's bytes as commands.
// Before authentication such lines never reach it, and their literals are skipped here.
TEST(SieveFilter, WhatTheServerWouldRefuseMidLineNeverReachesIt) {
  const std::vector<std::pair<std::string, std::string>> smuggling = {
      {"FOO {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Authenticate first\"\r\n"},
      {"PUTSCRIPT \"a\" {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Authenticate first\"\r\n"},
      {"NOOP \"a\\q\" {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
      {"NOOP atom {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
      {"NOOP \"a\" \"b\" {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
      {"CAPABILITY {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
      {"AUTHENTICATE PLAIN {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
      {"NOOP \"\xc3\x28\" {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n", "NO \"Invalid arguments\"\r\n"},
  };
  for (const auto& [script, refusal] : smuggling) {
    Driver d(makeSieveFilter(starttlsPolicy(false)));
    d.backend(kGreeting);
    auto out = d.client(script + "NOOP\r\n");
    EXPECT_EQ(out.toBackend, "NOOP\r\n") << script;
    EXPECT_EQ(out.toClient, refusal) << script;
    EXPECT_FALSE(out.close) << script;
  }
  // The server's own STARTTLS (a plaintext listener relays it) takes no arguments either.
  Policy plain;
  Driver relayed(makeSieveFilter(plain));
  relayed.backend(kGreeting);
  auto starttls = relayed.client("STARTTLS {22+}\r\nXCLIENT ADDR=1.2.3.4\r\n\r\nNOOP\r\n");
  EXPECT_EQ(starttls.toBackend, "NOOP\r\n");
  EXPECT_EQ(starttls.toClient, "NO \"Invalid arguments\"\r\n");
  // A literal whose bytes the server could refuse mid-way: the session ends before they go.
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto out = d.client("NOOP {26+}\r\n\xff\r\nXCLIENT ADDR=1.2.3.4\r\n\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_EQ(out.toBackend, "NOOP {26+}\r\n");
  // After authentication the session is the user's: scripts go through untouched.
  Driver after(makeSieveFilter(starttlsPolicy(false)));
  after.backend(kGreeting);
  after.client("AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  EXPECT_TRUE(after.backend("OK \"Logged in.\"\r\n").relayOnly);
  std::string script = "PUTSCRIPT \"s\" {7+}\r\nk\xc3\xa9"
                       "ep;\r\n\r\n";
  EXPECT_EQ(after.client(script).toBackend, script);
}

// Second review (a differential fuzzer against Dovecot): three more ways past the filter.
TEST(SieveFilter, AnEmptyMechanismNeverReachesTheServer) {
  for (std::string script :
       {std::string("AUTHENTICATE \"\" {25+}\r\nXCLIENT ADDR=192.0.2.77\r\n\r\n"),
        std::string("AUTHENTICATE {0+}\r\n {25+}\r\nXCLIENT ADDR=192.0.2.52\r\n\r\n"),
        std::string("AUTHENTICATE \"PL AIN\"\r\n")}) {
    Driver d(makeSieveFilter(starttlsPolicy(false)));
    d.backend(kGreeting);
    auto out = d.client(script + "NOOP\r\n");
    EXPECT_EQ(out.toBackend, "NOOP\r\n") << script;
    EXPECT_EQ(out.toClient, "NO \"Invalid arguments\"\r\n") << script;
  }
}

TEST(SieveFilter, ASynchronisingLiteralAfterTheCommandsStartEndsTheSession) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto out = d.client("NOOP {0+}\r\n {0}\r\n\r\nNOOP\r\n");
  EXPECT_TRUE(out.close);
  EXPECT_EQ(out.toBackend, "NOOP {0+}\r\n"); // the server's line never goes on
  EXPECT_EQ(out.toClient, "BYE \"Synchronizing literals are not allowed\"\r\n");
}

TEST(SieveFilter, HeldLinesAreDroppedWhenTheClientEnds) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto sent = d.client("AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\nXCLIENT ADDR=192.0.2.90\r\n");
  EXPECT_EQ(sent.toBackend, "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  std::unique_ptr<Filter> filter = makeSieveFilter(starttlsPolicy(false));
  Output out;
  filter->fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()), out);
  std::string script = "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\nXCLIENT ADDR=192.0.2.90\r\n";
  out.clear();
  filter->fromClient(std::span<const char>(script.data(), script.size()), out);
  out.clear();
  filter->clientEnded(out);
  EXPECT_TRUE(out.toBackend.empty()); // the held XCLIENT line is not released at the end
}

TEST(SieveFilter, PosternsOwnAnswersKeepTheirPlaceAmongTheServers) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto sent = d.client("NOOP\r\nXCLIENT ADDR=192.0.2.1\r\nCAPABILITY {3+}\r\nabc\r\nNOOP\r\n");
  EXPECT_EQ(sent.toBackend, "NOOP\r\nNOOP\r\n");
  EXPECT_EQ(sent.toClient, ""); // nothing may overtake the first NOOP's answer
  auto first = d.backend("OK \"NOOP Completed\"\r\n");
  EXPECT_EQ(first.toClient, "OK \"NOOP Completed\"\r\nNO \"Command not permitted\"\r\n"
                            "NO \"Invalid arguments\"\r\n");
  EXPECT_EQ(d.backend("OK \"NOOP Completed\"\r\n").toClient, "OK \"NOOP Completed\"\r\n");
  // With nothing outstanding an answer goes at once.
  EXPECT_EQ(d.client("XCLIENT\r\n").toClient, "NO \"Command not permitted\"\r\n");
}

TEST(SieveFilter, NothingIsReadBeforeTheWholeGreeting) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend("\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n");
  auto early = d.client("STARTTLS\r\n");
  EXPECT_FALSE(early.startTls);
  EXPECT_TRUE(early.toClient.empty());
  auto rest = d.backend("\"STARTTLS\"\r\nOK \"Dovecot ready.\"\r\n");
  // (What waits for the greeting is bounded like a line: a fuzz finding.)
  Policy small = starttlsPolicy();
  small.maxLineLength = 64;
  Driver flood(makeSieveFilter(small));
  flood.backend("\"IMPLEMENTATION\" \"x\"\r\n");
  auto flooded = flood.client(std::string(100, 'a'));
  EXPECT_TRUE(flooded.close);
  EXPECT_EQ(flooded.toClient, sieve::kLineTooLong);
  EXPECT_TRUE(rest.startTls);
  EXPECT_TRUE(
      rest.toClient.ends_with("OK \"Dovecot ready.\"\r\nOK \"Begin TLS negotiation now.\"\r\n"))
      << rest.toClient;
}

TEST(SieveFilter, AnAnswerWhoseCodeHoldsALiteralEndsItsCommand) {
  Driver d(makeSieveFilter(starttlsPolicy()));
  d.backend(kGreeting);
  d.client("NOOP {3+}\r\nabc\r\n");
  auto answer = d.backend("OK (TAG {3}\r\nabc) \"Done\"\r\n");
  EXPECT_EQ(answer.toClient, "OK (TAG {3}\r\nabc) \"Done\"\r\n");
  // In step: the next CAPABILITY answer is rewritten (no SASL before TLS), STARTTLS not deferred.
  d.client("CAPABILITY\r\n");
  std::string list(kGreeting.substr(0, kGreeting.rfind("OK")));
  std::string rewritten = d.backend(list + "OK \"Capability completed.\"\r\n").toClient;
  EXPECT_EQ(rewritten.find("\"SASL\""), std::string::npos) << rewritten;
  EXPECT_TRUE(d.client("STARTTLS\r\n").startTls);
}

TEST(SieveFilter, TheServersLiteralsAreRelayedAsData) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  d.client("NOOP\r\n");
  // A literal holding what looks like a capability and a response: data, not lines.
  auto out = d.backend("NO {24}\r\n\"STARTTLS\"\r\nOK \"x\"\r\n\r\n");
  EXPECT_EQ(out.toClient, "NO {24}\r\n\"STARTTLS\"\r\nOK \"x\"\r\n\r\n");
}

TEST(SieveFilter, SaslWaitsForTheServersChallengeAndEndsInRelay) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto start = d.client("AUTHENTICATE \"PLAIN\"\r\n\"" + kPlain + "\"\r\n");
  EXPECT_EQ(start.toBackend, "AUTHENTICATE \"PLAIN\"\r\n"); // the response waits for the "
  auto challenge = d.backend("\"\"\r\n");
  EXPECT_EQ(challenge.toClient, "\"\"\r\n");
  EXPECT_EQ(challenge.toBackend, "\"" + kPlain + "\"\r\n");
  auto verdict = d.backend("OK \"Logged in.\"\r\n");
  EXPECT_EQ(verdict.events, std::vector<Event>{Event::Authenticated});
  EXPECT_TRUE(verdict.relayOnly);
}

TEST(SieveFilter, ALinePipelinedBehindARefusedAuthenticateIsCheckedAsACommand) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  auto sent = d.client("AUTHENTICATE \"FOO\"\r\nXCLIENT ADDR=192.0.2.9\r\n");
  EXPECT_EQ(sent.toBackend, "AUTHENTICATE \"FOO\"\r\n");
  auto refused = d.backend("NO \"Unsupported mechanism\"\r\n");
  EXPECT_EQ(refused.toClient, "NO \"Unsupported mechanism\"\r\nNO \"Command not permitted\"\r\n");
  EXPECT_TRUE(refused.toBackend.empty());
}

TEST(SieveFilter, PipelinesAreBounded) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  d.backend(kGreeting);
  std::string many;
  for (int i = 0; i < 1001; ++i) {
    many += "NOOP\r\n";
  }
  auto out = d.client(many);
  EXPECT_TRUE(out.close);
  EXPECT_EQ(out.toClient, sieve::kTooManyPipelined);
}

TEST(SieveFilter, GreetingCodesAreRemoved) {
  Driver d(makeSieveFilter(starttlsPolicy(false)));
  auto out = d.backend("\"VERSION\" \"1.0\"\r\nOK (REFERRAL \"sieve://x\") \"Ready\"\r\n");
  EXPECT_EQ(out.toClient, "\"VERSION\" \"1.0\"\r\n\"STARTTLS\"\r\nOK \"Ready\"\r\n");
}

TEST(SieveFilter, ScriptsAreTheSameWhereverTheReadsFall) {
  auto make = [] { return makeSieveFilter(starttlsPolicy()); };
  expectSplitInvariant(make, kGreeting, "CAPABILITY\r\nNOOP\r\nSTARTTLS\r\n");
  expectSplitInvariant(make, kGreeting,
                       "AUTHENTICATE \"PLAIN\" {20+}\r\nXCLIENT ADDR=1.2.3.4\r\n"
                       "\r\nPUTSCRIPT \"a\" {5}\r\nkeep;\r\nLOGOUT\r\n");
  auto open = [] { return makeSieveFilter(starttlsPolicy(false)); };
  expectSplitInvariant(open, kGreeting,
                       "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\nNOOP\r\nNO\x01OP\r\n");
  expectSplitInvariant(open, kGreeting, "CHECKSCRIPT {18446744073709551615+}\r\n");
}

TEST(SieveBackendStartTls, AsksOnlyWhenOfferedAndFailsClosed) {
  auto upgrade = makeSieveBackendStartTls("h");
  auto result = upgrade->fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()));
  ASSERT_EQ(result.step, BackendStartTls::Step::Send);
  EXPECT_EQ(result.toBackend, "STARTTLS\r\n");
  std::string_view go = "OK \"Begin TLS negotiation now.\"\r\n";
  EXPECT_EQ(upgrade->fromBackend(std::span<const char>(go.data(), go.size())).step,
            BackendStartTls::Step::StartTls);
  EXPECT_EQ(upgrade->greetingForClient(), ""); // the list after TLS is the client's greeting

  auto injected = makeSieveBackendStartTls("h");
  injected->fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()));
  std::string_view extra = "OK \"go\"\r\n\"SASL\" \"PLAIN\"\r\n";
  auto refused = injected->fromBackend(std::span<const char>(extra.data(), extra.size()));
  EXPECT_EQ(refused.step, BackendStartTls::Step::Failed);
  EXPECT_EQ(refused.failure, BackendStartTls::Failure::Injection);

  auto none = makeSieveBackendStartTls("h");
  std::string_view plain = "\"VERSION\" \"1.0\"\r\nOK \"hi\"\r\n";
  auto missing = none->fromBackend(std::span<const char>(plain.data(), plain.size()));
  EXPECT_EQ(missing.failure, BackendStartTls::Failure::NoStartTls);
}

TEST(SieveProbe, GreetingCapabilityLogout) {
  HealthProbe probe(config::Protocol::Sieve, "h", false);
  EXPECT_EQ(probe.start().step, HealthProbe::Step::NeedMore);
  auto asked = probe.fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()));
  ASSERT_EQ(asked.step, HealthProbe::Step::Send);
  EXPECT_EQ(asked.toBackend, "CAPABILITY\r\n");
  auto bye = probe.fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()));
  ASSERT_EQ(bye.step, HealthProbe::Step::Send);
  EXPECT_EQ(bye.toBackend, "LOGOUT\r\n");
  EXPECT_EQ(
      probe.capabilities(),
      (std::vector<std::string>{"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"",
                                "\"SIEVE\" \"fileinto reject envelope\"", "\"NOTIFY\" \"mailto\"",
                                "SASL PLAIN LOGIN", "\"STARTTLS\"", "\"VERSION\" \"1.0\""}));
  std::string_view done = "OK \"Logout completed.\"\r\n";
  EXPECT_EQ(probe.fromBackend(std::span<const char>(done.data(), done.size())).step,
            HealthProbe::Step::Done);
}

TEST(SieveProbe, AfterBackendStarttlsTheUnaskedListIsRead) {
  HealthProbe probe(config::Protocol::Sieve, "h", true);
  EXPECT_EQ(probe.start().step, HealthProbe::Step::NeedMore); // nothing asked
  auto bye = probe.fromBackend(std::span<const char>(kGreeting.data(), kGreeting.size()));
  ASSERT_EQ(bye.step, HealthProbe::Step::Send);
  EXPECT_EQ(bye.toBackend, "LOGOUT\r\n");
}

TEST(SieveProbe, ARefusingGreetingFails) {
  HealthProbe probe(config::Protocol::Sieve, "h", false);
  std::string_view refusal = "BYE \"Too many connections\"\r\n";
  EXPECT_EQ(probe.fromBackend(std::span<const char>(refusal.data(), refusal.size())).step,
            HealthProbe::Step::Failed);
}

// ---- login mode --------------------------------------------------------------------------

struct LoginRun {
  std::unique_ptr<LoginDialogue> dialogue;
  LoginOutput out;
  std::string feed(std::string_view bytes) {
    out.reset();
    dialogue->fromClient(std::span<const char>(bytes.data(), bytes.size()), out);
    return out.toClient;
  }
};

BackendOffer dovecotOffer() {
  return {{"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"", "\"SIEVE\" \"fileinto reject envelope\"",
           "SASL PLAIN LOGIN", "\"STARTTLS\"", "\"VERSION\" \"1.0\""}};
}

TEST(SieveLogin, GreetsWithTheServersListAndPosternsSaslAndStarttls) {
  LoginRun run{makeSieveLogin(starttlsPolicy(), dovecotOffer()), {}};
  run.dialogue->greet(run.out);
  EXPECT_EQ(run.out.toClient, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                              "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                              "\"VERSION\" \"1.0\"\r\n"
                              "\"STARTTLS\"\r\n"
                              "OK \"postern ready.\"\r\n");
  EXPECT_EQ(run.feed("AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n"),
            "NO (ENCRYPT-NEEDED) \"Use STARTTLS before authenticating\"\r\n");
  EXPECT_EQ(run.feed("STARTTLS\r\n"), "OK \"Begin TLS negotiation now.\"\r\n");
  EXPECT_TRUE(run.out.startTls);
  run.out.reset();
  run.dialogue->tlsStarted(run.out);
  EXPECT_EQ(run.out.toClient, "\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n"
                              "\"SIEVE\" \"fileinto reject envelope\"\r\n"
                              "\"VERSION\" \"1.0\"\r\n"
                              "\"SASL\" \"PLAIN LOGIN\"\r\n"
                              "OK \"TLS negotiation successful.\"\r\n");
}

TEST(SieveLogin, CapturesPlainInEveryForm) {
  const std::vector<std::string> forms = {
      "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n",
      "authenticate \"plain\" {20+}\r\n" + kPlain + "\r\n",
      "AUTHENTICATE {5+}\r\nPLAIN \"" + kPlain + "\"\r\n",
      "AUTHENTICATE \"PLAIN\"\r\n\"" + kPlain + "\"\r\n",
      "AUTHENTICATE \"PLAIN\"\r\n{20+}\r\n" + kPlain + "\r\n",
  };
  for (const std::string& form : forms) {
    LoginRun run{makeSieveLogin(implicitPolicy(), dovecotOffer()), {}};
    std::string said = run.feed(form);
    ASSERT_TRUE(run.out.credentials) << form << said;
    EXPECT_EQ(run.out.credentials->user, "alice");
    EXPECT_EQ(run.out.credentials->secret, "secret");
    if (form.find("\"PLAIN\"\r\n") != std::string::npos) {
      EXPECT_EQ(said, "\"\"\r\n") << form; // the empty challenge, as a string
    }
  }
}

TEST(SieveLogin, CancelRefusalAndTheDialogueGoesOn) {
  LoginRun run{makeSieveLogin(implicitPolicy(), dovecotOffer()), {}};
  EXPECT_EQ(run.feed("AUTHENTICATE \"PLAIN\"\r\n\"*\"\r\n"),
            "\"\"\r\nNO \"Authentication cancelled\"\r\n");
  EXPECT_EQ(run.feed("AUTHENTICATE \"CRAM-MD5\"\r\n"),
            "NO \"Unsupported authentication mechanism\"\r\n");
  EXPECT_EQ(run.feed("PUTSCRIPT \"a\" {5+}\r\nkeep;\r\n"), "NO \"Authenticate first\"\r\n");
  EXPECT_EQ(run.feed("NOOP \"x\"\r\n"), "OK (TAG \"x\") \"Done\"\r\n");
  EXPECT_EQ(run.feed("LOGOUT\r\n"), "OK \"Logout completed.\"\r\n");
  EXPECT_TRUE(run.out.quit);
}

TEST(SieveLogin, HeldBytesStayBounded) {
  Policy policy = implicitPolicy();
  policy.maxLineLength = 64;
  LoginRun run{makeSieveLogin(policy, dovecotOffer()), {}};
  EXPECT_EQ(run.feed("AUTHENTICATE \"PLAIN\" {18446744073709551615+}\r\n"),
            sieve::kLiteralTooLarge);
  EXPECT_TRUE(run.out.close);
  LoginRun sync{makeSieveLogin(policy, dovecotOffer()), {}};
  EXPECT_EQ(sync.feed("AUTHENTICATE \"PLAIN\" {20}\r\n" + kPlain + "\r\nNOOP\r\n"),
            "NO \"Synchronizing literals are not allowed\"\r\nOK \"NOOP completed.\"\r\n");
  EXPECT_FALSE(sync.out.credentials);
  LoginRun control{makeSieveLogin(policy, dovecotOffer()), {}};
  EXPECT_EQ(control.feed("NOOP\x0b\r\n"), sieve::kInvalidCharacters);
  EXPECT_LE(control.dialogue->heldFromClient(), policy.maxLineLength);
}

LoginReplay::Result feed(LoginReplay& replay, std::string_view bytes) {
  return replay.fromBackend(std::span<const char>(bytes.data(), bytes.size()));
}

Credentials alice() {
  Credentials credentials;
  credentials.mechanism = "plain";
  credentials.user = "alice";
  credentials.secret = "secret";
  return credentials;
}

TEST(SieveReplay, AuthenticatesWithQuotedPlainAndRelaysTheVerdict) {
  auto replay = makeSieveReplay(alice(), {});
  EXPECT_EQ(replay->start().step, LoginReplay::Step::NeedMore);
  auto sent = feed(*replay, kGreeting);
  ASSERT_EQ(sent.step, LoginReplay::Step::Send);
  EXPECT_EQ(sent.toBackend, "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  EXPECT_TRUE(replay->credentialsSent());
  auto verdict = feed(*replay, "OK \"Logged in.\"\r\n");
  EXPECT_EQ(verdict.step, LoginReplay::Step::Accepted);
  EXPECT_EQ(verdict.toClient, "OK \"Logged in.\"\r\n");

  auto refused = makeSieveReplay(alice(), {});
  feed(*refused, kGreeting);
  auto no = feed(*refused, "NO \"Authentication failed.\"\r\n");
  EXPECT_EQ(no.step, LoginReplay::Step::Rejected);
  EXPECT_EQ(no.toClient, "NO \"Authentication failed.\"\r\n");
}

TEST(SieveReplay, LoginMechanismWhenPlainIsNotOffered) {
  auto replay = makeSieveReplay(alice(), {});
  auto sent = feed(*replay, "\"SASL\" \"LOGIN\"\r\nOK \"hi\"\r\n");
  EXPECT_EQ(sent.toBackend, "AUTHENTICATE \"LOGIN\"\r\n");
  EXPECT_EQ(feed(*replay, "\"VXNlcm5hbWU6\"\r\n").toBackend, "\"YWxpY2U=\"\r\n");
  EXPECT_EQ(feed(*replay, "\"UGFzc3dvcmQ6\"\r\n").toBackend, "\"c2VjcmV0\"\r\n");
  EXPECT_EQ(feed(*replay, "OK \"Logged in.\"\r\n").step, LoginReplay::Step::Accepted);
}

TEST(SieveReplay, TellsATrustingServerTheClientWithXclient) {
  ReplayContext context;
  context.clientIp = "2001:db8::7";
  context.clientPort = 40000;
  auto replay = makeSieveReplay(alice(), context);
  auto asked = feed(*replay, "\"SASL\" \"PLAIN\"\r\n\"XCLIENT\"\r\nOK \"hi\"\r\n");
  EXPECT_EQ(asked.toBackend, "XCLIENT ADDR=2001:db8::7 PORT=40000\r\n");
  EXPECT_FALSE(replay->credentialsSent());
  auto sent = feed(*replay, "OK \"Updated\"\r\n");
  EXPECT_EQ(sent.toBackend, "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
  // Not offered (an untrusting server): straight to AUTHENTICATE.
  auto plain = makeSieveReplay(alice(), context);
  EXPECT_EQ(feed(*plain, kGreeting).toBackend, "AUTHENTICATE \"PLAIN\" \"" + kPlain + "\"\r\n");
}

TEST(SieveReplay, ARefusingGreetingFailsTheServer) {
  auto replay = makeSieveReplay(alice(), {});
  EXPECT_EQ(feed(*replay, "BYE \"Server shutting down\"\r\n").step, LoginReplay::Step::Failed);
  EXPECT_FALSE(replay->credentialsSent());
}

TEST(SieveProtocol, TheTableRow) {
  const ProtocolInfo& row = info(config::Protocol::Sieve);
  EXPECT_STREQ(row.name, "sieve");
  EXPECT_EQ(row.plaintextPort, 4190);
  EXPECT_STREQ(row.alpn, "managesieve");
  EXPECT_TRUE(row.greetingIsReady("\"IMPLEMENTATION\" \"x\""));
  EXPECT_TRUE(row.greetingIsReady("O"));
  EXPECT_FALSE(row.greetingIsReady("BYE \"no\""));
  EXPECT_FALSE(row.greetingIsReady("NO \"no\""));
  EXPECT_TRUE(sieve::isResponse(chomp(row.unavailable)));
  EXPECT_TRUE(sieve::isResponse(chomp(row.timedOut)));
}

} // namespace
} // namespace protocol
