// A polite health check as a pure dialogue (SPEC §7): expect the greeting, ask for capabilities,
// say goodbye. The capabilities a server reports are kept for login mode.
#pragma once

#include "config/model.h"
#include "proxy/protocol/line_reader.h"

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace protocol {

// One protocol's side of the polite check, as its folder defines it (imap_probe.cpp, ...).
enum class ProbeLine { More, Done, Failed };
struct ProbeScript {
  // The command that asks for capabilities (SMTP's EHLO names postern).
  std::string (*askCapabilities)(std::string_view hostname);
  // Whether a greeting line is followed by more (SMTP "220-").
  bool (*greetingGoesOn)(std::string_view text);
  // One line of the answer (CRLF removed); the capabilities it carries go to `capabilities`.
  ProbeLine (*capabilityLine)(std::string_view text, std::vector<std::string>& capabilities);
  const char* goodbye;
  // Whether a line answers the goodbye (IMAP: the tagged reply, not the untagged BYE).
  bool (*goodbyeAnswered)(std::string_view text);
  // After STARTTLS the server lists its capabilities again unasked (ManageSieve, RFC 5804
  // §2.2): the probe reads that list instead of asking.
  bool capabilitiesFollowTls = false;
};

const ProbeScript& imapProbe();
const ProbeScript& pop3Probe();
const ProbeScript& smtpProbe();

class HealthProbe {
public:
  enum class Step { NeedMore, Send, Done, Failed };
  struct Result {
    Step step = Step::NeedMore;
    std::string toBackend;
    std::string reason;
  };

  // `greeted`: the greeting was read already (by backend STARTTLS); start() asks for
  // capabilities at once.
  HealthProbe(config::Protocol protocol, std::string hostname, bool greeted);

  Result start();
  Result fromBackend(std::span<const char> data);
  const std::vector<std::string>& capabilities() const { return capabilities_; }

private:
  enum class State { Greeting, Capabilities, Goodbye, Finished };
  Result askCapabilities();
  Result line(std::string_view text);
  Result fail(std::string reason);

  config::Protocol protocol_;
  const ProbeScript& script_;
  std::string hostname_;
  State state_;
  LineReader reader_{8192};
  std::vector<std::string> capabilities_;
};

} // namespace protocol
