// A backend pool: its servers (resolved to socket addresses), their counters and the balancer.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/backend/balancer.h"
#include "tls/context.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace backend {

struct Server {
  std::string name; // as configured ("imap-2.internal:143"), the metrics label
  std::string host; // as configured: the TLS server name to send and verify
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
  std::string error_;
};

} // namespace backend
