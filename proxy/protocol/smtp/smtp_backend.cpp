// SMTP backend STARTTLS (RFC 3207): greeting, EHLO, STARTTLS; a missing STARTTLS, a refusal or
// bytes after the 220 make the backend a failed one. After TLS the client greets for itself.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/line_reader.h"

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
      bool last = text.size() < 4 || text[3] != '-';
      std::string_view code = text.substr(0, 3);
      switch (state_) {
      case State::Greeting:
        if (code != "220") {
          return fail(Failure::Greeting, "greeting was not 220: " + std::string(text));
        }
        if (greeting_.empty()) {
          greeting_ = "220 " + std::string(text.size() > 4 ? text.substr(4) : "") + "\r\n";
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
          return fail(Failure::NoStartTls, "EHLO refused: " + std::string(text));
        }
        if (text.size() > 4 && equalsNoCase(splitWord(text.substr(4)).first, "STARTTLS")) {
          offered_ = true;
        }
        if (last) {
          if (!offered_) {
            return fail(Failure::NoStartTls, "server does not offer STARTTLS");
          }
          state_ = State::StartTls;
          result.step = Step::Send;
          result.toBackend = "STARTTLS\r\n";
          return result;
        }
        break;
      case State::StartTls:
        if (code != "220") {
          return fail(Failure::Refused, "STARTTLS refused: " + std::string(text));
        }
        if (!last || !reader_.empty()) {
          return fail(Failure::Injection, "bytes after the STARTTLS reply");
        }
        result.step = Step::StartTls;
        return result;
      }
    }
    if (reader_.tooLong()) {
      return fail(Failure::Greeting, "line too long");
    }
    return result;
  }

  std::string greetingForClient() const override { return greeting_; }

private:
  enum class State { Greeting, Ehlo, StartTls };

  static Result fail(Failure failure, std::string reason) {
    Result result;
    result.step = Step::Failed;
    result.failure = failure;
    result.reason = std::move(reason);
    return result;
  }

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

} // namespace protocol
