// Drives a protocol filter like a session would, collecting what it sends each way.
#pragma once

#include "proxy/protocol/filter.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

namespace protocol::testing {

struct Transcript {
  std::string toClient;
  std::string toBackend;
  std::vector<Event> events;
  bool startTls = false;
  bool close = false;
  bool relayOnly = false;
};

class Driver {
public:
  explicit Driver(std::unique_ptr<Filter> filter) : filter_(std::move(filter)) {}

  Transcript client(std::string_view bytes) {
    Output out;
    filter_->fromClient(std::span<const char>(bytes.data(), bytes.size()), out);
    return take(out);
  }
  Transcript backend(std::string_view bytes) {
    Output out;
    filter_->fromBackend(std::span<const char>(bytes.data(), bytes.size()), out);
    return take(out);
  }
  Transcript tlsStarted() {
    Output out;
    filter_->tlsStarted(out);
    return take(out);
  }

private:
  static Transcript take(Output& out) {
    Transcript t{out.toClient, out.toBackend, {}, out.startTls, out.close, out.relayOnly};
    for (auto& record : out.events) {
      t.events.push_back(record.event);
    }
    return t;
  }
  std::unique_ptr<Filter> filter_;
};

inline Policy starttlsPolicy(bool requireTls = true, bool allowAuth = true) {
  Policy policy;
  policy.listenerTls = config::TlsMode::StartTls;
  policy.requireTls = requireTls;
  policy.allowAuth = allowAuth;
  return policy;
}

// Feeds `script` to a fresh filter split in two at every position, and the backend's
// `greeting` likewise: what is forwarded and answered, the events, and the close, STARTTLS and
// relay-only decisions must not depend on where the reads fell, in either direction.
inline Transcript joined(Transcript first, const Transcript& second) {
  first.toClient += second.toClient;
  first.toBackend += second.toBackend;
  first.events.insert(first.events.end(), second.events.begin(), second.events.end());
  first.startTls = first.startTls || second.startTls;
  first.close = first.close || second.close;
  first.relayOnly = first.relayOnly || second.relayOnly;
  return first;
}

inline void expectSameTranscript(const Transcript& got, const Transcript& expected,
                                 const std::string& where) {
  EXPECT_EQ(got.toBackend, expected.toBackend) << where;
  EXPECT_EQ(got.toClient, expected.toClient) << where;
  EXPECT_EQ(got.events, expected.events) << where;
  EXPECT_EQ(got.startTls, expected.startTls) << where;
  EXPECT_EQ(got.close, expected.close) << where;
  EXPECT_EQ(got.relayOnly, expected.relayOnly) << where;
}

template <typename Make>
void expectSplitInvariant(Make make, std::string_view greeting, std::string_view script) {
  Driver whole(make());
  Transcript expectedGreeting = whole.backend(greeting);
  Transcript expected = whole.client(script);
  for (std::size_t cut = 0; cut <= script.size(); ++cut) {
    Driver split(make());
    split.backend(greeting);
    Transcript first = split.client(script.substr(0, cut));
    Transcript got = first.close ? first : joined(first, split.client(script.substr(cut)));
    expectSameTranscript(got, expected, "client bytes cut at " + std::to_string(cut));
  }
  for (std::size_t cut = 0; cut <= greeting.size(); ++cut) {
    Driver split(make());
    Transcript first = split.backend(greeting.substr(0, cut));
    Transcript got = first.close ? first : joined(first, split.backend(greeting.substr(cut)));
    expectSameTranscript(got, expectedGreeting, "backend bytes cut at " + std::to_string(cut));
    expectSameTranscript(split.client(script), expected,
                         "after backend bytes cut at " + std::to_string(cut));
  }
}

} // namespace protocol::testing
