// ManageSieve before authentication (RFC 5804): STARTTLS answered by postern (and, once the
// handshake is done, the capabilities sent unasked as §2.2 says), the capability lists of the
// greeting and of CAPABILITY rewritten, AUTHENTICATE refused before TLS where TLS is required,
// client literals ({n+}) and SASL exchanges passed through as data. Every line is read with the
// ManageSieve syntax module (sieve_syntax.h), as the login dialogue and the backend dialogues
// read it. Before authentication only what managesieve-login takes without dispute reaches the
// server: its five commands with string arguments in printable ASCII. A command it refuses
// mid-line (an unknown verb, an atom where a string belongs, a byte it will not take) makes it
// skip to the end of that line and read a literal's bytes as commands: postern answers those
// itself. Its own answers keep their place among the server's (responses carry no tags).
#include "proxy/protocol/line_filter.h"
#include "proxy/protocol/sieve/sieve_syntax.h"

#include <deque>

namespace protocol {

namespace {

class SieveFilter final : public LineFilter {
public:
  explicit SieveFilter(const Policy& policy) : LineFilter(policy), budget_(policy.maxLineLength) {}

  void fromClient(std::span<const char> data, Output& out) override {
    if (relayedFromClient(data, out)) {
      return;
    }
    if (startTlsDeferred_ && !data.empty()) {
      rejectInjection(out);
      return;
    }
    client_.append(data);
    processClient(out);
  }

  void fromBackend(std::span<const char> data, Output& out) override {
    if (relayedFromBackend(data, out)) {
      return;
    }
    readBackendLines(data, backendLiteral_, out,
                     [&](std::string_view line) { response(line, out); });
    if (resumeClient_ && !relay_ && !out.close && !out.startTls) {
      resumeClient_ = false;
      processClient(out);
    }
  }

  // RFC 5804 §2.2: after TLS the server lists its capabilities again, unasked. The server
  // behind postern never saw this TLS, so postern sends the list, as TLS now shows it.
  void tlsStarted(Output& out) override {
    tls_ = true;
    startTlsDeferred_ = false;
    out.toClient +=
        capabilityList(greetingCapabilities_) + sieve::reply("OK", "TLS negotiation successful.");
  }

private:
  enum class Kind { Capability, Auth, StartTlsForwarded, Other, Local };
  struct Pending {
    Kind kind;
    std::string reply; // Local: postern's own answer, said when its turn comes
  };

  void processClient(Output& out) {
    // Nothing is read before the whole greeting: a STARTTLS answered meanwhile would have the
    // rest of it (and its OK) arrive after the go-ahead, out of step. What waits is bounded
    // like one line (SPEC §5.1).
    if (!greeted_) {
      if (client_.pending().size() > policy_.maxLineLength) {
        closeWith(sieve::kLineTooLong, out);
      }
      return;
    }
    while (!relay_ && !out.close && !out.startTls && !startTlsDeferred_) {
      if (clientLiteral_ > 0) {
        std::string_view raw = client_.takeRaw(clientLiteral_);
        if (raw.empty()) {
          break;
        }
        clientLiteral_ -= raw.size();
        if (!dropping_ && !authenticated_ && !sieve::literalBytesAllowed(raw)) {
          // A byte the server could refuse inside the literal, then skip to the line's end:
          // what follows would be commands there. The server never gets this byte.
          closeWith(sieve::kInvalidCharactersBye, out);
          break;
        }
        if (!dropping_) {
          out.toBackend += raw;
        }
        continue;
      }
      if (saslWaiting_ && !saslTurn_ && !continuing_) {
        // After AUTHENTICATE a line is SASL data only once the server asked for it; until then
        // the client's lines wait, bounded like one line (a line pipelined behind a refused
        // AUTHENTICATE would otherwise run as a command postern never checked).
        if (client_.pending().size() > policy_.maxLineLength) {
          closeWith(sieve::kLineTooLong, out);
        }
        break;
      }
      auto line = client_.nextLine();
      if (!line) {
        if (client_.tooLong()) {
          closeWith(sieve::kLineTooLong, out);
        }
        break;
      }
      if (continuing_) {
        continuation(*line, out);
        continue;
      }
      if (saslWaiting_) {
        saslResponse(*line, out);
        continue;
      }
      command(*line, out);
    }
    client_.compact();
  }

  void closeWith(std::string_view reply, Output& out) {
    out.toClient += reply;
    out.close = true;
  }

  void rejectInjection(Output& out) {
    // CVE-2011-0411 class: commands pipelined after STARTTLS must never run inside TLS.
    closeWith("BYE \"Commands pipelined after STARTTLS\"\r\n", out);
    out.events.push_back({Event::StartTlsInjection});
  }

  // SPEC §5.1, §12: a client sends only non-synchronising literals, each within what is left
  // of the command's budget, checked before a byte of it is read. False: the session ends.
  bool admitLiteral(std::string_view text, Output& out) {
    Literal literal = literalAtEnd(text);
    if (literal.kind == Literal::Kind::Invalid) {
      closeWith(sieve::kInvalidLiteral, out);
      return false;
    }
    if (literal.kind == Literal::Kind::Announced && !budget_.take(literal.size)) {
      closeWith(sieve::kLiteralTooLarge, out);
      return false;
    }
    return true;
  }

  // Literal bookkeeping after a (part of a) command line that was forwarded or dropped.
  void afterCommandLine(std::string_view text) {
    Literal literal = literalAtEnd(text);
    continuing_ = literal.kind == Literal::Kind::Announced;
    clientLiteral_ = continuing_ ? literal.size : 0;
    if (!continuing_) {
      dropping_ = false;
    }
  }

  // The rest of a command after a literal.
  void continuation(std::string_view line, Output& out) {
    std::string_view text = chomp(line);
    if (!dropping_ && (hasControlByte(text) || text.find('\t') != std::string_view::npos)) {
      closeWith(sieve::kInvalidCharactersBye, out); // the command's start reached the server
      return;
    }
    if (!budget_.take(line.size())) {
      closeWith(sieve::kLineTooLong, out);
      return;
    }
    if (!admitLiteral(text, out)) {
      return;
    }
    Literal literal = literalAtEnd(text);
    if (!dropping_ && literal.kind == Literal::Kind::Announced && literal.synchronising) {
      // The command's start reached the server: answered here, the server's line would go on
      // into whatever the client sends next.
      closeWith("BYE \"Synchronizing literals are not allowed\"\r\n", out);
      return;
    }
    if (!clientLiteralAllowed(text, out)) {
      return;
    }
    if (!dropping_ && !argumentsTaken(text)) {
      // The command's start reached the server already; refused now, the two would part.
      closeWith("BYE \"Invalid arguments\"\r\n", out);
      return;
    }
    if (!dropping_) {
      out.toBackend += line;
    }
    afterCommandLine(text);
  }

  // RFC 5804 §4: "{n}" is the server's; a client announces "{n+}" and sends the bytes at once.
  // Refused and skipped, as the server would read the same bytes.
  bool clientLiteralAllowed(std::string_view text, Output& out) {
    Literal literal = literalAtEnd(text);
    if (literal.kind == Literal::Kind::Announced && literal.synchronising && !dropping_) {
      answer(sieve::reply("NO", "Synchronizing literals are not allowed"), out);
      dropping_ = true;
      afterCommandLine(text);
      return false;
    }
    return true;
  }

  // postern's own answer to a command: now if nothing is outstanding, else in its turn after
  // the server's answers to the commands before it.
  void answer(std::string reply, Output& out) {
    if (pending_.empty()) {
      out.toClient += reply;
      return;
    }
    if (pending_.size() >= kMaxPending) {
      closeWith(sieve::kTooManyPipelined, out);
      return;
    }
    pending_.push_back({Kind::Local, std::move(reply)});
  }

  // Local answers whose turn has come (the server answered everything before them).
  void flushLocal(Output& out) {
    while (!pending_.empty() && pending_.front().kind == Kind::Local) {
      out.toClient += pending_.front().reply;
      pending_.pop_front();
    }
  }

  // Answers a command postern will not relay; what it announced as a literal is skipped.
  void refuse(std::string_view text, std::string reply, Output& out) {
    if (!admitLiteral(text, out)) {
      return;
    }
    answer(std::move(reply), out);
    dropping_ = true;
    afterCommandLine(text);
  }

  bool forward(std::string_view line, Kind kind, Output& out) {
    std::string_view text = chomp(line);
    if (pending_.size() >= kMaxPending) {
      closeWith(sieve::kTooManyPipelined, out); // SPEC §5.1: pipelines are bounded
      return false;
    }
    if (!admitLiteral(text, out) || !clientLiteralAllowed(text, out)) {
      return false;
    }
    out.toBackend += line;
    pending_.push_back({kind, {}});
    afterCommandLine(text);
    return true;
  }

  // SPEC §5.1: the arguments of a command before authentication, checked segment by segment
  // (a literal's continuation too) against what managesieve-login takes without dispute.
  bool argumentsTaken(std::string_view segment) {
    if (authenticated_) {
      return true;
    }
    return sieve::stringArguments(segment, argumentCount_) && argumentCount_ <= maxArguments_;
  }

  void command(std::string_view line, Output& out) {
    std::string_view text = chomp(line);
    budget_.reset();
    budget_.take(line.size());
    sieve::ParsedCommand parsed = sieve::parseCommandLine(text);
    if (!parsed) {
      Literal literal = literalAtEnd(text);
      if (parsed.error == sieve::CommandError::ControlByte &&
          literal.kind == Literal::Kind::Announced && !literal.synchronising) {
        closeWith(sieve::kInvalidCharactersBye, out); // its literal would arrive as commands
        return;
      }
      refuse(text,
             std::string(parsed.error == sieve::CommandError::ControlByte
                             ? sieve::kInvalidCharacters
                             : "NO \"Syntax error in command\"\r\n"),
             out);
      return;
    }
    auto [verb, arguments] = *parsed.command;
    if (equalsNoCase(verb, "STARTTLS")) {
      startTls(arguments, line, out);
      return;
    }
    if (equalsNoCase(verb, "AUTHENTICATE")) {
      if (!policy_.allowAuth) {
        refuse(text, sieve::reply("NO", "Authentication is not available here"), out);
        return;
      }
      if (policy_.requireTls && !tls_) {
        refuse(text, sieve::reply("NO", "Use STARTTLS before authenticating", "ENCRYPT-NEEDED"),
               out);
        out.events.push_back({Event::AuthRefusedPlaintext, mechanismOf(arguments)});
        return;
      }
      if (!authenticated_ && !mechanismNamed(arguments)) {
        // Dovecot reads only the mechanism before it decides; an empty one (or a literal that
        // turns out empty) makes it skip to the line's end, where a literal's bytes would run.
        refuse(text, sieve::reply("NO", "Invalid arguments"), out);
        return;
      }
      if (shapeTaken(verb, arguments, text, out) && forward(line, Kind::Auth, out)) {
        saslWaiting_ = true;
        saslTurn_ = false;
      }
      return;
    }
    if (equalsNoCase(verb, "XCLIENT")) {
      // SPEC §5.1: only postern tells a server who the client is (Dovecot's managesieve-login
      // takes XCLIENT from the networks it trusts, postern among them).
      refuse(text, sieve::reply("NO", "Command not permitted"), out);
      return;
    }
    if (!authenticated_ && !equalsNoCase(verb, "CAPABILITY") && !equalsNoCase(verb, "NOOP") &&
        !equalsNoCase(verb, "LOGOUT")) {
      refuse(text, sieve::reply("NO", "Authenticate first"), out);
      return;
    }
    if (!shapeTaken(verb, arguments, text, out)) {
      return;
    }
    forward(line, equalsNoCase(verb, "CAPABILITY") ? Kind::Capability : Kind::Other, out);
  }

  // Before authentication: how many string arguments each command takes (RFC 5804 §2).
  // A command that does not fit is answered here, its literal skipped. False: not forwarded.
  bool shapeTaken(std::string_view verb, std::string_view arguments, std::string_view text,
                  Output& out) {
    argumentCount_ = 0;
    maxArguments_ = equalsNoCase(verb, "AUTHENTICATE") ? 2 : equalsNoCase(verb, "NOOP") ? 1 : 0;
    if (argumentsTaken(arguments)) {
      return true;
    }
    refuse(text, sieve::reply("NO", "Invalid arguments"), out);
    return false;
  }

  // AUTHENTICATE's first argument: a quoted SASL mechanism name (RFC 4422 §3.1 characters).
  static bool mechanismNamed(std::string_view arguments) {
    std::optional<Quoted> mechanism = readQuoted(arguments);
    if (!mechanism || mechanism->value.empty() || mechanism->value.size() > 20) {
      return false;
    }
    for (char c : mechanism->value) {
      bool upper = c >= 'A' && c <= 'Z';
      bool lower = c >= 'a' && c <= 'z';
      bool digit = c >= '0' && c <= '9';
      if (!upper && !lower && !digit && c != '-' && c != '_') {
        return false;
      }
    }
    return true;
  }

  static const char* mechanismOf(std::string_view arguments) {
    std::vector<std::string> words;
    Literal literal;
    if (sieve::tokenise(arguments, words, literal) == sieve::Tokenised::Bad || words.empty()) {
      return "none";
    }
    return mechanismLabel(words.front());
  }

  void startTls(std::string_view arguments, std::string_view line, Output& out) {
    if (policy_.listenerTls == config::TlsMode::None) {
      // The backend's own STARTTLS, end to end; it takes no arguments (a literal among them
      // would be read as commands once the server refused the line).
      if (shapeTaken("STARTTLS", arguments, chomp(line), out)) {
        forward(line, Kind::StartTlsForwarded, out);
      }
      return;
    }
    if (tls_ || !arguments.empty() || policy_.listenerTls == config::TlsMode::Implicit) {
      // (Arguments announcing a literal: its bytes are skipped, as for any refused command.)
      refuse(chomp(line),
             sieve::reply("NO", tls_ ? "TLS is already active" : "STARTTLS takes no arguments"),
             out);
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!client_.empty()) {
      rejectInjection(out);
      return;
    }
    if (pending_.empty()) {
      goAhead(out);
      return;
    }
    startTlsDeferred_ = true; // commands sent before it are still answered in plaintext first
  }

  void goAhead(Output& out) {
    out.toClient += sieve::reply("OK", "Begin TLS negotiation now.");
    out.startTls = true;
    out.events.push_back({Event::StartTlsOk});
  }

  // A SASL response the server asked for: a string, relayed (a literal's bytes as data).
  void saslResponse(std::string_view line, Output& out) {
    std::string_view text = chomp(line);
    if (hasControlByte(text)) {
      closeWith(sieve::kInvalidCharactersBye, out); // the server waits for this line
      return;
    }
    budget_.reset();
    budget_.take(line.size());
    if (!admitLiteral(text, out)) {
      return;
    }
    argumentCount_ = 0;
    maxArguments_ = 1;
    Literal literal = literalAtEnd(text);
    bool synchronising = literal.kind == Literal::Kind::Announced && literal.synchronising;
    if (!argumentsTaken(text) || synchronising) {
      closeWith("BYE \"Invalid SASL response\"\r\n", out); // the server waits for this line
      return;
    }
    out.toBackend += line;
    saslTurn_ = false;
    afterCommandLine(text);
  }

  void response(std::string_view line, Output& out) {
    std::string_view text = chomp(line);
    if (backendContinuing_) {
      // The rest of a line whose literal just ended.
      out.toClient += line;
      afterBackendSegment(text);
      if (!backendContinuing_ && responseEnded_) {
        responseEnded_ = false;
        afterResponse(out);
      }
      return;
    }
    if (!greeted_) {
      greetingLine(line, out);
      return;
    }
    Kind front = pending_.empty() ? Kind::Other : pending_.front().kind;
    if (!sieve::isResponse(text)) {
      if (front == Kind::Capability) {
        out.toClient += rewrittenCapability(text);
      } else {
        out.toClient += line;
        if (front == Kind::Auth && saslWaiting_) {
          saslTurn_ = true; // a challenge: the client's next line is its response
          resumeClient_ = true;
        }
      }
      afterBackendSegment(text);
      return;
    }
    bool ok = equalsNoCase(text.substr(0, text.find(' ')), "OK");
    if (front == Kind::Capability && ok) {
      out.toClient += addedCapabilities();
    }
    out.toClient += line;
    afterBackendSegment(text);
    if (pending_.empty()) {
      return; // an unsolicited BYE (the server is going away)
    }
    pending_.pop_front();
    if (front == Kind::Auth) {
      saslWaiting_ = false;
      saslTurn_ = false;
      resumeClient_ = true;
      if (ok) {
        out.events.push_back({Event::Authenticated});
        authenticated_ = true;
      }
    }
    if (front == Kind::StartTlsForwarded && ok) {
      goRelay(out); // TLS end to end with the backend
      return;
    }
    if (backendContinuing_) {
      responseEnded_ = true; // what follows the answer's literal is still its line
      return;
    }
    afterResponse(out);
  }

  // A server answer is complete: postern's own answers whose turn came, a deferred STARTTLS,
  // or, once authenticated with nothing outstanding, plain relaying.
  void afterResponse(Output& out) {
    flushLocal(out);
    if (startTlsDeferred_ && pending_.empty()) {
      startTlsDeferred_ = false;
      goAhead(out);
      return;
    }
    if (authenticated_ && pending_.empty()) {
      goRelay(out);
    }
  }

  // A server line may end in a literal ("{n}"): its bytes, then the rest of the line, follow.
  void afterBackendSegment(std::string_view text) {
    Literal literal = literalAtEnd(text);
    backendContinuing_ = literal.kind == Literal::Kind::Announced;
    backendLiteral_ = backendContinuing_ ? literal.size : 0;
  }

  // SPEC §5.1, §12: the greeting is a capability list, rewritten line by line, and its status
  // line without a response code. The list is kept: after TLS postern sends it again.
  void greetingLine(std::string_view line, Output& out) {
    std::string_view text = chomp(line);
    if (!sieve::isResponse(text)) {
      if (std::optional<sieve::Capability> capability = sieve::parseCapability(text)) {
        greetingCapabilities_.push_back(std::move(*capability));
        out.toClient += rewrittenCapability(text);
        return;
      }
      out.toClient += line; // (not a capability: relayed as it is, never learned)
      afterBackendSegment(text);
      return;
    }
    greeted_ = true;
    resumeClient_ = true; // client lines held for the greeting may go now
    std::optional<sieve::Response> status = sieve::parseResponse(text);
    if (!status || !equalsNoCase(status->status, "OK")) {
      out.toClient += line; // a refusal (or a code postern does not read), relayed as it is
      afterBackendSegment(text);
      return;
    }
    out.toClient += addedCapabilities();
    Literal literal = literalAtEnd(status->text);
    if (literal.kind != Literal::Kind::None || status->code.empty()) {
      out.toClient += line;
      afterBackendSegment(text);
      return;
    }
    std::string rewritten(status->status);
    if (!status->text.empty()) {
      rewritten += " " + std::string(status->text);
    }
    out.toClient += rewritten + "\r\n";
  }

  bool hideAuth() const { return !policy_.allowAuth || (policy_.requireTls && !tls_); }
  bool terminating() const { return policy_.listenerTls != config::TlsMode::None; }

  // One capability line as this listener offers it: STARTTLS is postern's to say on a
  // TLS-terminating listener, SASL goes where authentication may not happen yet.
  std::string rewrittenCapability(std::string_view text) const {
    std::optional<sieve::Capability> capability = sieve::parseCapability(text);
    if (!capability) {
      return std::string(text) + "\r\n";
    }
    if ((terminating() && equalsNoCase(capability->name, "STARTTLS")) ||
        (hideAuth() && equalsNoCase(capability->name, "SASL")) ||
        equalsNoCase(capability->name, "XCLIENT")) {
      return {};
    }
    return std::string(text) + "\r\n";
  }

  // What postern adds at the end of a capability list.
  std::string addedCapabilities() const {
    if (policy_.listenerTls == config::TlsMode::StartTls && !tls_) {
      return sieve::capabilityLine("STARTTLS");
    }
    return {};
  }

  std::string capabilityList(const std::vector<sieve::Capability>& capabilities) const {
    std::string list;
    for (const sieve::Capability& capability : capabilities) {
      std::string line = sieve::capabilityLine(capability.name, capability.value);
      list += rewrittenCapability(chomp(line));
    }
    return list + addedCapabilities();
  }

  std::deque<Pending> pending_;
  static constexpr std::size_t kMaxPending = 1000;
  ByteBudget budget_; // the current command's bytes, literals included
  std::vector<sieve::Capability> greetingCapabilities_;
  std::size_t clientLiteral_ = 0;
  std::size_t backendLiteral_ = 0;
  bool backendContinuing_ = false;
  bool continuing_ = false;
  bool dropping_ = false;
  bool saslWaiting_ = false;  // an AUTHENTICATE awaits its answer
  bool saslTurn_ = false;     // the server sent a challenge: the client's next line answers it
  bool resumeClient_ = false; // the server answered: process held client lines
  bool startTlsDeferred_ = false;
  bool responseEnded_ = false;    // a final answer whose line goes on after its literal
  std::size_t argumentCount_ = 0; // the current command's arguments so far (before login)
  std::size_t maxArguments_ = 0;
  bool greeted_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makeSieveFilter(const Policy& policy) {
  return std::make_unique<SieveFilter>(policy);
}

} // namespace protocol
