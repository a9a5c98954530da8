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

// Feeds `script` to a fresh filter split in two at every position; the bytes forwarded and
// answered must not depend on where the reads fell.
template <typename Make>
void expectSplitInvariant(Make make, std::string_view greeting, std::string_view script) {
  Driver whole(make());
  whole.backend(greeting);
  Transcript expected = whole.client(script);
  for (std::size_t cut = 0; cut <= script.size(); ++cut) {
    Driver split(make());
    split.backend(greeting);
    Transcript first = split.client(script.substr(0, cut));
    Transcript second = split.client(script.substr(cut));
    EXPECT_EQ(first.toBackend + second.toBackend, expected.toBackend) << "cut at " << cut;
    EXPECT_EQ(first.toClient + second.toClient, expected.toClient) << "cut at " << cut;
  }
}

} // namespace protocol::testing
