// Backend-side STARTTLS as a pure dialogue (SPEC §5): read the greeting, ask for capabilities,
// ask for STARTTLS, and fail closed on anything else. No sockets, no TLS.
#pragma once

#include "config/model.h"

#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace protocol {

class BackendStartTls {
public:
  enum class Step {
    NeedMore, // nothing to do until the backend says more
    Send,     // send `toBackend`
    StartTls, // the backend agreed: start the TLS handshake now
    Failed,   // the backend is unusable: `reason`
  };
  enum class Failure { Greeting, NoStartTls, Refused, Injection };
  struct Result {
    Step step = Step::NeedMore;
    std::string toBackend;
    Failure failure = Failure::Greeting;
    std::string reason;
  };

  virtual ~BackendStartTls() = default;
  virtual Result fromBackend(std::span<const char> data) = 0;
  // What the client is shown of the plaintext greeting: its status line with response codes
  // removed ("* OK text", "+OK text", "220 text"); nothing else said before TLS is kept.
  virtual std::string greetingForClient() const = 0;
};

std::unique_ptr<BackendStartTls> makeImapBackendStartTls();
std::unique_ptr<BackendStartTls> makePop3BackendStartTls();
std::unique_ptr<BackendStartTls> makeSmtpBackendStartTls(std::string_view hostname);

// "[ALERT] text" -> "text": drops leading bracketed response codes.
std::string withoutResponseCodes(std::string_view text);

} // namespace protocol
