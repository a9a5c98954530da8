// ManageSieve before authentication (RFC 5804): STARTTLS answered by postern (and, once the
// handshake is done, the capabilities sent unasked as §2.2 says), the capability lists of the
// greeting and of CAPABILITY rewritten, AUTHENTICATE refused before TLS where TLS is required,
// client literals ({n+}) and SASL exchanges passed through as data. Every line is read with the
// ManageSieve syntax module (sieve_syntax.h), as the login dialogue and the backend dialogues
// read it.
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
  enum class Kind { Capability, Auth, StartTlsForwarded, Other };

  void processClient(Output& out) {
    while (!relay_ && !out.close && !out.startTls && !startTlsDeferred_) {
      if (clientLiteral_ > 0) {
        std::string_view raw = client_.takeRaw(clientLiteral_);
        if (raw.empty()) {
          break;
        }
        clientLiteral_ -= raw.size();
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
    if (!admitLiteral(text, out) || !clientLiteralAllowed(text, out)) {
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
      out.toClient += sieve::reply("NO", "Synchronizing literals are not allowed");
      dropping_ = true;
      afterCommandLine(text);
      return false;
    }
    return true;
  }

  // Answers a command postern will not relay; what it announced as a literal is skipped.
  void refuse(std::string_view text, std::string reply, Output& out) {
    if (!admitLiteral(text, out)) {
      return;
    }
    out.toClient += reply;
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
    pending_.push_back(kind);
    afterCommandLine(text);
    return true;
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
      if (forward(line, Kind::Auth, out)) {
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
    forward(line, equalsNoCase(verb, "CAPABILITY") ? Kind::Capability : Kind::Other, out);
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
      forward(line, Kind::StartTlsForwarded, out); // the backend's own STARTTLS, end to end
      return;
    }
    if (tls_ || !arguments.empty() || policy_.listenerTls == config::TlsMode::Implicit) {
      out.toClient +=
          sieve::reply("NO", tls_ ? "TLS is already active" : "STARTTLS takes no arguments");
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
      return;
    }
    if (!greeted_) {
      greetingLine(line, out);
      return;
    }
    Kind front = pending_.empty() ? Kind::Other : pending_.front();
    std::optional<sieve::Response> status = sieve::parseResponse(text);
    if (!status) {
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
    if (front == Kind::Capability && equalsNoCase(status->status, "OK")) {
      out.toClient += addedCapabilities();
    }
    out.toClient += line;
    afterBackendSegment(text);
    if (pending_.empty()) {
      return; // an unsolicited BYE (the server is going away)
    }
    pending_.pop_front();
    bool ok = equalsNoCase(status->status, "OK");
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
    if (startTlsDeferred_ && pending_.empty()) {
      startTlsDeferred_ = false;
      goAhead(out);
      return;
    }
    if (authenticated_ && pending_.empty() && backendLiteral_ == 0) {
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
    std::optional<sieve::Response> status = sieve::parseResponse(text);
    if (!status) {
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
    if (!equalsNoCase(status->status, "OK")) {
      out.toClient += line; // a refusal, relayed as it is
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

  std::deque<Kind> pending_;
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
  bool greeted_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makeSieveFilter(const Policy& policy) {
  return std::make_unique<SieveFilter>(policy);
}

} // namespace protocol
