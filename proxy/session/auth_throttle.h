// Abuse control for login mode (SPEC §8): authentication failures counted per client address
// (IPv6 by /64), per address+user and per user alone within a window; past a threshold each attempt
// waits a doubling delay, and an address with too many failures is refused for a while. Failures
// only: an attempt counts as a failure when it starts (so parallel attempts cannot all slip under
// the threshold together) and is refunded when the server accepts it. Pure (the caller passes the
// clock) and thread-safe (workers share one per listener).
#pragma once

#include "config/model.h"

#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace session {

class AuthThrottle {
public:
  explicit AuthThrottle(const config::Limits& limits);

  struct Decision {
    bool blocked = false;               // refuse it (not counted)
    std::chrono::milliseconds delay{0}; // wait this long before replaying it
  };
  // An attempt from `address` (already /64-reduced for IPv6) for `user` is about to be made.
  Decision attempt(const std::string& address, const std::string& user, std::uint64_t nowMs);
  // The server accepted it: not a failure after all.
  void succeeded(const std::string& address, const std::string& user);
  std::size_t tracked();

private:
  struct Count {
    std::uint32_t failures = 0;
    std::uint64_t since = 0;        // start of the window
    std::uint64_t blockedUntil = 0; // addresses only
  };
  Count& at(const std::string& key, std::uint64_t nowMs);
  void prune(std::uint64_t nowMs);
  std::chrono::milliseconds delayFor(std::uint32_t failures, std::uint32_t threshold) const;

  std::mutex mutex_;
  std::uint32_t beforeDelay_;
  std::uint64_t window_;
  std::uint64_t maxDelay_;
  std::uint32_t beforeBlock_;
  std::uint64_t block_;
  std::unordered_map<std::string, Count> counts_;
  std::uint64_t prunedAt_ = 0;
};

} // namespace session
