// A backend pool: its servers (resolved to socket addresses), their counters and the balancer.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/backend/balancer.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

namespace backend {

struct Server {
  std::string name; // as configured ("imap-2.internal:143"), the metrics label
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

  // The server for a new connection attempt, or nullptr when none is left to try.
  Server* pick(const std::vector<const Server*>& tried);

private:
  config::Backend config_;
  std::vector<Server> servers_;
  std::unique_ptr<Balancer> balancer_;
  metrics::BackendMetrics metrics_;
};

} // namespace backend
