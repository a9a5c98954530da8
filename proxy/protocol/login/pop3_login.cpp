// POP3 in login mode (RFC 1939, 2449 CAPA, 2595 STLS, 5034 AUTH): postern greets, answers
// CAPA/STLS/QUIT, captures USER/PASS and AUTH; the replay logs in with a mechanism the server
// offers (SASL PLAIN, else USER/PASS, else SASL LOGIN).
#include "proxy/protocol/login/login_common.h"
#include "proxy/protocol/pop3/pop3_syntax.h"

namespace protocol {

namespace {

class Pop3Login final : public LoginFront {
public:
  Pop3Login(const Policy& policy, BackendOffer offer) : LoginFront(policy, std::move(offer)) {
    const auto& caps = offer_.capabilities;
    std::vector<std::string> sasl = mechanismsIn(caps, "SASL");
    mechanisms_.password = caps.empty() || hasCapability(caps, "USER") ||
                           hasMechanism(sasl, "PLAIN") || hasMechanism(sasl, "LOGIN");
    mechanisms_.xoauth2 = hasMechanism(sasl, "XOAUTH2");
    mechanisms_.oauthbearer = hasMechanism(sasl, "OAUTHBEARER");
  }

  void greet(LoginOutput& out) override { out.toClient += "+OK postern ready.\r\n"; }

private:
  void afterTls(LoginOutput&) override { protocol::wipe(user_); } // learned before TLS

  void lineTooLong(LoginOutput& out) override { out.toClient += "-ERR Line too long\r\n"; }
  std::string throttledReply() const override {
    return "-ERR [SYS/TEMP] Too many failed logins, try again later\r\n";
  }
  std::string unavailableReply() const override {
    return "-ERR [SYS/TEMP] Authentication temporarily unavailable\r\n";
  }

  std::string capabilities() const {
    std::string out = "+OK Capability list follows\r\n";
    for (const std::string& line : offer_.capabilities) {
      std::string_view keyword = pop3::capabilityKeyword(line);
      if (!pop3::isServersOwn(keyword) && !pop3::isAuthentication(keyword)) {
        out += line + "\r\n";
      }
    }
    if (offer_.capabilities.empty()) {
      out += "CAPA\r\n";
    }
    if (startTlsOffered()) {
      out += "STLS\r\n";
    }
    if (authAllowedNow()) {
      if (mechanisms_.password) {
        out += "USER\r\n";
      }
      if (std::string list = mechanisms_.list(); !list.empty()) {
        out += "SASL " + list + "\r\n";
      }
    }
    return out + ".\r\n";
  }

  bool mayAuthenticate(const char* label, LoginOutput& out) {
    if (!policy_.allowAuth) {
      out.toClient += "-ERR [AUTH] Authentication is not available here\r\n";
      return false;
    }
    if (!authAllowedNow()) {
      out.toClient += "-ERR [AUTH] Plaintext authentication disallowed; use STLS first\r\n";
      out.events.push_back({Event::AuthRefusedPlaintext, label});
      return false;
    }
    return true;
  }

  void line(std::string_view raw, LoginOutput& out) override {
    pop3::ParsedCommand parsed = pop3::parseCommand(raw);
    if (!parsed) {
      out.toClient += parsed.reply(); // SPEC §5.1
      return;
    }
    auto [verb, arguments] = *parsed.command;
    if (pop3::isAddressClaim(verb)) {
      out.toClient += pop3::kNotPermitted; // SPEC §5.1, as in passthrough
      return;
    }
    if (equalsNoCase(verb, "CAPA")) {
      out.toClient += capabilities();
    } else if (equalsNoCase(verb, "QUIT")) {
      out.toClient += "+OK Logging out\r\n";
      out.quit = true;
    } else if (equalsNoCase(verb, "STLS")) {
      startTls(arguments, out);
    } else if (equalsNoCase(verb, "USER")) {
      if (!mayAuthenticate("user", out)) {
        return;
      }
      if (arguments.empty() || !mechanisms_.password) {
        out.toClient += arguments.empty() ? "-ERR No user name given\r\n"
                                          : "-ERR [AUTH] Authentication failed.\r\n";
        return;
      }
      protocol::wipe(user_);
      user_ = std::string(arguments);
      out.toClient += "+OK\r\n";
    } else if (equalsNoCase(verb, "PASS")) {
      if (!mayAuthenticate("user", out)) {
        return;
      }
      if (user_.empty()) {
        out.toClient += "-ERR No user name given\r\n";
        return;
      }
      Credentials credentials;
      credentials.mechanism = "user";
      credentials.user = std::move(user_);
      user_.clear();
      // RFC 1939: the password is the rest of the line after "PASS ", spaces included.
      credentials.secret = std::string(arguments);
      captured(std::move(credentials), out);
    } else if (equalsNoCase(verb, "AUTH")) {
      authenticate(arguments, out);
    } else {
      out.toClient += "-ERR Unknown command or not logged in\r\n";
    }
  }

  void startTls(std::string_view arguments, LoginOutput& out) {
    if (!startTlsOffered() || !arguments.empty()) {
      out.toClient += tls_                ? "-ERR Already using TLS\r\n"
                      : arguments.empty() ? "-ERR STLS not available\r\n"
                                          : "-ERR STLS takes no arguments\r\n";
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    acceptStartTls("-ERR Commands pipelined after STLS\r\n", "+OK Begin TLS negotiation\r\n", out);
  }

  void authenticate(std::string_view arguments, LoginOutput& out) {
    auto [name, initial] = splitWord(arguments);
    if (name.empty()) {
      // The mechanisms, as several servers answer a bare AUTH.
      out.toClient += "+OK\r\n";
      if (authAllowedNow()) {
        std::string list = mechanisms_.list();
        while (!list.empty()) {
          auto [mechanism, rest] = splitWord(list);
          out.toClient += std::string(mechanism) + "\r\n";
          list = std::string(rest);
        }
      }
      out.toClient += ".\r\n";
      return;
    }
    if (!mayAuthenticate(mechanismLabel(name), out)) {
      return;
    }
    startSasl(name, given(initial), out);
  }

  SaslReplies saslReplies() const override {
    return {"+ ",
            "-ERR Unsupported authentication mechanism\r\n",
            "-ERR Invalid base64 data\r\n",
            "-ERR [AUTH] Invalid authentication data\r\n",
            "-ERR Authentication cancelled\r\n",
            ""};
  }

  std::string user_;
};

class Pop3Replay final : public LineReplay {
public:
  using LineReplay::LineReplay;

  Result start() override {
    if (!context_.greeted) {
      return {};
    }
    state_ = State::Capa;
    return send("CAPA\r\n");
  }

private:
  enum class State { Greeting, Capa, CapaList, User, Auth };

  Result line(std::string_view raw) override {
    std::string_view text = chomp(raw);
    switch (state_) {
    case State::Greeting:
      if (!pop3::isOk(text)) {
        return failed("not a POP3 greeting");
      }
      state_ = State::Capa;
      return send("CAPA\r\n");
    case State::Capa:
      if (pop3::isOk(text)) {
        state_ = State::CapaList;
        return {};
      }
      return authenticate(); // no CAPA: try USER/PASS
    case State::CapaList:
      if (pop3::isEnd(text)) {
        return authenticate();
      }
      capabilities_.emplace_back(pop3::unstuffed(text));
      return {};
    case State::User:
      if (pop3::isOk(text)) {
        state_ = State::Auth;
        return sendSecret("PASS " + credentials_.secret + "\r\n");
      }
      return verdict(false, raw);
    case State::Auth:
      if (pop3::isOk(text)) {
        return verdict(true, raw);
      }
      if (pop3::isError(text)) {
        return verdict(false, raw);
      }
      if (pop3::isChallenge(text)) {
        return nextResponse();
      }
      return failed("unexpected reply to AUTH");
    }
    return {};
  }

  Result authenticate() {
    state_ = State::Auth;
    std::vector<std::string> sasl = mechanismsIn(capabilities_, "SASL");
    if (auto replayed = replaySasl(sasl, "AUTH ", true)) { // RFC 5034: initial responses
      return std::move(*replayed);
    }
    // USER and PASS carry the words as they are: only words without control bytes, which a
    // server reads as postern sent them (SPEC §5.1).
    bool lineSafe = !hasControlByte(credentials_.user) && !hasControlByte(credentials_.secret);
    if ((capabilities_.empty() || hasCapability(capabilities_, "USER")) &&
        credentials_.authzid.empty() && lineSafe) {
      state_ = State::User;
      return send("USER " + credentials_.user + "\r\n");
    }
    return replayLoginMechanism(sasl, "AUTH ");
  }

  State state_ = State::Greeting;
};

} // namespace

std::unique_ptr<LoginDialogue> makePop3Login(const Policy& policy, BackendOffer offer) {
  return std::make_unique<Pop3Login>(policy, std::move(offer));
}

std::unique_ptr<LoginReplay> makePop3Replay(Credentials credentials, ReplayContext context) {
  return std::make_unique<Pop3Replay>(std::move(credentials), std::move(context));
}

} // namespace protocol
