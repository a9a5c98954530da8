// Authentication failure counting (SPEC §8).
#include "proxy/session/auth_throttle.h"

#include <algorithm>
#include <functional>

namespace session {

namespace {

// Keys: "a|<address>" and "u|<address>|<hash of the user>" (a user name may be kilobytes long;
// a collision only shares a count).
std::string addressKey(const std::string& address) { return "a|" + address; }
std::string userKey(const std::string& address, const std::string& user) {
  return "u|" + address + "|" + std::to_string(std::hash<std::string>{}(user));
}
// The user alone, whatever the address: a distributed guess spreads over many addresses.
std::string anywhereKey(const std::string& user) {
  return "g|" + std::to_string(std::hash<std::string>{}(user));
}

constexpr std::size_t kMaxTracked = 200000; // bounded memory under a spray of addresses

} // namespace

AuthThrottle::AuthThrottle(const config::Limits& limits)
    : beforeDelay_(limits.auth_failures_before_delay),
      window_(static_cast<std::uint64_t>(limits.auth_failure_window.count())),
      maxDelay_(static_cast<std::uint64_t>(limits.auth_max_delay.count())),
      beforeBlock_(limits.auth_failures_before_block),
      block_(static_cast<std::uint64_t>(limits.auth_block.count())) {}

AuthThrottle::Count& AuthThrottle::at(const std::string& key, std::uint64_t nowMs) {
  Count& count = counts_[key];
  if (count.failures > 0 && nowMs - count.since >= window_ && nowMs >= count.blockedUntil) {
    count = Count{};
  }
  if (count.failures == 0) {
    count.since = nowMs;
  }
  return count;
}

std::chrono::milliseconds AuthThrottle::delayFor(std::uint32_t failures,
                                                 std::uint32_t threshold) const {
  if (threshold == 0 || failures < threshold) {
    return std::chrono::milliseconds(0);
  }
  std::uint32_t doublings = std::min<std::uint32_t>(failures - threshold, 30);
  std::uint64_t delay = std::min<std::uint64_t>(1000ULL << doublings, maxDelay_);
  return std::chrono::milliseconds(delay);
}

AuthThrottle::Decision AuthThrottle::attempt(const std::string& address, const std::string& user,
                                             std::uint64_t nowMs) {
  std::lock_guard lock(mutex_);
  prune(nowMs);
  Decision decision;
  Count& byAddress = at(addressKey(address), nowMs);
  if (byAddress.blockedUntil > nowMs) {
    decision.blocked = true;
    return decision;
  }
  Count& byUser = at(userKey(address, user), nowMs);
  // SPEC §8: failures for one user from many addresses delay too (four times the per-user
  // threshold), but never block: the owner of the account must still be able to log in.
  Count& anywhere = at(anywhereKey(user), nowMs);
  decision.delay = std::max({delayFor(byAddress.failures, beforeDelay_ * 4),
                             delayFor(byUser.failures, beforeDelay_),
                             delayFor(anywhere.failures, beforeDelay_ * 4)});
  ++byUser.failures;
  ++byAddress.failures;
  ++anywhere.failures;
  if (beforeBlock_ > 0 && byAddress.failures >= beforeBlock_) {
    byAddress.blockedUntil = nowMs + block_;
  }
  return decision;
}

void AuthThrottle::succeeded(const std::string& address, const std::string& user) {
  std::lock_guard lock(mutex_);
  counts_.erase(userKey(address, user));
  auto anywhere = counts_.find(anywhereKey(user));
  if (anywhere != counts_.end() && anywhere->second.failures > 0) {
    --anywhere->second.failures; // refunded, like the address: others may still be guessing
  }
  auto byAddress = counts_.find(addressKey(address));
  if (byAddress != counts_.end() && byAddress->second.failures > 0 &&
      byAddress->second.blockedUntil == 0) {
    --byAddress->second.failures;
  }
}

std::size_t AuthThrottle::tracked() {
  std::lock_guard lock(mutex_);
  return counts_.size();
}

void AuthThrottle::prune(std::uint64_t nowMs) {
  // Forget expired counts now and then (or at once when the table is full).
  if (nowMs - prunedAt_ < 60000 && counts_.size() < kMaxTracked) {
    return;
  }
  prunedAt_ = nowMs;
  std::erase_if(counts_, [&](const auto& entry) {
    return nowMs - entry.second.since >= window_ && nowMs >= entry.second.blockedUntil;
  });
  if (counts_.size() >= kMaxTracked) {
    // Still full of live entries: drop the per-user ones first (addresses keep their blocks).
    std::erase_if(counts_, [](const auto& entry) {
      return entry.first.starts_with("u|") || entry.first.starts_with("g|");
    });
  }
}

} // namespace session
