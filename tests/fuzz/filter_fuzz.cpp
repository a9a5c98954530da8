// libFuzzer target for the protocol filters: arbitrary bytes from both sides, any policy, any
// split into reads. Built by the `fuzz` preset (clang); run for a bounded time by the suite.
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/filter.h"
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/registry.h"
#include "tests/fuzz/reads.h"

#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace {

// The input's first byte picks the protocol and policy; the rest is a list of reads separated
// by 0xFF, each starting with a byte that says who sent it (or that TLS started).
void run(const std::uint8_t* data, std::size_t size, protocol::Filter& filter,
         std::size_t maxLine) {
  protocol::Output out;
  bool relay = false;
  bool authenticated = false;
  fuzz::forEachRead(data, size, [&](std::span<const std::uint8_t> read) {
    if (read.empty()) {
      return true;
    }
    std::uint8_t who = read[0];
    std::span<const char> bytes = fuzz::chars(read.subspan(1));
    out.clear();
    if (who == 0xFE) {
      filter.tlsStarted(out);
    } else if (who % 2 == 0) {
      filter.fromClient(bytes, out);
    } else {
      filter.fromBackend(bytes, out);
    }
    // Once a filter hands over to plain relaying, it must pass bytes through unchanged.
    if (relay && (who % 2 == 0) && who != 0xFE && out.toBackend.size() != bytes.size()) {
      std::abort();
    }
    relay = relay || out.relayOnly;
    for (const protocol::EventRecord& record : out.events) {
      authenticated = authenticated || record.event == protocol::Event::Authenticated;
    }
    // SPEC §5.1: before authentication nothing a client sends makes the filter hold more than
    // one line's worth (an overflowing literal count, a flood behind a SASL command, ...).
    if (!out.close && !authenticated && filter.heldFromClient() > maxLine) {
      std::abort();
    }
    return !out.close;
  });
}

// Every protocol of the table, by the selector byte.
const protocol::ProtocolInfo& pick(std::uint8_t selector) {
  std::span<const protocol::ProtocolInfo> rows = protocol::protocols();
  return rows[selector % rows.size()];
}

// Backend-side dialogues (STARTTLS, XCLIENT): whatever the backend says, in any reads.
void runBackend(const std::uint8_t* data, std::size_t size, std::uint8_t selector) {
  const protocol::ProtocolInfo& row = pick(selector);
  std::unique_ptr<protocol::BackendStartTls> upgrade = row.makeBackendStartTls("fuzz.example");
  protocol::SmtpXclient xclient("fuzz.example", protocol::xclientCommand("192.0.2.1", false, 1),
                                "");
  protocol::HealthProbe probe(row.protocol, "fuzz.example", (selector & 0x40) != 0);
  bool upgradeDone = false;
  bool xclientDone = false;
  fuzz::forEachRead(data, size, [&](std::span<const std::uint8_t> read) {
    std::span<const char> bytes = fuzz::chars(read);
    if (!upgradeDone) {
      auto step = upgrade->fromBackend(bytes).step;
      upgradeDone = step == protocol::BackendStartTls::Step::Failed ||
                    step == protocol::BackendStartTls::Step::StartTls;
    }
    probe.fromBackend(bytes);
    if (!xclientDone) {
      auto step = xclient.fromBackend(bytes).step;
      xclientDone = step == protocol::BackendStartTls::Step::Failed ||
                    step == protocol::BackendStartTls::Step::Ready;
    }
    return true;
  });
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) {
    return 0;
  }
  std::uint8_t selector = data[0];
  if ((selector & 0x80) != 0) {
    runBackend(data + 1, size - 1, selector);
    return 0;
  }
  protocol::Policy policy;
  policy.listenerTls = static_cast<config::TlsMode>((selector >> 2) % 3);
  policy.requireTls = policy.listenerTls != config::TlsMode::None && (selector & 0x10) != 0;
  policy.allowAuth = (selector & 0x20) != 0;
  policy.maxLineLength = (selector & 0x40) != 0 ? 64 : 8192;
  std::unique_ptr<protocol::Filter> filter = pick(selector).makeFilter(policy);
  run(data + 1, size - 1, *filter, policy.maxLineLength);
  return 0;
}
