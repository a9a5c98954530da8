// IMAP before authentication (RFC 9051, 3501, 2595, 7888): STARTTLS answered by postern,
// capabilities rewritten wherever they appear, LOGIN/AUTHENTICATE refused before TLS where TLS is
// required, literals ({n}, {n+}) and AUTHENTICATE continuations passed through as data, ID
// relayed without the fields that claim the client's address. Every line is read with the IMAP
// syntax module (imap_syntax.h), as the login dialogue and the backend dialogues read it.
#include "proxy/protocol/imap/imap_syntax.h"
#include "proxy/protocol/line_filter.h"

#include <deque>
#include <optional>
#include <unordered_set>

namespace protocol {

namespace {

class ImapFilter final : public LineFilter {
public:
  explicit ImapFilter(const Policy& policy) : LineFilter(policy), budget_(policy.maxLineLength) {}

  void fromClient(std::span<const char> data, Output& out) override {
    if (relayedFromClient(data, out)) {
      return;
    }
    if (!deferredStartTls_.empty()) {
      rejectInjection(deferredTag_, out);
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
      // The server answered an AUTHENTICATE step: client lines held for it can go on now.
      resumeClient_ = false;
      processClient(out);
    }
  }

  void tlsStarted(Output&) override {
    tls_ = true;
    deferredStartTls_.clear();
  }

private:
  enum class Kind { Auth, StartTlsForwarded, Other };
  struct Pending {
    std::string tag;
    Kind kind;
  };

  // The client's buffered lines, as far as they can go now.
  void processClient(Output& out) {
    while (!relay_ && !out.close && !out.startTls && deferredStartTls_.empty()) {
      if (awaitingContinuation_ && !client_.empty()) {
        if (literalMadeSynchronising_) {
          // The client sent a {n+} literal, which went on as {n}: its bytes wait here for the
          // server's "+", bounded like one line (SPEC §5.1).
          if (client_.pending().size() > policy_.maxLineLength) {
            out.toClient += "* BYE Line too long\r\n";
            out.close = true;
          }
          break;
        }
        // A synchronising literal is sent only after the server's "+": the server may refuse
        // the command instead, and then these bytes would be commands postern never checked.
        out.toClient += "* BYE Literal data sent before the server's continuation\r\n";
        out.close = true;
        break;
      }
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
      if (!saslTag_.empty() && !saslTurn_ && !continuing_) {
        // After AUTHENTICATE a line is SASL data only once the server asked for it ("+");
        // until its answer the next lines wait, bounded like one line. (Forwarded blindly, a
        // line pipelined after an AUTHENTICATE the server refuses would run there as a command
        // postern never checked: an ID claiming another address, say.)
        if (client_.pending().size() > policy_.maxLineLength) {
          out.toClient += "* BYE Line too long\r\n";
          out.close = true;
        }
        break;
      }
      auto line = client_.nextLine();
      if (!line) {
        if (client_.tooLong()) {
          out.toClient += "* BYE Line too long\r\n";
          out.close = true;
        }
        break;
      }
      if (continuing_) {
        continuation(*line, out);
        continue;
      }
      if (!saslTag_.empty()) {
        if (hasControlByte(chomp(*line))) {
          // The server waits for this response; refused here, the two would be out of step.
          out.toClient += imap::kInvalidCharacters;
          out.close = true;
          break;
        }
        out.toBackend += *line; // the AUTHENTICATE response the server asked for
        saslTurn_ = false;
        continue;
      }
      command(*line, out);
    }
    client_.compact();
  }

  void rejectInjection(std::string_view tag, Output& out) {
    // CVE-2011-0411 class: commands pipelined after STARTTLS must never run inside TLS.
    out.toClient += std::string(tag) + " BAD Commands pipelined after STARTTLS\r\n";
    out.events.push_back({Event::StartTlsInjection});
    out.close = true;
  }

  // SPEC §5.1: a literal is taken only if it fits what is left of the command's budget
  // (max_line_length for the whole command, literals included), checked before a byte of it
  // is read or the line announcing it goes anywhere. False: the session is being closed.
  bool admitLiteral(std::string_view line, Output& out) {
    imap::Literal literal = imap::literalAtEnd(chomp(line));
    if (literal.kind == imap::Literal::Kind::Invalid) {
      out.toClient += imap::kInvalidLiteral;
      out.close = true;
      return false;
    }
    if (literal.kind == imap::Literal::Kind::Announced && !budget_.take(literal.size)) {
      out.toClient += imap::kLiteralTooLarge;
      out.close = true;
      return false;
    }
    return true;
  }

  // The rest of a command after a literal: relayed (or dropped with its command).
  void continuation(std::string_view line, Output& out) {
    if (!dropping_ && hasControlByte(chomp(line))) {
      // The command's start reached the server already; the session cannot go on in step.
      out.toClient += imap::kInvalidCharacters;
      out.close = true;
      return;
    }
    if (!budget_.take(line.size())) {
      out.toClient += "* BYE Command too long\r\n";
      out.close = true;
      return;
    }
    if (!admitLiteral(line, out)) {
      return;
    }
    if (!dropping_) {
      out.toBackend += asSentToServer(line);
    }
    afterCommandLine(line);
  }

  // Before authentication a non-synchronising literal {n+} goes to the server as {n}, and its
  // bytes only after the server's "+". A server that cannot parse the line (an unclosed quote,
  // a tag it does not take, an over-long line) answers BAD and skips to the end of that line
  // only: the literal's bytes would then run there as commands postern never read as such.
  std::string asSentToServer(std::string_view line) const {
    imap::Literal literal = imap::literalAtEnd(chomp(line));
    if (authenticated_ || literal.kind != imap::Literal::Kind::Announced || literal.synchronising) {
      return std::string(line);
    }
    std::string_view text = chomp(line);
    std::string sent(text.substr(0, text.size() - 2)); // without "+}"
    sent += "}";
    sent += line.substr(text.size());
    return sent;
  }

  // Literal bookkeeping after a (part of a) command line that was forwarded or dropped.
  void afterCommandLine(std::string_view line) {
    imap::Literal literal = imap::literalAtEnd(chomp(line));
    if (literal.kind == imap::Literal::Kind::Announced) {
      if (!dropping_ && (literal.synchronising || !authenticated_)) {
        // Counted only once the backend says "+"; a tagged reply instead ends the command.
        continuing_ = true;
        awaitingContinuation_ = true;
        awaitedLiteral_ = literal.size;
        literalMadeSynchronising_ = !literal.synchronising;
        return;
      }
      continuing_ = true;
      // A refused command's synchronising literal never comes: the client waits for "+".
      clientLiteral_ = dropping_ && literal.synchronising ? 0 : literal.size;
      if (dropping_ && literal.synchronising) {
        continuing_ = false;
        dropping_ = false;
      }
      return;
    }
    continuing_ = false;
    dropping_ = false;
  }

  // Answers a command postern will not relay; what it announced as a literal is skipped.
  void refuse(std::string_view line, std::string reply, Output& out) {
    if (!admitLiteral(line, out)) {
      return;
    }
    out.toClient += reply;
    dropping_ = true;
    afterCommandLine(line);
  }

  // A command forwarded to the server, its answer awaited in order.
  bool forward(std::string_view tag, std::string_view line, Kind kind, Output& out) {
    if (pending_.size() >= kMaxPending) {
      // SPEC §5.1: pipelines are bounded, as in POP3 and SMTP.
      out.toClient += imap::kTooManyPipelined;
      out.close = true;
      return false;
    }
    if (!admitLiteral(line, out)) {
      return false;
    }
    if (outstanding_.contains(std::string(tag))) {
      // Waits (a literal's "+", a SASL exchange) end with their command's tagged answer; with
      // two commands under one tag, the first answer would end the second one's wait early.
      refuse(line, std::string(tag) + " BAD Tag already in use\r\n", out);
      return false;
    }
    out.toBackend += asSentToServer(line);
    pending_.push_back({std::string(tag), kind});
    outstanding_.insert(std::string(tag));
    afterCommandLine(line);
    return true;
  }

  void command(std::string_view line, Output& out) {
    budget_.reset();
    budget_.take(line.size()); // a line fits: the reader caps it at max_line_length
    auto parsed = imap::parseCommandLine(line);
    if (!parsed) {
      // SPEC §5.1: a control byte, or no tag a server reads as postern does.
      refuse(line, imap::commandError(line, parsed.error), out);
      return;
    }
    auto [tag, verb, arguments] = *parsed.command;
    commandTag_ = std::string(tag);
    if (equalsNoCase(verb, "STARTTLS")) {
      startTls(tag, arguments, line, out);
      return;
    }
    if (equalsNoCase(verb, "LOGIN") || equalsNoCase(verb, "AUTHENTICATE")) {
      if (!policy_.allowAuth) {
        refuse(line, std::string(tag) + " NO [CANNOT] Authentication is not available here\r\n",
               out);
        return;
      }
      if (policy_.requireTls && !tls_) {
        refuse(line,
               std::string(tag) + " NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n",
               out);
        out.events.push_back(
            {Event::AuthRefusedPlaintext,
             mechanismLabel(equalsNoCase(verb, "LOGIN") ? verb : splitWord(arguments).first)});
        return;
      }
      if (equalsNoCase(verb, "AUTHENTICATE") &&
          imap::literalAtEnd(chomp(line)).kind != imap::Literal::Kind::None) {
        // Dovecot reads the rest of an AUTHENTICATE line as the initial response, never as a
        // literal: the literal's bytes would be commands there.
        refuse(line, std::string(tag) + " BAD AUTHENTICATE takes no literal\r\n", out);
        return;
      }
      if (forward(tag, line, Kind::Auth, out) && equalsNoCase(verb, "AUTHENTICATE")) {
        saslTag_ = std::string(tag);
        saslTurn_ = false;
      }
      return;
    }
    if (equalsNoCase(verb, "ID")) {
      // SPEC §5.1: a Dovecot that trusts postern's address believes x-originating-ip and the
      // like; only postern may say who the client is.
      std::optional<std::string> id = imap::idWithoutAddressClaims(arguments);
      if (!id) {
        refuse(line, std::string(tag) + " BAD Invalid ID parameters\r\n", out);
        return;
      }
      forward(tag, std::string(tag) + " ID " + *id + "\r\n", Kind::Other, out);
      return;
    }
    forward(tag, line, Kind::Other, out);
  }

  void startTls(std::string_view tag, std::string_view arguments, std::string_view line,
                Output& out) {
    if (policy_.listenerTls == config::TlsMode::None) {
      forward(tag, line, Kind::StartTlsForwarded, out); // the backend's own STARTTLS, end to end
      return;
    }
    if (tls_ || !arguments.empty()) {
      out.toClient += std::string(tag) + (tls_ ? " BAD TLS is already active\r\n"
                                               : " BAD STARTTLS takes no arguments\r\n");
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!client_.empty()) {
      rejectInjection(tag, out);
      return;
    }
    std::string reply = std::string(tag) + " OK Begin TLS negotiation now\r\n";
    if (pending_.empty()) {
      out.toClient += reply;
      out.startTls = true;
      out.events.push_back({Event::StartTlsOk});
      return;
    }
    // Commands sent before it are still answered in plaintext first.
    deferredStartTls_ = reply;
    deferredTag_ = std::string(tag);
  }

  // The pending command a tagged answer belongs to: answers come in order, so the first one
  // is checked first and the work per answer does not grow with the queue (SPEC §5.1).
  std::deque<Pending>::iterator findPending(std::string_view tag) {
    if (!pending_.empty() && pending_.front().tag == tag) {
      return pending_.begin();
    }
    for (auto it = pending_.begin(); it != pending_.end(); ++it) {
      if (it->tag == tag) {
        return it;
      }
    }
    return pending_.end();
  }

  void response(std::string_view line, Output& out) {
    if (!greeted_) {
      greeted_ = true;
      greeting(line, out);
      return;
    }
    std::optional<imap::Status> status = imap::parseStatus(line);
    // A tagged OK to a login: what it says of capabilities is the authenticated session's.
    bool loggingIn = false;
    if (status && status->tag != "*" && equalsNoCase(status->status, "OK")) {
      auto it = findPending(status->tag);
      loggingIn = it != pending_.end() && it->kind == Kind::Auth;
    }
    if (line.starts_with("+") && awaitingContinuation_ && saslTag_.empty() &&
        literalMadeSynchronising_) {
      // The "+" postern asked for on the client's behalf: not the client's to see.
      awaitingContinuation_ = false;
      literalMadeSynchronising_ = false;
      clientLiteral_ = awaitedLiteral_;
      resumeClient_ = true;
      return;
    }
    out.toClient += rewriteCapabilities(line, loggingIn);
    imap::Literal literal = imap::literalAtEnd(chomp(line));
    if (literal.kind == imap::Literal::Kind::Announced) {
      backendLiteral_ = literal.size;
    }
    if (line.starts_with("* ")) {
      return;
    }
    if (line.starts_with("+")) {
      if (awaitingContinuation_ && saslTag_.empty()) {
        awaitingContinuation_ = false;
        clientLiteral_ = awaitedLiteral_;
        resumeClient_ = true;
      } else if (!saslTag_.empty()) {
        saslTurn_ = true; // the client's next line is its AUTHENTICATE response
        resumeClient_ = true;
      }
      return;
    }
    if (!status) {
      return;
    }
    if (awaitingContinuation_ && status->tag == commandTag_) {
      // Refused instead of "+": a synchronising literal never comes; one the client sent
      // without waiting ({n+}, sent on as {n}) comes, and is dropped with the rest of its
      // command.
      awaitingContinuation_ = false;
      continuing_ = literalMadeSynchronising_;
      dropping_ = literalMadeSynchronising_;
      clientLiteral_ = literalMadeSynchronising_ ? awaitedLiteral_ : 0;
      literalMadeSynchronising_ = false;
      resumeClient_ = true;
    }
    auto it = findPending(status->tag);
    if (it != pending_.end()) {
      Kind kind = it->kind;
      outstanding_.erase(it->tag);
      pending_.erase(it);
      if (status->tag == saslTag_) {
        saslTag_.clear();
        saslTurn_ = false;
        resumeClient_ = true;
      }
      if (kind == Kind::Auth && equalsNoCase(status->status, "OK")) {
        out.events.push_back({Event::Authenticated});
        authenticated_ = true;
      }
      if (kind == Kind::StartTlsForwarded && equalsNoCase(status->status, "OK")) {
        goRelay(out); // TLS end to end with the backend
        return;
      }
    }
    if (!deferredStartTls_.empty() && pending_.empty()) {
      out.toClient += deferredStartTls_;
      out.startTls = true;
      out.events.push_back({Event::StartTlsOk});
      return;
    }
    if (authenticated_ && pending_.empty() && saslTag_.empty() && backendLiteral_ == 0) {
      goRelay(out);
    }
  }

  // SPEC §5.1: the greeting reaches the client with every response code removed wherever it
  // stands ("[ALERT]", "[REFERRAL ...]", a "[CAPABILITY" in the middle of the text); then the
  // capabilities it carried in its code, rewritten by postern's rules, lead it again.
  void greeting(std::string_view line, Output& out) {
    std::optional<imap::Status> status = imap::parseStatus(line);
    if (!status || status->tag != "*") {
      out.toClient += line;
      return;
    }
    if (equalsNoCase(status->status, "PREAUTH")) {
      out.toClient += line;
      authenticated_ = true; // the backend needs no login from this client
      goRelay(out);
      return;
    }
    std::string text = withoutResponseCodes(status->text);
    std::string rewritten = "* " + std::string(status->status);
    if (std::optional<std::vector<std::string>> atoms = imap::capabilities(line)) {
      rewritten += " [CAPABILITY " + capabilityList(*atoms, false) + "]";
    }
    if (!text.empty()) {
      rewritten += " " + text;
    }
    out.toClient += rewritten + "\r\n";
  }

  // SPEC §5: the capability list as this listener offers it. STARTTLS and LOGINDISABLED are
  // postern's to say on a TLS-terminating listener; AUTH= goes where login may not happen yet.
  // `loggedIn`: the list a login's tagged OK carries (the authenticated session's).
  std::string capabilityList(const std::vector<std::string>& atoms, bool loggedIn) const {
    bool terminating = policy_.listenerTls != config::TlsMode::None;
    bool hideAuth = !policy_.allowAuth || (policy_.requireTls && !tls_);
    // Before authentication postern sends client literals on as synchronising ones (see
    // asSentToServer), so it does not offer the non-synchronising kind (RFC 7888) there.
    bool hideLiteralPlus = !authenticated_ && !loggedIn;
    std::string list;
    auto add = [&](std::string_view atom) {
      if (!list.empty()) {
        list += ' ';
      }
      list += atom;
    };
    for (const std::string& atom : atoms) {
      if (terminating && (equalsNoCase(atom, "STARTTLS") || equalsNoCase(atom, "LOGINDISABLED"))) {
        continue;
      }
      if (hideAuth && (startsWithNoCase(atom, "AUTH=") || equalsNoCase(atom, "LOGINDISABLED"))) {
        continue;
      }
      if (hideLiteralPlus && (equalsNoCase(atom, "LITERAL+") || equalsNoCase(atom, "LITERAL-"))) {
        continue;
      }
      add(atom);
    }
    if (terminating && policy_.listenerTls == config::TlsMode::StartTls && !tls_) {
      add("STARTTLS");
    }
    if (hideAuth) {
      add("LOGINDISABLED");
    }
    return list;
  }

  // A capability list wherever the IMAP syntax says one stands ("* CAPABILITY ...", or a
  // status response's "[CAPABILITY ...]" code), rewritten; every other line as it is.
  std::string rewriteCapabilities(std::string_view line, bool loggedIn) const {
    std::string_view text = chomp(line);
    std::optional<imap::Span> span = imap::capabilitySpan(text);
    std::optional<std::vector<std::string>> atoms = imap::capabilities(text);
    if (!span || !atoms) {
      return std::string(line);
    }
    return std::string(text.substr(0, span->start)) + capabilityList(*atoms, loggedIn) +
           std::string(text.substr(span->end)) + "\r\n";
  }

  std::deque<Pending> pending_;
  std::unordered_set<std::string> outstanding_; // the tags in pending_, each at most once
  static constexpr std::size_t kMaxPending = 1000;
  ByteBudget budget_; // the current command's bytes, literals included
  std::string saslTag_;
  bool saslTurn_ = false;     // the server asked ("+") for the client's next SASL line
  bool resumeClient_ = false; // the server answered: process held client lines
  std::string deferredStartTls_;
  std::string deferredTag_;
  std::size_t clientLiteral_ = 0;
  std::size_t awaitedLiteral_ = 0;
  bool awaitingContinuation_ = false;
  bool literalMadeSynchronising_ = false; // the awaited literal was {n+} from the client
  std::string commandTag_;
  std::size_t backendLiteral_ = 0;
  bool continuing_ = false;
  bool dropping_ = false;
  bool greeted_ = false;
  bool authenticated_ = false;
};

} // namespace

std::unique_ptr<Filter> makeImapFilter(const Policy& policy) {
  return std::make_unique<ImapFilter>(policy);
}

} // namespace protocol
