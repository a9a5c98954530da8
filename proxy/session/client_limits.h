// Per-client-address limits of one listener (SPEC §8): concurrent sessions and a token bucket
// for new connections. Pure: the caller passes the clock. Thread-safe: workers share it.
#pragma once

#include "metrics/metrics.h"

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace session {

class ClientLimits {
public:
  ClientLimits(std::uint32_t maxConnections, std::uint32_t connectsPerSecond)
      : maxConnections_(maxConnections), rate_(connectsPerSecond) {}

  // A new connection from `address` at `nowMs`: admitted (counted until leave()) or refused.
  std::optional<metrics::RejectReason> admit(const std::string& address, std::uint64_t nowMs);
  void leave(const std::string& address, std::uint64_t nowMs);
  std::size_t tracked() {
    std::lock_guard lock(mutex_);
    return clients_.size();
  }

private:
  struct Client {
    std::uint32_t active = 0;
    double tokens = 0;
    std::uint64_t refilledAt = 0;
  };
  void refill(Client& client, std::uint64_t nowMs) const;
  void prune(std::uint64_t nowMs);

  std::mutex mutex_;
  std::uint32_t maxConnections_;
  double rate_;
  std::unordered_map<std::string, Client> clients_;
};

} // namespace session
