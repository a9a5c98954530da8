// IMAP in login mode (RFC 9051/3501 §6.1-6.2, RFC 4959 SASL-IR, RFC 7888 literals, RFC 2971 ID):
// postern greets, answers CAPABILITY/NOOP/ID/LOGOUT/STARTTLS, captures LOGIN (atoms, quoted
// strings, literals) and AUTHENTICATE; the replay logs in at the server with the client's tag.
#include "proxy/protocol/imap/imap_syntax.h"
#include "proxy/protocol/login/login_common.h"

namespace protocol {

namespace {

// A command's words: atoms, quoted strings (unescaped), literals, and parentheses as words.
struct Words {
  std::vector<std::string> items;
  void wipe() {
    for (std::string& item : items) {
      protocol::wipe(item);
    }
    items.clear();
  }
};

bool isPasswordWord(std::string_view word) {
  return startsWithNoCase(word, "AUTH=") || equalsNoCase(word, "LOGINDISABLED") ||
         equalsNoCase(word, "STARTTLS") || equalsNoCase(word, "SASL-IR") ||
         equalsNoCase(word, "ID") || equalsNoCase(word, "LOGIN-REFERRALS");
}

class ImapLogin final : public LoginFront {
public:
  ImapLogin(const Policy& policy, BackendOffer offer) : LoginFront(policy, std::move(offer)) {
    const auto& caps = offer_.capabilities;
    mechanisms_.password = caps.empty() || hasCapability(caps, "AUTH=PLAIN") ||
                           hasCapability(caps, "AUTH=LOGIN") ||
                           !hasCapability(caps, "LOGINDISABLED");
    mechanisms_.xoauth2 = hasCapability(caps, "AUTH=XOAUTH2");
    mechanisms_.oauthbearer = hasCapability(caps, "AUTH=OAUTHBEARER");
  }

  void greet(LoginOutput& out) override {
    out.toClient += "* OK [CAPABILITY " + capabilities() + "] postern ready.\r\n";
  }

private:
  std::string capabilities() const {
    std::string list = "IMAP4rev1";
    for (const std::string& word : offer_.capabilities) {
      if (!equalsNoCase(word, "IMAP4rev1") && !isPasswordWord(word)) {
        list += " " + word;
      }
    }
    list += " SASL-IR ID";
    if (startTlsOffered()) {
      list += " STARTTLS";
    }
    if (authAllowedNow()) {
      if (mechanisms_.password) {
        list += " AUTH=PLAIN AUTH=LOGIN";
      }
      if (mechanisms_.xoauth2) {
        list += " AUTH=XOAUTH2";
      }
      if (mechanisms_.oauthbearer) {
        list += " AUTH=OAUTHBEARER";
      }
    } else {
      list += " LOGINDISABLED";
    }
    return list;
  }

  bool takeRaw(LoginOutput& out) override {
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
      words_.items.push_back(std::move(literal_));
      literal_.clear();
      continuing_ = true; // the command goes on on the next line
      reader_.wipeConsumed();
    }
    (void)out;
    return true;
  }

  void lineTooLong(LoginOutput& out) override { out.toClient += "* BYE Line too long\r\n"; }
  std::string throttledReply() const override {
    return pendingTag_ + " NO [UNAVAILABLE] Too many failed logins, try again later\r\n";
  }
  std::string unavailableReply() const override {
    return pendingTag_ + " NO [UNAVAILABLE] Authentication temporarily unavailable\r\n";
  }

  void line(std::string_view line, LoginOutput& out) override {
    std::string_view text = chomp(line);
    if (!continuing_) {
      words_.wipe();
      budget_.reset();
    }
    continuing_ = false;
    reader_.setMaxLine(policy_.maxLineLength); // a new command, or one fully budgeted below
    imap::Literal announced = imap::literalAtEnd(text);
    if (hasControlByte(text)) {
      // SPEC §5.1: a syntax error. A literal it announces without waiting would arrive as
      // commands, so that one ends the session.
      if (announced.kind != imap::Literal::Kind::None && !announced.synchronising) {
        closeWith(imap::kInvalidCharacters, out);
        return;
      }
      std::string_view first = text.substr(0, text.find(' '));
      std::string tag = !words_.items.empty() ? words_.items[0] : std::string(first);
      out.toClient += (imap::validTag(tag) ? tag : "*") + " BAD Invalid characters in command\r\n";
      words_.wipe();
      return;
    }
    // SPEC §5.1: a whole command, literals included, is bounded like a line: nothing before
    // login needs more, and literal after literal would otherwise grow without end. Counted
    // overflow-safe: a client-chosen size is checked against what is left, never added first.
    if (!budget_.take(text.size())) {
      closeWith("* BYE Command too long\r\n", out);
      return;
    }
    imap::Literal literal;
    switch (imap::tokenise(text, words_.items, literal)) {
    case imap::Tokenised::Bad:
      if (literal.kind == imap::Literal::Kind::Invalid) {
        closeWith(imap::kInvalidLiteral, out);
      } else if (literal.kind == imap::Literal::Kind::Announced && !literal.synchronising) {
        closeWith(imap::kLiteralTooLarge, out); // its bytes would come as commands
      } else {
        finish(out, "BAD Invalid arguments");
      }
      return;
    case imap::Tokenised::Literal:
      if (words_.items.size() < 2 || words_.items.size() > kMaxWords ||
          !budget_.take(literal.size)) {
        // A literal postern will not take: its bytes would be read as commands.
        closeWith(imap::kLiteralTooLarge, out);
        return;
      }
      literalLeft_ = literal.size;
      if (literal.size == 0) {
        words_.items.emplace_back();
        continuing_ = true;
      }
      // The rest of the command (its next line) gets what is left of the budget, so what
      // postern holds for one command stays within max_line_length.
      reader_.setMaxLine(policy_.maxLineLength - budget_.used() + 2);
      if (literal.synchronising) {
        out.toClient += "+ Ready for literal data\r\n";
      }
      return;
    case imap::Tokenised::Complete:
      break;
    }
    if (words_.items.size() > kMaxWords) {
      closeWith("* BYE Command too long\r\n", out);
      return;
    }
    if (words_.items.empty()) {
      out.toClient += "* BAD Empty command line\r\n";
      return;
    }
    command(out);
    words_.wipe();
  }

  std::size_t assembled() const override {
    std::size_t bytes = literal_.size();
    for (const std::string& word : words_.items) {
      bytes += word.size();
    }
    return bytes;
  }

  void closeWith(std::string_view reply, LoginOutput& out) {
    out.toClient += reply;
    out.close = true;
    words_.wipe();
  }

  void finish(LoginOutput& out, std::string_view reply) {
    std::string tag = words_.items.empty() ? "*" : words_.items[0];
    out.toClient += tag + " " + std::string(reply) + "\r\n";
    words_.wipe();
  }

  void command(LoginOutput& out) {
    std::vector<std::string>& w = words_.items;
    std::string tag = w[0];
    if (!imap::validTag(tag)) {
      out.toClient += "* BAD Invalid tag\r\n";
      return;
    }
    if (w.size() < 2) {
      out.toClient += tag + " BAD Missing command\r\n";
      return;
    }
    std::string_view verb = w[1];
    std::size_t arguments = w.size() - 2;
    if (equalsNoCase(verb, "CAPABILITY")) {
      out.toClient +=
          "* CAPABILITY " + capabilities() + "\r\n" + tag + " OK Capability completed.\r\n";
    } else if (equalsNoCase(verb, "NOOP")) {
      out.toClient += tag + " OK NOOP completed.\r\n";
    } else if (equalsNoCase(verb, "ID")) {
      out.toClient += "* ID NIL\r\n" + tag + " OK ID completed.\r\n";
    } else if (equalsNoCase(verb, "LOGOUT")) {
      out.toClient += "* BYE Logging out\r\n" + tag + " OK Logout completed.\r\n";
      out.quit = true;
    } else if (equalsNoCase(verb, "STARTTLS")) {
      startTls(tag, arguments, out);
    } else if (equalsNoCase(verb, "LOGIN")) {
      login(tag, out);
    } else if (equalsNoCase(verb, "AUTHENTICATE")) {
      authenticate(tag, out);
    } else {
      out.toClient += tag + " BAD Command not available before login\r\n";
    }
  }

  void startTls(const std::string& tag, std::size_t arguments, LoginOutput& out) {
    if (!startTlsOffered() || arguments != 0) {
      out.toClient += tag + (tls_             ? " BAD TLS is already active\r\n"
                             : arguments != 0 ? " BAD STARTTLS takes no arguments\r\n"
                                              : " BAD STARTTLS not available\r\n");
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    acceptStartTls(tag + " BAD Commands pipelined after STARTTLS\r\n",
                   tag + " OK Begin TLS negotiation now.\r\n", out);
  }

  // Policy checks shared by LOGIN and AUTHENTICATE; false when refused (reply written).
  bool mayAuthenticate(const std::string& tag, const char* label, LoginOutput& out) {
    if (!policy_.allowAuth) {
      out.toClient += tag + " NO [CANNOT] Authentication is not available here\r\n";
      return false;
    }
    if (!authAllowedNow()) {
      out.toClient += tag + " NO [PRIVACYREQUIRED] Use STARTTLS before authenticating\r\n";
      out.events.push_back({Event::AuthRefusedPlaintext, label});
      return false;
    }
    return true;
  }

  void login(const std::string& tag, LoginOutput& out) {
    if (!mayAuthenticate(tag, "login", out)) {
      return;
    }
    if (words_.items.size() != 4) {
      out.toClient += tag + " BAD LOGIN takes a user name and a password\r\n";
      return;
    }
    if (!mechanisms_.password || words_.items[2].empty()) {
      out.toClient += tag + " NO [AUTHENTICATIONFAILED] Authentication failed.\r\n";
      return;
    }
    Credentials credentials;
    credentials.mechanism = "login";
    credentials.user = words_.items[2];
    credentials.secret = words_.items[3];
    credentials.tag = tag;
    pendingTag_ = tag;
    captured(std::move(credentials), out);
  }

  void authenticate(const std::string& tag, LoginOutput& out) {
    std::vector<std::string>& w = words_.items;
    const char* label = w.size() > 2 ? mechanismLabel(w[2]) : "none";
    if (!mayAuthenticate(tag, label, out)) {
      return;
    }
    if (w.size() < 3 || w.size() > 4) {
      out.toClient += tag + " BAD AUTHENTICATE takes a mechanism and an initial response\r\n";
      return;
    }
    saslTag_ = tag;
    std::optional<std::string_view> initial;
    if (w.size() == 4) {
      initial = w[3];
    }
    startSasl(w[2], initial, out);
  }

  SaslReplies saslReplies() const override {
    return {"+ ",
            saslTag_ + " NO [CANNOT] Unsupported authentication mechanism\r\n",
            saslTag_ + " BAD Invalid base64 data\r\n",
            saslTag_ + " NO [AUTHENTICATIONFAILED] Invalid authentication data\r\n",
            saslTag_ + " BAD Authentication cancelled\r\n",
            ""};
  }

  void saslCaptured(Credentials credentials, LoginOutput& out) override {
    credentials.tag = saslTag_;
    pendingTag_ = saslTag_;
    captured(std::move(credentials), out);
  }

  static constexpr std::size_t kMaxWords = 64;
  Words words_;
  ByteBudget budget_{policy_.maxLineLength}; // the current command's bytes, literals included
  bool continuing_ = false;
  std::size_t literalLeft_ = 0;
  std::string literal_;
  std::string saslTag_;
  std::string pendingTag_;
};

// ------------------------------------------------------------------------------------------

bool quotable(std::string_view text) { return !hasControlByte(text); }

class ImapReplay final : public LineReplay {
public:
  using LineReplay::LineReplay;

  Result start() override {
    if (!context_.greeted) {
      return {};
    }
    return askCapabilities();
  }

private:
  enum class State { Greeting, Capability, Id, Auth };

  Result askCapabilities() {
    state_ = State::Capability;
    return send("C CAPABILITY\r\n");
  }

  Result line(std::string_view raw) override {
    std::string_view text = chomp(raw);
    switch (state_) {
    case State::Greeting: {
      std::optional<imap::Status> greeting = imap::parseStatus(text);
      if (greeting && greeting->tag == "*" && equalsNoCase(greeting->status, "OK")) {
        // A capability code only where the syntax puts one (SPEC §5.1).
        if (auto atoms = imap::capabilities(text)) {
          capabilities_ = std::move(*atoms);
          return afterCapabilities();
        }
        return askCapabilities();
      }
      return failed(greeting && equalsNoCase(greeting->status, "PREAUTH") ? "greeted with PREAUTH"
                                                                          : "not an IMAP greeting");
    }
    case State::Capability:
      if (text.starts_with("* ")) {
        if (auto atoms = imap::capabilities(text)) {
          capabilities_ = std::move(*atoms);
        }
      } else if (!imap::taggedStatus(text, "C").empty()) {
        return afterCapabilities();
      }
      return {};
    case State::Id:
      if (!imap::taggedStatus(text, "I").empty()) {
        return authenticate();
      }
      return {};
    case State::Auth:
      return authLine(raw, text);
    }
    return {};
  }

  Result afterCapabilities() {
    if (hasCapability(capabilities_, "ID") && !context_.clientIp.empty()) {
      state_ = State::Id;
      return send("I ID (\"x-originating-ip\" " + imap::quoted(context_.clientIp) +
                  " \"x-originating-port\" \"" + std::to_string(context_.clientPort) + "\")\r\n");
    }
    return authenticate();
  }

  Result authenticate() {
    state_ = State::Auth;
    std::string prefix = credentials_.tag + " AUTHENTICATE ";
    std::vector<std::string> mechanisms;
    for (const std::string& capability : capabilities_) {
      if (startsWithNoCase(capability, "AUTH=")) {
        mechanisms.push_back(capability.substr(5));
      }
    }
    if (auto sasl = replaySasl(mechanisms, prefix, hasCapability(capabilities_, "SASL-IR"))) {
      return std::move(*sasl);
    }
    if (!hasCapability(capabilities_, "LOGINDISABLED") && credentials_.authzid.empty() &&
        quotable(credentials_.user) && quotable(credentials_.secret)) {
      return sendSecret(credentials_.tag + " LOGIN " + imap::quoted(credentials_.user) + " " +
                        imap::quoted(credentials_.secret) + "\r\n");
    }
    return replayLoginMechanism(mechanisms, prefix);
  }

  Result authLine(std::string_view raw, std::string_view text) {
    if (text.starts_with('+')) {
      return nextResponse();
    }
    if (std::string_view status = imap::taggedStatus(text, credentials_.tag); !status.empty()) {
      return verdict(equalsNoCase(status, "OK"), raw);
    }
    verdict_.append(raw); // untagged lines on the way (a CAPABILITY, an ALERT)
    return {};
  }

  State state_ = State::Greeting;
};

} // namespace

std::unique_ptr<LoginDialogue> makeImapLogin(const Policy& policy, BackendOffer offer) {
  return std::make_unique<ImapLogin>(policy, std::move(offer));
}

std::unique_ptr<LoginReplay> makeImapReplay(Credentials credentials, ReplayContext context) {
  return std::make_unique<ImapReplay>(std::move(credentials), std::move(context));
}

} // namespace protocol
