// ManageSieve in login mode (RFC 5804 §2.1, §2.2): postern greets with the servers' capability
// list, answers CAPABILITY/NOOP/LOGOUT/STARTTLS, captures AUTHENTICATE (mechanism and initial
// response as quoted strings or {n+} literals, SASL responses likewise); the replay
// authenticates at the server with the mechanism and data quoted as ManageSieve strings.
#include "proxy/protocol/login/login_common.h"
#include "proxy/protocol/sieve/sieve.h"
#include "proxy/protocol/sieve/sieve_syntax.h"

namespace protocol {

namespace {

using sieve::reply;

class SieveLogin final : public LoginFront {
public:
  SieveLogin(const Policy& policy, BackendOffer offer) : LoginFront(policy, std::move(offer)) {
    std::vector<std::string> offered = mechanismsIn(offer_.capabilities, "SASL");
    mechanisms_.password = offer_.capabilities.empty() || hasMechanism(offered, "PLAIN") ||
                           hasMechanism(offered, "LOGIN");
    mechanisms_.xoauth2 = hasMechanism(offered, "XOAUTH2");
    mechanisms_.oauthbearer = hasMechanism(offered, "OAUTHBEARER");
  }

  void greet(LoginOutput& out) override {
    out.toClient += capabilities() + reply("OK", "postern ready.");
  }

private:
  // The servers' capability lines (kept as they sent them), SASL as postern captures it, and
  // STARTTLS as the listener's TLS policy says.
  std::string capabilities() const {
    std::string list;
    bool implementation = false;
    for (const std::string& line : offer_.capabilities) {
      std::optional<sieve::Capability> capability = sieve::parseCapability(line);
      if (!capability || equalsNoCase(capability->name, "SASL") ||
          equalsNoCase(capability->name, "STARTTLS") || equalsNoCase(capability->name, "XCLIENT")) {
        continue;
      }
      implementation = implementation || equalsNoCase(capability->name, "IMPLEMENTATION");
      list += line + "\r\n";
    }
    if (!implementation) {
      list += sieve::capabilityLine("IMPLEMENTATION", "postern");
      list += sieve::capabilityLine("VERSION", "1.0");
    }
    if (authAllowedNow()) {
      list += sieve::capabilityLine("SASL", mechanisms_.list());
    }
    if (startTlsOffered()) {
      list += sieve::capabilityLine("STARTTLS");
    }
    return list;
  }

  // RFC 5804 §2.2: after TLS the capabilities again, unasked.
  void afterTls(LoginOutput& out) override {
    out.toClient += capabilities() + reply("OK", "TLS negotiation successful.");
  }

  bool takeRaw(LoginOutput&) override {
    if (literalLeft_ == 0) {
      return false;
    }
    std::string_view raw = reader_.takeRaw(literalLeft_);
    if (raw.empty()) {
      return false;
    }
    literal_.append(raw);
    literalLeft_ -= raw.size();
    if (literalLeft_ == 0) {
      if (!skipping_) {
        words_.push_back(std::move(literal_));
      }
      wipe(literal_);
      continuing_ = true; // the command (or SASL response) goes on on the next line
      reader_.wipeConsumed();
    }
    return true;
  }

  void lineTooLong(LoginOutput& out) override { out.toClient += sieve::kLineTooLong; }
  std::string throttledReply() const override {
    return reply("NO", "Too many failed logins, try again later", "TRYLATER");
  }
  std::string unavailableReply() const override {
    return reply("NO", "Authentication temporarily unavailable", "TRYLATER");
  }
  std::size_t assembled() const override {
    std::size_t bytes = literal_.size();
    for (const std::string& word : words_) {
      bytes += word.size();
    }
    return bytes;
  }

  void closeWith(std::string_view text, LoginOutput& out) {
    out.toClient += text;
    out.close = true;
    wipeWords();
  }

  void wipeWords() {
    for (std::string& word : words_) {
      wipe(word);
    }
    words_.clear();
  }

  // Reads one line segment into words_: a whole command (or SASL response), a part of one
  // (a literal follows), or a refusal already answered.
  enum class Assembled { Complete, Partial, Refused };
  Assembled assemble(std::string_view line, LoginOutput& out) {
    std::string_view text = chomp(line);
    if (!continuing_) {
      wipeWords();
      budget_.reset();
      skipping_ = false;
    }
    continuing_ = false;
    reader_.setMaxLine(policy_.maxLineLength);
    Literal announced = literalAtEnd(text);
    if (hasControlByte(text) || text.find('\t') != std::string_view::npos) {
      if (announced.kind != Literal::Kind::None) {
        closeWith(sieve::kInvalidCharactersBye, out); // its bytes would arrive as commands
      } else {
        out.toClient += sieve::kInvalidCharacters;
        wipeWords();
      }
      return Assembled::Refused;
    }
    if (!budget_.take(text.size())) {
      closeWith(sieve::kLineTooLong, out);
      return Assembled::Refused;
    }
    Literal literal;
    switch (sieve::tokenise(text, words_, literal)) {
    case sieve::Tokenised::Bad:
      if (literal.kind == Literal::Kind::Announced || literal.kind == Literal::Kind::Invalid) {
        closeWith(sieve::kInvalidLiteral, out);
      } else {
        out.toClient += reply("NO", "Syntax error in command");
        wipeWords();
      }
      return Assembled::Refused;
    case sieve::Tokenised::Literal:
      if (words_.size() > kMaxWords || !budget_.take(literal.size)) {
        closeWith(sieve::kLiteralTooLarge, out);
        return Assembled::Refused;
      }
      if (literal.synchronising) {
        // RFC 5804 §4: "{n}" is the server's. Its bytes are skipped, as a server reads them.
        out.toClient += reply("NO", "Synchronizing literals are not allowed");
        skipping_ = true;
      }
      literalLeft_ = literal.size;
      if (literal.size == 0) {
        if (!skipping_) {
          words_.emplace_back();
        }
        continuing_ = true;
      }
      reader_.setMaxLine(policy_.maxLineLength - budget_.used() + 2);
      return Assembled::Partial;
    case sieve::Tokenised::Complete:
      break;
    }
    if (skipping_) {
      wipeWords();
      return Assembled::Refused; // (answered when its literal was announced)
    }
    if (words_.size() > kMaxWords) {
      closeWith(sieve::kLineTooLong, out);
      return Assembled::Refused;
    }
    return Assembled::Complete;
  }

  void line(std::string_view line, LoginOutput& out) override {
    if (assemble(line, out) != Assembled::Complete) {
      return;
    }
    if (words_.empty()) {
      out.toClient += reply("NO", "Empty command line");
      return;
    }
    command(out);
    wipeWords();
  }

  // A SASL response is one string: quoted, or a {n+} literal followed by an empty line.
  void saslLine(std::string_view line, LoginOutput& out) override {
    switch (assemble(line, out)) {
    case Assembled::Partial:
      return;
    case Assembled::Refused:
      sasl_.reset(); // the exchange is over
      return;
    case Assembled::Complete:
      break;
    }
    if (words_.size() != 1) {
      out.toClient += saslReplies().malformed;
      sasl_.reset();
      wipeWords();
      return;
    }
    saslStep(sasl_->respond(words_.front()), out);
    wipeWords();
  }

  void command(LoginOutput& out) {
    std::string_view verb = words_[0];
    std::size_t arguments = words_.size() - 1;
    if (equalsNoCase(verb, "CAPABILITY")) {
      out.toClient += capabilities() + reply("OK", "Capability completed.");
    } else if (equalsNoCase(verb, "NOOP")) {
      // RFC 5804 §2.11: a NOOP's string comes back in a TAG code.
      out.toClient += arguments == 1 ? reply("OK", "Done", "TAG " + quoted(words_[1]))
                                     : reply("OK", "NOOP completed.");
    } else if (equalsNoCase(verb, "LOGOUT")) {
      out.toClient += reply("OK", "Logout completed.");
      out.quit = true;
    } else if (equalsNoCase(verb, "STARTTLS")) {
      startTls(arguments, out);
    } else if (equalsNoCase(verb, "AUTHENTICATE")) {
      authenticate(out);
    } else {
      out.toClient += reply("NO", "Authenticate first");
    }
  }

  void startTls(std::size_t arguments, LoginOutput& out) {
    if (!startTlsOffered() || arguments != 0) {
      out.toClient += reply("NO", tls_             ? "TLS is already active"
                                  : arguments != 0 ? "STARTTLS takes no arguments"
                                                   : "STARTTLS not available");
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    acceptStartTls("BYE \"Commands pipelined after STARTTLS\"\r\n",
                   reply("OK", "Begin TLS negotiation now."), out);
  }

  void authenticate(LoginOutput& out) {
    const char* label = words_.size() > 1 ? mechanismLabel(words_[1]) : "none";
    if (!policy_.allowAuth) {
      out.toClient += reply("NO", "Authentication is not available here");
      return;
    }
    if (!authAllowedNow()) {
      out.toClient += reply("NO", "Use STARTTLS before authenticating", "ENCRYPT-NEEDED");
      out.events.push_back({Event::AuthRefusedPlaintext, label});
      return;
    }
    if (words_.size() < 2 || words_.size() > 3) {
      out.toClient += reply("NO", "AUTHENTICATE takes a mechanism and an initial response");
      return;
    }
    std::optional<std::string_view> initial;
    if (words_.size() == 3) {
      initial = words_[2].empty() ? std::string_view("=") : std::string_view(words_[2]);
    }
    startSasl(words_[1], initial, out);
  }

  SaslReplies saslReplies() const override {
    return {"\"",
            reply("NO", "Unsupported authentication mechanism"),
            reply("NO", "Invalid base64 data"),
            reply("NO", "Invalid authentication data"),
            reply("NO", "Authentication cancelled"),
            "\""};
  }

  static constexpr std::size_t kMaxWords = 16;
  std::vector<std::string> words_;
  ByteBudget budget_{policy_.maxLineLength};
  bool continuing_ = false;
  bool skipping_ = false; // a refused {n} literal's bytes are read and dropped
  std::size_t literalLeft_ = 0;
  std::string literal_;
};

// ------------------------------------------------------------------------------------------

class SieveReplay final : public LineReplay {
public:
  SieveReplay(Credentials credentials, ReplayContext context)
      : LineReplay(std::move(credentials), std::move(context)) {
    quotedSasl_ = true;
  }

  // The server's first words are always a capability list: its greeting, or, after its
  // STARTTLS, the list RFC 5804 §2.2 has it send again unasked.
  Result start() override { return {}; }

private:
  enum class State { Capabilities, Xclient, Auth };

  Result line(std::string_view raw) override {
    std::string_view text = chomp(raw);
    switch (state_) {
    case State::Capabilities: {
      if (std::optional<sieve::Capability> capability = sieve::parseCapability(text)) {
        if (equalsNoCase(capability->name, "SASL")) {
          mechanisms_ = sieve::valueWords(*capability);
        }
        xclient_ = xclient_ || equalsNoCase(capability->name, "XCLIENT");
        return {};
      }
      std::optional<sieve::Response> status = sieve::parseResponse(text);
      if (!status) {
        return {}; // another line of the list
      }
      if (!equalsNoCase(status->status, "OK")) {
        return failed("not a ManageSieve greeting");
      }
      if (xclient_ && !context_.clientIp.empty()) {
        // Dovecot's managesieve-login offers XCLIENT to the networks it trusts: the client's
        // address and port, as IMAP's login replay sends them with ID (SPEC §5).
        state_ = State::Xclient;
        return send("XCLIENT ADDR=" + context_.clientIp +
                    " PORT=" + std::to_string(context_.clientPort) + "\r\n");
      }
      return authenticate();
    }
    case State::Xclient:
      if (sieve::isResponse(text)) {
        return authenticate(); // refused or not, the login goes on
      }
      return {};
    case State::Auth:
      if (std::optional<sieve::Response> status = sieve::parseResponse(text)) {
        if (literalAtEnd(text).kind == Literal::Kind::Announced) {
          return failed("a verdict with a literal"); // (Dovecot quotes its verdicts)
        }
        return verdict(equalsNoCase(status->status, "OK"), raw);
      }
      return nextResponse(); // a challenge string
    }
    return {};
  }

  Result authenticate() {
    state_ = State::Auth;
    if (auto sasl = replaySasl(mechanisms_, "AUTHENTICATE ", true)) {
      return std::move(*sasl);
    }
    return replayLoginMechanism(mechanisms_, "AUTHENTICATE ");
  }

  State state_ = State::Capabilities;
  std::vector<std::string> mechanisms_;
  bool xclient_ = false;
};

} // namespace

std::unique_ptr<LoginDialogue> makeSieveLogin(const Policy& policy, BackendOffer offer) {
  return std::make_unique<SieveLogin>(policy, std::move(offer));
}

std::unique_ptr<LoginReplay> makeSieveReplay(Credentials credentials, ReplayContext context) {
  return std::make_unique<SieveReplay>(std::move(credentials), std::move(context));
}

} // namespace protocol
