// What the three line-oriented filters share: the policy, TLS state, one line reader per
// direction, and the hand-over to plain relaying.
#pragma once

#include "proxy/protocol/filter.h"
#include "proxy/protocol/line_reader.h"

namespace protocol {

class LineFilter : public Filter {
public:
  void clientEnded(Output& out) override { out.toBackend += client_.takeAll(); }
  void backendEnded(Output& out) override { out.toClient += backend_.takeAll(); }
  std::size_t heldFromClient() const override { return client_.pending().size(); }

protected:
  explicit LineFilter(const Policy& policy)
      : policy_(policy), tls_(policy.listenerTls == config::TlsMode::Implicit),
        client_(policy.maxLineLength), backend_(policy.maxLineLength) {}

  // Once relaying, bytes pass untouched; true when they did.
  bool relayedFromClient(std::span<const char> data, Output& out) {
    if (relay_) {
      out.toBackend.append(data.data(), data.size());
    }
    return relay_;
  }
  bool relayedFromBackend(std::span<const char> data, Output& out) {
    if (relay_) {
      out.toClient.append(data.data(), data.size());
    }
    return relay_;
  }

  // Nothing left to rewrite: whatever is buffered goes on as it is, and so does the rest.
  void goRelay(Output& out) {
    relay_ = true;
    out.relayOnly = true;
    out.toBackend += client_.takeAll();
    out.toClient += backend_.takeAll();
  }

  Policy policy_;
  bool tls_;
  LineReader client_;
  LineReader backend_;
  bool relay_ = false;
};

} // namespace protocol
