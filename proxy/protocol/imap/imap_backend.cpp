// IMAP backend STARTTLS (RFC 9051 §6.2.1): greeting, CAPABILITY, STARTTLS; PREAUTH, a missing
// STARTTLS, a refusal or bytes after the go-ahead make the backend a failed one.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/line_reader.h"

namespace protocol {

std::string withoutResponseCodes(std::string_view text) {
  while (text.starts_with('[')) {
    std::size_t close = text.find(']');
    if (close == std::string_view::npos) {
      break;
    }
    text.remove_prefix(close + 1);
    while (text.starts_with(' ')) {
      text.remove_prefix(1);
    }
  }
  return std::string(text);
}

namespace {

class ImapBackendStartTls final : public BackendStartTls {
public:
  Result fromBackend(std::span<const char> data) override {
    reader_.append(data);
    Result result;
    while (auto line = reader_.nextLine()) {
      std::string_view text = chomp(*line);
      switch (state_) {
      case State::Greeting:
        if (!startsWithNoCase(text, "* OK")) {
          // PREAUTH would skip the login postern must see happen over TLS; BYE is a refusal.
          return failed(Failure::Greeting, "greeting was not \"* OK\": " + std::string(text));
        }
        greeting_ = "* OK " + withoutResponseCodes(text.size() > 5 ? text.substr(5) : "") + "\r\n";
        state_ = State::Capability;
        result.step = Step::Send;
        result.toBackend = "P1 CAPABILITY\r\n";
        return result;
      case State::Capability:
        if (startsWithNoCase(text, "* CAPABILITY ")) {
          std::string_view atoms = text.substr(13);
          while (!atoms.empty()) {
            auto [atom, rest] = splitWord(atoms);
            offered_ = offered_ || equalsNoCase(atom, "STARTTLS");
            atoms = rest;
          }
        } else if (text.starts_with("P1 ")) {
          if (!offered_) {
            return failed(Failure::NoStartTls, "server does not offer STARTTLS");
          }
          state_ = State::StartTls;
          result.step = Step::Send;
          result.toBackend = "P2 STARTTLS\r\n";
          return result;
        }
        break;
      case State::StartTls:
        if (text.starts_with("P2 ")) {
          if (!startsWithNoCase(text.substr(3), "OK")) {
            return failed(Failure::Refused, "STARTTLS refused: " + std::string(text));
          }
          if (!reader_.empty()) {
            // Response injection: bytes after the go-ahead would be read as if sent over TLS.
            return failed(Failure::Injection, "bytes after the STARTTLS reply");
          }
          result.step = Step::StartTls;
          return result;
        }
        break;
      }
    }
    if (reader_.tooLong()) {
      return failed(Failure::Greeting, "line too long");
    }
    return result;
  }

  std::string greetingForClient() const override { return greeting_; }

private:
  enum class State { Greeting, Capability, StartTls };

  LineReader reader_{8192};
  State state_ = State::Greeting;
  bool offered_ = false;
  std::string greeting_;
};

} // namespace

std::unique_ptr<BackendStartTls> makeImapBackendStartTls() {
  return std::make_unique<ImapBackendStartTls>();
}

} // namespace protocol
