// Per-client-address limits of one listener (SPEC §8): concurrent sessions and a token bucket
// for new connections. Pure: the caller passes the clock.
#include "proxy/session/client_limits.h"

#include <algorithm>

namespace session {

void ClientLimits::refill(Client& client, std::uint64_t nowMs) const {
  // The bucket holds one second's worth of connections (the burst) and refills continuously.
  double elapsed = static_cast<double>(nowMs - client.refilledAt) / 1000.0;
  client.tokens = std::min(rate_, client.tokens + elapsed * rate_);
  client.refilledAt = nowMs;
}

std::optional<metrics::RejectReason> ClientLimits::admit(const std::string& address,
                                                         std::uint64_t nowMs) {
  if (clients_.size() > 100000) {
    prune(nowMs); // a flood of distinct addresses must not grow the table without bound
  }
  auto [it, added] = clients_.try_emplace(address);
  Client& client = it->second;
  if (added) {
    client.tokens = rate_;
    client.refilledAt = nowMs;
  } else {
    refill(client, nowMs);
  }
  if (client.tokens < 1.0) {
    return metrics::RejectReason::RateLimit;
  }
  client.tokens -= 1.0;
  if (client.active >= maxConnections_) {
    return metrics::RejectReason::PerIpLimit;
  }
  ++client.active;
  return std::nullopt;
}

void ClientLimits::leave(const std::string& address, std::uint64_t nowMs) {
  std::lock_guard lock(mutex_);
  auto it = clients_.find(address);
  if (it == clients_.end()) {
    return;
  }
  Client& client = it->second;
  if (client.active > 0) {
    --client.active;
  }
  refill(client, nowMs);
  if (client.active == 0 && client.tokens >= rate_) {
    clients_.erase(it); // nothing left to remember about this address
  }
}

void ClientLimits::prune(std::uint64_t nowMs) {
  for (auto it = clients_.begin(); it != clients_.end();) {
    refill(it->second, nowMs);
    if (it->second.active == 0 && it->second.tokens >= rate_) {
      it = clients_.erase(it);
    } else {
      ++it;
    }
  }
}

} // namespace session
