// SMTP submission in login mode (RFC 5321, 3207 STARTTLS, 4954 AUTH): postern greets, answers
// EHLO/HELO/NOOP/RSET/QUIT/STARTTLS, requires AUTH before mail, captures AUTH; the replay greets
// the server with the client's EHLO name and authenticates with PLAIN, else LOGIN.
#include "proxy/protocol/login/login_common.h"
#include "proxy/protocol/smtp/smtp_syntax.h"

namespace protocol {

namespace {

// Extensions postern does not pass on: the servers' own (the same set the passthrough filter
// hides, smtp_syntax.h) and authentication, which postern offers itself.
bool isLocalExtension(std::string_view line) {
  std::string_view keyword = splitWord(line).first;
  return smtp::isServersOwn(keyword) || smtp::isAuthentication(keyword);
}

class SmtpLogin final : public LoginFront {
public:
  SmtpLogin(const Policy& policy, BackendOffer offer) : LoginFront(policy, std::move(offer)) {
    std::vector<std::string> auth = mechanismsIn(offer_.capabilities, "AUTH");
    mechanisms_.password =
        offer_.capabilities.empty() || hasMechanism(auth, "PLAIN") || hasMechanism(auth, "LOGIN");
    mechanisms_.xoauth2 = hasMechanism(auth, "XOAUTH2");
    mechanisms_.oauthbearer = hasMechanism(auth, "OAUTHBEARER");
  }

  void greet(LoginOutput& out) override {
    out.toClient += "220 " + policy_.hostname + " ESMTP postern\r\n";
  }

private:
  void afterTls(LoginOutput&) override { helo_.clear(); } // RFC 3207 §4.2: greet again

  void lineTooLong(LoginOutput& out) override { out.toClient += "500 5.5.2 Line too long\r\n"; }
  std::string throttledReply() const override {
    return "454 4.7.0 Too many failed logins, try again later\r\n";
  }
  std::string unavailableReply() const override {
    return "454 4.7.0 Temporary authentication failure\r\n";
  }

  std::string ehloReply() const {
    std::vector<std::string> lines;
    for (const std::string& line : offer_.capabilities) {
      if (!isLocalExtension(line)) {
        lines.push_back(line);
      }
    }
    if (startTlsOffered()) {
      lines.emplace_back("STARTTLS");
    }
    if (authAllowedNow()) {
      if (std::string list = mechanisms_.list(); !list.empty()) {
        lines.push_back("AUTH " + list);
      }
    }
    std::string out = "250";
    out += lines.empty() ? " " : "-";
    out += policy_.hostname + "\r\n";
    for (std::size_t i = 0; i < lines.size(); ++i) {
      out += (i + 1 == lines.size() ? "250 " : "250-") + lines[i] + "\r\n";
    }
    return out;
  }

  void line(std::string_view raw, LoginOutput& out) override {
    std::optional<Command> parsed = smtp::parseCommand(raw);
    if (!parsed) {
      out.toClient += smtp::kInvalidCharacters; // SPEC §5.1
      return;
    }
    auto [verb, arguments] = *parsed;
    if (smtp::isAddressClaim(verb)) {
      out.toClient += smtp::kNotPermitted; // SPEC §5.1, as in passthrough
      return;
    }
    if (equalsNoCase(verb, "EHLO") || equalsNoCase(verb, "HELO")) {
      if (arguments.empty()) {
        out.toClient += "501 5.5.4 Syntax: " + std::string(verb) + " hostname\r\n";
        return;
      }
      helo_ = std::string(splitWord(arguments).first);
      out.toClient += equalsNoCase(verb, "EHLO") ? ehloReply() : "250 " + policy_.hostname + "\r\n";
    } else if (equalsNoCase(verb, "STARTTLS")) {
      startTls(arguments, out);
    } else if (equalsNoCase(verb, "AUTH")) {
      authenticate(arguments, out);
    } else if (equalsNoCase(verb, "NOOP") || equalsNoCase(verb, "RSET")) {
      out.toClient += "250 2.0.0 Ok\r\n";
    } else if (equalsNoCase(verb, "QUIT")) {
      out.toClient += "221 2.0.0 Bye\r\n";
      out.quit = true;
    } else if (equalsNoCase(verb, "MAIL") || equalsNoCase(verb, "RCPT") ||
               equalsNoCase(verb, "DATA") || equalsNoCase(verb, "BDAT") ||
               equalsNoCase(verb, "VRFY") || equalsNoCase(verb, "EXPN")) {
      out.toClient += "530 5.7.0 Authentication required\r\n";
    } else {
      out.toClient += "502 5.5.2 Error: command not recognized\r\n";
    }
  }

  void startTls(std::string_view arguments, LoginOutput& out) {
    if (tls_) {
      out.toClient += "503 5.5.1 Error: TLS already active\r\n";
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!startTlsOffered()) {
      out.toClient += "502 5.5.1 Error: command not implemented\r\n";
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    if (!arguments.empty()) {
      out.toClient += "501 5.5.4 Syntax: STARTTLS\r\n";
      out.events.push_back({Event::StartTlsRefused});
      return;
    }
    acceptStartTls("554 5.5.1 Error: commands pipelined after STARTTLS\r\n",
                   "220 2.0.0 Ready to start TLS\r\n", out);
  }

  void authenticate(std::string_view arguments, LoginOutput& out) {
    auto [name, initial] = splitWord(arguments);
    if (!policy_.allowAuth) {
      out.toClient += "503 5.5.1 Error: authentication not enabled\r\n";
      return;
    }
    if (!authAllowedNow()) {
      out.toClient += "530 5.7.0 Must issue a STARTTLS command first\r\n";
      out.events.push_back({Event::AuthRefusedPlaintext, mechanismLabel(name)});
      return;
    }
    if (helo_.empty()) {
      out.toClient += "503 5.5.1 Error: send EHLO first\r\n";
      return;
    }
    if (name.empty()) {
      out.toClient += "501 5.5.4 Syntax: AUTH mechanism\r\n";
      return;
    }
    startSasl(name, given(initial), out);
  }

  SaslReplies saslReplies() const override {
    return {"334 ",
            "504 5.5.4 Unsupported authentication mechanism\r\n",
            "501 5.5.2 Error: invalid base64 data\r\n",
            "535 5.7.8 Error: authentication failed: invalid authentication data\r\n",
            "501 5.7.0 Error: authentication cancelled\r\n",
            ""};
  }

  void saslCaptured(Credentials credentials, LoginOutput& out) override {
    out.clientHelo = helo_;
    captured(std::move(credentials), out);
  }

  std::string helo_;
};

class SmtpReplay final : public LineReplay {
public:
  using LineReplay::LineReplay;

  Result start() override {
    if (!context_.greeted) {
      return {};
    }
    return ehlo();
  }

private:
  enum class State { Greeting, Ehlo, Auth };

  Result ehlo() {
    state_ = State::Ehlo;
    capabilities_.clear();
    first_ = true;
    const std::string& name = context_.clientHelo.empty() ? context_.hostname : context_.clientHelo;
    return send("EHLO " + name + "\r\n");
  }

  Result line(std::string_view raw) override {
    smtp::ReplyLine reply = smtp::parseReply(raw);
    switch (state_) {
    case State::Greeting:
      if (reply.code != "220") {
        return failed("not an SMTP greeting");
      }
      return reply.last ? ehlo() : Result{};
    case State::Ehlo:
      if (reply.code != "250") {
        return failed("EHLO refused");
      }
      if (!first_) {
        capabilities_.emplace_back(reply.text);
      }
      first_ = false;
      return reply.last ? authenticate() : Result{};
    case State::Auth:
      if (reply.code == "334") {
        return nextResponse();
      }
      if (!reply.last) {
        verdict_.append(raw);
        return {};
      }
      return verdict(reply.code.starts_with('2'), raw);
    }
    return {};
  }

  Result authenticate() {
    state_ = State::Auth;
    std::vector<std::string> auth = mechanismsIn(capabilities_, "AUTH");
    if (auto replayed = replaySasl(auth, "AUTH ", true)) { // RFC 4954: initial responses
      return std::move(*replayed);
    }
    return replayLoginMechanism(auth, "AUTH ");
  }

  State state_ = State::Greeting;
  bool first_ = true;
};

} // namespace

std::unique_ptr<LoginDialogue> makeSmtpLogin(const Policy& policy, BackendOffer offer) {
  return std::make_unique<SmtpLogin>(policy, std::move(offer));
}

std::unique_ptr<LoginReplay> makeSmtpReplay(Credentials credentials, ReplayContext context) {
  return std::make_unique<SmtpReplay>(std::move(credentials), std::move(context));
}

} // namespace protocol
