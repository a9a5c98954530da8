// A backend pool: its servers (resolved to socket addresses), their counters and the balancer.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/backend/balancer.h"
#include "proxy/backend/health.h"
#include "tls/context.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace backend {

struct Server {
  std::string name;                      // as configured ("imap-2.internal:143"), the metrics label
  bool up = true;                        // servers start up; `fall` failures in a row take one down
  std::uint32_t failures = 0;            // consecutive failed checks (active or passive)
  std::uint32_t successes = 0;           // consecutive good checks while down
  std::vector<std::string> capabilities; // as the last health check saw them
  std::string host;                      // as configured: the TLS server name to send and verify
  sockaddr_storage address{};
  std::string addressText; // the resolved ip:port, for logs
  std::size_t active = 0;  // sessions using it now
  metrics::ServerMetrics metrics;
};

class Pool {
public:
  // Resolves each server's host once (blocking; called at start-up, before the loop runs).
  Pool(const config::Backend& config, metrics::Registry& registry);

  const config::Backend& config() const { return config_; }
  std::vector<Server>& servers() { return servers_; }
  metrics::BackendMetrics& metrics() { return metrics_; }

  // The server for a new connection attempt, or nullptr when none is left to try. `key` is
  // the client address (source_hash) or user (user_hash).
  // The chosen server counts the session as active until release().
  Server* pick(const std::vector<const Server*>& tried, std::string_view key);
  void release(Server& server);

  // A check's verdict: `active` for health checks, false for real sessions (passive). Flips the
  // server after `fall` failures or `rise` successes in a row.
  void report(Server& server, bool ok, bool active, const std::string& reason);
  // Starts a health checker per server, speaking `protocol`.
  void startHealthChecks(uv_loop_t* loop, config::Protocol protocol);
  void stopHealthChecks();

  // For `tls = "implicit"` pools: the context new backend connections are made with.
  tls::ClientContext* tlsContext() { return tlsContext_.get(); }
  // Set when the pool cannot work (its TLS context did not load).
  const std::string& error() const { return error_; }

private:
  config::Backend config_;
  std::vector<Server> servers_;
  std::unique_ptr<Balancer> balancer_;
  metrics::BackendMetrics metrics_;
  std::shared_ptr<tls::ClientContext> tlsContext_;
  std::vector<Candidate> candidates_; // scratch for pick(), kept to avoid an allocation each time
  std::vector<std::unique_ptr<HealthChecker>> checkers_;
  std::string error_;
};

} // namespace backend
