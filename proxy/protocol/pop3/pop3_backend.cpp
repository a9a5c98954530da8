// POP3 backend STLS (RFC 2595 §4): greeting, CAPA, STLS; a missing STLS, a refusal or bytes
// after the go-ahead make the backend a failed one.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/pop3/pop3_syntax.h"

namespace protocol {

namespace {

class Pop3BackendStartTls final : public BackendStartTls {
public:
  Result fromBackend(std::span<const char> data) override {
    reader_.append(data);
    Result result;
    while (auto line = reader_.nextLine()) {
      std::string_view text = chomp(*line);
      switch (state_) {
      case State::Greeting:
        if (!pop3::isOk(text)) {
          return failed(Failure::Greeting, "greeting was not \"+OK\": " + std::string(text));
        }
        if (std::string rest = withoutResponseCodes(text.substr(3)); !rest.empty()) {
          greeting_ = "+OK " + rest + "\r\n"; // SPEC §5.1: codes removed wherever they stand
        } else {
          greeting_ = "+OK\r\n";
        }
        state_ = State::CapaStatus;
        result.step = Step::Send;
        result.toBackend = "CAPA\r\n";
        return result;
      case State::CapaStatus:
        if (!pop3::isOk(text)) {
          return failed(Failure::NoStartTls, "server does not offer STLS (no CAPA)");
        }
        state_ = State::CapaLines;
        break;
      case State::CapaLines:
        if (pop3::isEnd(text)) {
          if (!offered_) {
            return failed(Failure::NoStartTls, "server does not offer STLS");
          }
          state_ = State::Stls;
          result.step = Step::Send;
          result.toBackend = "STLS\r\n";
          return result;
        }
        offered_ = offered_ || equalsNoCase(pop3::capabilityKeyword(text), "STLS");
        break;
      case State::Stls:
        return answerToStartTls(pop3::isOk(text), text, reader_);
      }
    }
    if (reader_.tooLong()) {
      return failed(Failure::Greeting, "line too long");
    }
    return result;
  }

  std::string greetingForClient() const override { return greeting_; }

private:
  enum class State { Greeting, CapaStatus, CapaLines, Stls };

  LineReader reader_{8192};
  State state_ = State::Greeting;
  bool offered_ = false;
  std::string greeting_;
};

} // namespace

std::unique_ptr<BackendStartTls> makePop3BackendStartTls() {
  return std::make_unique<Pop3BackendStartTls>();
}

} // namespace protocol
