// A backend pool: its servers (resolved to socket addresses), their counters and the balancer.
#include "proxy/backend/pool.h"

#include "proxy/log.h"
#include "proxy/net/tcp_stream.h"

#include <netdb.h>

#include <algorithm>
#include <cstring>

namespace backend {

Pool::Pool(const config::Backend& config, metrics::Registry& registry)
    : config_(config), balancer_(makeBalancer(config.balance)),
      metrics_(registry.backend(config.name)) {
  if (config.tls != config::TlsMode::None) {
    auto context = tls::ClientContext::create(config);
    if (context) {
      tlsContext_ = *context;
    } else {
      error_ = context.error();
    }
  }
  for (const config::ServerAddress& address : config.servers) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* result = nullptr;
    std::string port = std::to_string(address.port);
    int status = getaddrinfo(address.host.c_str(), port.c_str(), &hints, &result);
    if (status != 0 || result == nullptr) {
      logging::error(
          "cannot resolve backend server",
          {{"backend", config.name}, {"server", address.text()}, {"error", gai_strerror(status)}});
      continue;
    }
    Server server;
    server.name = address.text();
    server.host = address.host;
    std::memcpy(&server.address, result->ai_addr, result->ai_addrlen);
    server.addressText = net::formatAddress(server.address);
    server.metrics = registry.server(config.name, server.name, config.tls != config::TlsMode::None);
    freeaddrinfo(result);
    servers_.push_back(std::move(server));
  }
}

Server* Pool::pick(const std::vector<const Server*>& tried, std::string_view key) {
  candidates_.resize(servers_.size());
  for (std::size_t i = 0; i < servers_.size(); ++i) {
    const Server& server = servers_[i];
    bool wasTried = std::find(tried.begin(), tried.end(), &server) != tried.end();
    candidates_[i] = {server.name, server.active, server.up && !wasTried};
  }
  int index = balancer_->pick(candidates_, key);
  if (index < 0) {
    return nullptr;
  }
  Server& chosen = servers_[static_cast<std::size_t>(index)];
  chosen.metrics.selected();
  ++chosen.active;
  chosen.metrics.active(chosen.active);
  return &chosen;
}

void Pool::report(Server& server, bool ok, bool active, const std::string& reason) {
  if (active) {
    server.metrics.healthCheck(ok);
  }
  if (ok) {
    server.failures = 0;
    if (!server.up && ++server.successes >= config_.health.rise) {
      server.up = true;
      server.successes = 0;
      server.metrics.up(true);
      logging::info("backend server up", {{"backend", config_.name}, {"server", server.name}});
    }
    return;
  }
  server.successes = 0;
  if (server.up && ++server.failures >= config_.health.fall) {
    server.up = false;
    server.failures = 0;
    server.metrics.up(false);
    logging::warn("backend server down", {{"backend", config_.name},
                                          {"server", server.name},
                                          {"reason", reason},
                                          {"check", active ? "active" : "passive"}});
  }
}

void Pool::startHealthChecks(uv_loop_t* loop, config::Protocol protocol) {
  for (Server& server : servers_) {
    server.metrics.up(server.up);
    auto checker = std::make_unique<HealthChecker>(loop, *this, server, protocol);
    checker->start();
    checkers_.push_back(std::move(checker));
  }
}

void Pool::stopHealthChecks() {
  for (auto& checker : checkers_) {
    checker->stop();
  }
}

void Pool::release(Server& server) {
  --server.active;
  server.metrics.active(server.active);
}

} // namespace backend
