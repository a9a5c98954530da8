// IMAP backend STARTTLS (RFC 9051 §6.2.1): greeting, CAPABILITY, STARTTLS; PREAUTH, a missing
// STARTTLS, a refusal or bytes after the go-ahead make the backend a failed one.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/imap/imap_syntax.h"

namespace protocol {

namespace {

class ImapBackendStartTls final : public BackendStartTls {
public:
  Result fromBackend(std::span<const char> data) override {
    reader_.append(data);
    Result result;
    while (auto line = reader_.nextLine()) {
      std::string_view text = chomp(*line);
      switch (state_) {
      case State::Greeting: {
        std::optional<imap::Status> greeting = imap::parseStatus(text);
        if (!greeting || greeting->tag != "*" || !equalsNoCase(greeting->status, "OK")) {
          // PREAUTH would skip the login postern must see happen over TLS; BYE is a refusal.
          return failed(Failure::Greeting, "greeting was not \"* OK\": " + std::string(text));
        }
        // SPEC §5.1: nothing learned before TLS reaches the client, no code wherever it stood.
        std::string rest = withoutResponseCodes(
            text.substr(greeting->status.data() + greeting->status.size() - text.data()));
        greeting_ = rest.empty() ? "* OK\r\n" : "* OK " + rest + "\r\n";
        state_ = State::Capability;
        result.step = Step::Send;
        result.toBackend = "P1 CAPABILITY\r\n";
        return result;
      }
      case State::Capability:
        if (text.starts_with("* ")) {
          if (auto atoms = imap::capabilities(text)) {
            for (const std::string& atom : *atoms) {
              offered_ = offered_ || equalsNoCase(atom, "STARTTLS");
            }
          }
        } else if (!imap::taggedStatus(text, "P1").empty()) {
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
        if (std::string_view status = imap::taggedStatus(text, "P2"); !status.empty()) {
          return answerToStartTls(equalsNoCase(status, "OK"), text, reader_);
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
