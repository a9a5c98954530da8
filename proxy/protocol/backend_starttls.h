// Backend-side STARTTLS as a pure dialogue (SPEC §5): read the greeting, ask for capabilities,
// ask for STARTTLS, and fail closed on anything else. No sockets, no TLS.
#pragma once

#include "config/model.h"
#include "proxy/protocol/line_reader.h"

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
    Ready,    // (SMTP XCLIENT) done: relay greetingForClient() and then everything
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

// A Failed result.
inline BackendStartTls::Result failed(BackendStartTls::Failure failure, std::string reason) {
  BackendStartTls::Result result;
  result.step = BackendStartTls::Step::Failed;
  result.failure = failure;
  result.reason = std::move(reason);
  return result;
}

std::unique_ptr<BackendStartTls> makeImapBackendStartTls();
std::unique_ptr<BackendStartTls> makePop3BackendStartTls();
std::unique_ptr<BackendStartTls> makeSmtpBackendStartTls(std::string_view hostname);

// The server's answer to STARTTLS (`accepted`: its OK), read with what followed it in `reader`:
// the go-ahead only when nothing followed (response injection: bytes after the go-ahead would
// be read as if they came over TLS).
inline BackendStartTls::Result answerToStartTls(bool accepted, std::string_view text,
                                                const LineReader& reader) {
  if (!accepted) {
    return failed(BackendStartTls::Failure::Refused, "STARTTLS refused: " + std::string(text));
  }
  if (!reader.empty()) {
    return failed(BackendStartTls::Failure::Injection, "bytes after the STARTTLS reply");
  }
  BackendStartTls::Result result;
  result.step = BackendStartTls::Step::StartTls;
  return result;
}

// SMTP XCLIENT (Postfix): after the greeting (or after backend STARTTLS, when `greeting` is the
// one the client is to see), EHLO; when the server offers XCLIENT, send `command` and relay the
// server's new greeting instead. Not offered or refused: the session goes on without it.
class SmtpXclient {
public:
  SmtpXclient(std::string_view hostname, std::string command, std::string greeting);
  // The first step when the greeting is already known (after backend STARTTLS): send EHLO.
  BackendStartTls::Result start();
  BackendStartTls::Result fromBackend(std::span<const char> data);
  const std::string& greetingForClient() const { return greeting_; }
  bool forwarded() const { return forwarded_; }

private:
  enum class State { Greeting, Ehlo, Xclient };
  std::string hostname_;
  std::string command_;
  std::string greeting_;
  std::string reply_;
  State state_;
  bool offered_ = false;
  bool forwarded_ = false;
  LineReader reader_{8192};
};

// "XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP\r\n" for a client address.
std::string xclientCommand(const std::string& ip, bool ipv6, unsigned port);

} // namespace protocol
