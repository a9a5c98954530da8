// A polite health check as a pure dialogue (SPEC §7): expect the greeting, ask for capabilities,
// say goodbye (LOGOUT/QUIT, never a bare close that fills the server's logs).
#include "proxy/protocol/health_probe.h"

#include "proxy/protocol/imap/imap_syntax.h"
#include "proxy/protocol/pop3/pop3_syntax.h"
#include "proxy/protocol/registry.h"
#include "proxy/protocol/smtp/smtp_syntax.h"

namespace protocol {

HealthProbe::HealthProbe(config::Protocol protocol, std::string hostname, bool greeted)
    : protocol_(protocol), hostname_(std::move(hostname)),
      state_(greeted ? State::Capabilities : State::Greeting) {}

HealthProbe::Result HealthProbe::fail(std::string reason) {
  state_ = State::Finished;
  Result result;
  result.step = Step::Failed;
  result.reason = std::move(reason);
  return result;
}

HealthProbe::Result HealthProbe::start() {
  return state_ == State::Capabilities ? askCapabilities() : Result{};
}

HealthProbe::Result HealthProbe::askCapabilities() {
  state_ = State::Capabilities;
  Result result;
  result.step = Step::Send;
  switch (protocol_) {
  case config::Protocol::Imap:
    result.toBackend = "H1 CAPABILITY\r\n";
    break;
  case config::Protocol::Pop3:
    result.toBackend = "CAPA\r\n";
    break;
  case config::Protocol::Smtp:
    result.toBackend = "EHLO " + hostname_ + "\r\n";
    break;
  }
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
  Result goodbye;
  goodbye.step = Step::Send;
  goodbye.toBackend = protocol_ == config::Protocol::Imap ? "H2 LOGOUT\r\n" : "QUIT\r\n";
  switch (state_) {
  case State::Greeting: {
    // PREAUTH is no health: a server that skips login is misconfigured for a proxy.
    if (!greetingIsReady(protocol_, text) || startsWithNoCase(text, "* PREAUTH") ||
        text.size() < 3) {
      return fail("unexpected greeting: " + std::string(text.substr(0, 80)));
    }
    if (protocol_ == config::Protocol::Smtp && !smtp::parseReply(text).last) {
      return {}; // a multi-line greeting goes on
    }
    return askCapabilities();
  }
  case State::Capabilities:
    switch (protocol_) {
    case config::Protocol::Imap:
      if (text.starts_with("* ")) {
        if (auto atoms = imap::capabilities(text)) {
          capabilities_ = std::move(*atoms);
        }
      } else if (std::string_view status = imap::taggedStatus(text, "H1"); !status.empty()) {
        if (!equalsNoCase(status, "OK")) {
          return fail("CAPABILITY failed: " + std::string(text.substr(0, 80)));
        }
        state_ = State::Goodbye;
        return goodbye;
      }
      return {};
    case config::Protocol::Pop3:
      if (capabilities_.empty() && pop3::isError(text)) {
        state_ = State::Goodbye; // CAPA is optional (RFC 2449); the server still answered
        return goodbye;
      }
      if (pop3::isEnd(text)) {
        state_ = State::Goodbye;
        return goodbye;
      }
      if (!pop3::isOk(text)) {
        capabilities_.emplace_back(pop3::unstuffed(text));
      }
      return {};
    case config::Protocol::Smtp: {
      smtp::ReplyLine reply = smtp::parseReply(text);
      if (reply.code != "250") {
        return fail("EHLO failed: " + std::string(text.substr(0, 80)));
      }
      if (!reply.text.empty()) {
        capabilities_.emplace_back(reply.text);
      }
      if (reply.last) {
        if (!capabilities_.empty()) {
          capabilities_.erase(capabilities_.begin()); // the first line is the server's name
        }
        state_ = State::Goodbye;
        return goodbye;
      }
      return {};
    }
    }
    return {};
  case State::Goodbye: {
    // The server acknowledged the goodbye: the check is over, the server is healthy.
    bool tagged = protocol_ != config::Protocol::Imap || !imap::taggedStatus(text, "H2").empty();
    if (!tagged) {
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
