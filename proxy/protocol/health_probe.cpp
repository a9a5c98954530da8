// A polite health check as a pure dialogue (SPEC §7): expect the greeting, ask for capabilities,
// say goodbye (LOGOUT/QUIT, never a bare close that fills the server's logs).
#include "proxy/protocol/health_probe.h"

#include "proxy/protocol/registry.h"

namespace protocol {

HealthProbe::HealthProbe(config::Protocol protocol, std::string hostname, bool greeted)
    : protocol_(protocol), script_(*info(protocol).probe), hostname_(std::move(hostname)),
      state_(greeted ? State::Capabilities : State::Greeting) {}

HealthProbe::Result HealthProbe::fail(std::string reason) {
  state_ = State::Finished;
  Result result;
  result.step = Step::Failed;
  result.reason = std::move(reason);
  return result;
}

HealthProbe::Result HealthProbe::start() {
  if (state_ != State::Capabilities || script_.capabilitiesFollowTls) {
    return {};
  }
  return askCapabilities();
}

HealthProbe::Result HealthProbe::askCapabilities() {
  state_ = State::Capabilities;
  Result result;
  result.step = Step::Send;
  result.toBackend = script_.askCapabilities(hostname_);
  return result;
}

HealthProbe::Result HealthProbe::fromBackend(std::span<const char> data) {
  reader_.append(data);
  while (auto next = reader_.nextLine()) {
    Result result = line(chomp(*next));
    if (result.step != Step::NeedMore) {
      return result;
    }
  }
  if (reader_.tooLong()) {
    return fail("line too long");
  }
  reader_.compact();
  return {};
}

HealthProbe::Result HealthProbe::line(std::string_view text) {
  switch (state_) {
  case State::Greeting:
    // PREAUTH is no health: a server that skips login is misconfigured for a proxy.
    if (!info(protocol_).greetingIsReady(text) || startsWithNoCase(text, "* PREAUTH") ||
        text.size() < 3) {
      return fail("unexpected greeting: " + std::string(text.substr(0, 80)));
    }
    if (script_.greetingGoesOn(text)) {
      return {}; // a multi-line greeting goes on
    }
    return askCapabilities();
  case State::Capabilities:
    switch (script_.capabilityLine(text, capabilities_)) {
    case ProbeLine::More:
      return {};
    case ProbeLine::Failed:
      return fail("capabilities refused: " + std::string(text.substr(0, 80)));
    case ProbeLine::Done: {
      state_ = State::Goodbye;
      Result goodbye;
      goodbye.step = Step::Send;
      goodbye.toBackend = script_.goodbye;
      return goodbye;
    }
    }
    return {};
  case State::Goodbye: {
    // The server acknowledged the goodbye: the check is over, the server is healthy.
    if (!script_.goodbyeAnswered(text)) {
      return {};
    }
    state_ = State::Finished;
    Result done;
    done.step = Step::Done;
    return done;
  }
  case State::Finished:
    return {};
  }
  return {};
}

} // namespace protocol
