// What the three line-oriented filters share: the policy, TLS state, one line reader per
// direction, and the hand-over to plain relaying.
#pragma once

#include "proxy/protocol/filter.h"
#include "proxy/protocol/line_reader.h"

namespace protocol {

class LineFilter : public Filter {
public:
  // The client finished sending. What it left unread here (a partial line, lines held behind a
  // SASL command or a deferred STARTTLS) is dropped, never relayed unchecked: a server reads on
  // to the end of its input, and a held "XCLIENT ..." would run there (SPEC §5.1; found by a
  // fuzzer against Dovecot's managesieve-login). Once relaying, nothing is held.
  void clientEnded(Output&) override { client_.discard(); }
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

  // The backend's bytes as lines, each to `response`, the bytes of a literal the server
  // announced ("{n}" at a line's end; `literal` counts what is left of it) passed on as data,
  // until the filter relays, closes or starts TLS. An over-long line closes the session.
  template <typename Response>
  void readBackendLines(std::span<const char> data, std::size_t& literal, Output& out,
                        Response&& response) {
    backend_.append(data);
    while (!relay_ && !out.close && !out.startTls) {
      if (literal > 0) {
        std::string_view raw = backend_.takeRaw(literal);
        if (raw.empty()) {
          break;
        }
        literal -= raw.size();
        out.toClient += raw;
        continue;
      }
      auto line = backend_.nextLine();
      if (!line) {
        out.close = out.close || backend_.tooLong();
        break;
      }
      response(*line);
    }
    backend_.compact();
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
