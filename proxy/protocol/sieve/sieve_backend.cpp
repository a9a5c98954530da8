// ManageSieve backend STARTTLS (RFC 5804 §2.2): the greeting's capability list must offer
// STARTTLS; then STARTTLS, and an OK with nothing after it. A refusal, a missing STARTTLS or
// bytes after the go-ahead make the backend a failed one.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/sieve/sieve.h"
#include "proxy/protocol/sieve/sieve_syntax.h"

namespace protocol {

namespace {

class SieveBackendStartTls final : public BackendStartTls {
public:
  Result fromBackend(std::span<const char> data) override {
    reader_.append(data);
    Result result;
    while (auto line = reader_.nextLine()) {
      std::string_view text = chomp(*line);
      std::optional<sieve::Response> status = sieve::parseResponse(text);
      if (state_ == State::Greeting) {
        if (!status) {
          std::optional<sieve::Capability> capability = sieve::parseCapability(text);
          offered_ = offered_ || (capability && equalsNoCase(capability->name, "STARTTLS"));
          continue;
        }
        if (!equalsNoCase(status->status, "OK")) {
          return failed(Failure::Greeting, "greeting was not OK: " + std::string(text));
        }
        if (!offered_) {
          return failed(Failure::NoStartTls, "server does not offer STARTTLS");
        }
        state_ = State::StartTls;
        result.step = Step::Send;
        result.toBackend = "STARTTLS\r\n";
        return result;
      }
      if (!status) {
        continue;
      }
      return answerToStartTls(equalsNoCase(status->status, "OK"), text, reader_);
    }
    if (reader_.tooLong()) {
      return failed(Failure::Greeting, "line too long");
    }
    return result;
  }

  // Nothing said before TLS reaches the client: after the handshake the server sends its
  // capability list again (RFC 5804 §2.2), and that list is the greeting the client sees.
  std::string greetingForClient() const override { return {}; }

private:
  enum class State { Greeting, StartTls };
  LineReader reader_{8192};
  State state_ = State::Greeting;
  bool offered_ = false;
};

} // namespace

std::unique_ptr<BackendStartTls> makeSieveBackendStartTls(std::string_view) {
  return std::make_unique<SieveBackendStartTls>();
}

} // namespace protocol
