// SMTP backend STARTTLS (RFC 3207): greeting, EHLO, STARTTLS; a missing STARTTLS, a refusal or
// bytes after the 220 make the backend a failed one. After TLS the client greets for itself.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/smtp/smtp_syntax.h"

namespace protocol {

namespace {

class SmtpBackendStartTls final : public BackendStartTls {
public:
  explicit SmtpBackendStartTls(std::string_view hostname) : hostname_(hostname) {}

  Result fromBackend(std::span<const char> data) override {
    reader_.append(data);
    Result result;
    while (auto line = reader_.nextLine()) {
      std::string_view text = chomp(*line);
      auto [code, last, rest] = smtp::parseReply(*line);
      switch (state_) {
      case State::Greeting:
        if (code != "220") {
          return failed(Failure::Greeting, "greeting was not 220: " + std::string(text));
        }
        if (greeting_.empty()) {
          greeting_ = "220 " + std::string(rest) + "\r\n";
        }
        if (last) {
          state_ = State::Ehlo;
          result.step = Step::Send;
          result.toBackend = "EHLO " + hostname_ + "\r\n";
          return result;
        }
        break;
      case State::Ehlo:
        if (code != "250") {
          return failed(Failure::NoStartTls, "EHLO refused: " + std::string(text));
        }
        if (equalsNoCase(smtp::extensionKeyword(*line), "STARTTLS")) {
          offered_ = true;
        }
        if (last) {
          if (!offered_) {
            return failed(Failure::NoStartTls, "server does not offer STARTTLS");
          }
          state_ = State::StartTls;
          result.step = Step::Send;
          result.toBackend = "STARTTLS\r\n";
          return result;
        }
        break;
      case State::StartTls:
        if (code != "220") {
          return failed(Failure::Refused, "STARTTLS refused: " + std::string(text));
        }
        if (!last || !reader_.empty()) {
          return failed(Failure::Injection, "bytes after the STARTTLS reply");
        }
        result.step = Step::StartTls;
        return result;
      }
    }
    if (reader_.tooLong()) {
      return failed(Failure::Greeting, "line too long");
    }
    return result;
  }

  std::string greetingForClient() const override { return greeting_; }

private:
  enum class State { Greeting, Ehlo, StartTls };

  std::string hostname_;
  LineReader reader_{8192};
  State state_ = State::Greeting;
  bool offered_ = false;
  std::string greeting_;
};

} // namespace

std::unique_ptr<BackendStartTls> makeSmtpBackendStartTls(std::string_view hostname) {
  return std::make_unique<SmtpBackendStartTls>(hostname);
}

std::string xclientCommand(const std::string& ip, bool ipv6, unsigned port) {
  // NAME=[UNAVAILABLE] stops the server from keeping postern's own name for the client.
  return "XCLIENT NAME=[UNAVAILABLE] ADDR=" + std::string(ipv6 ? "IPV6:" : "") + ip +
         " PORT=" + std::to_string(port) + " PROTO=ESMTP\r\n";
}

SmtpXclient::SmtpXclient(std::string_view hostname, std::string command, std::string greeting)
    : hostname_(hostname), command_(std::move(command)), greeting_(std::move(greeting)),
      state_(greeting_.empty() ? State::Greeting : State::Ehlo) {}

BackendStartTls::Result SmtpXclient::start() {
  BackendStartTls::Result result;
  result.step = BackendStartTls::Step::Send;
  result.toBackend = "EHLO " + hostname_ + "\r\n";
  return result;
}

BackendStartTls::Result SmtpXclient::fromBackend(std::span<const char> data) {
  using Step = BackendStartTls::Step;
  reader_.append(data);
  BackendStartTls::Result result;
  while (auto next = reader_.nextLine()) {
    std::string line(*next);
    std::string_view text = chomp(line);
    auto [code, last, rest] = smtp::parseReply(line);
    switch (state_) {
    case State::Greeting:
      if (code != "220") {
        return failed(BackendStartTls::Failure::Greeting,
                      "greeting was not 220: " + std::string(text));
      }
      reply_ += line;
      if (last) {
        greeting_ = reply_;
        reply_.clear();
        state_ = State::Ehlo;
        return start();
      }
      break;
    case State::Ehlo:
      if (code == "250" && equalsNoCase(smtp::extensionKeyword(line), "XCLIENT")) {
        offered_ = true;
      }
      if (last) {
        if (code != "250" || !offered_) {
          result.step = Step::Ready; // nothing to forward the address with
          return result;
        }
        state_ = State::Xclient;
        result.step = Step::Send;
        result.toBackend = command_;
        return result;
      }
      break;
    case State::Xclient:
      reply_ += line;
      if (last) {
        // A 220 is the server's new greeting for the (now described) client.
        if (code == "220") {
          greeting_ = reply_;
          forwarded_ = true;
        }
        result.step = Step::Ready;
        return result;
      }
      break;
    }
  }
  if (reader_.tooLong()) {
    return failed(BackendStartTls::Failure::Greeting, "line too long");
  }
  reader_.compact();
  return result;
}

} // namespace protocol
