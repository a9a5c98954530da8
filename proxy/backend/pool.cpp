// A backend pool: its servers (every address of every configured name), their state and
// counters, the balancer, health checks and DNS re-resolution.
#include "proxy/backend/pool.h"

#include "proxy/log.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/protocol/login/login.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

namespace backend {

namespace {

bool isLiteral(const std::string& host) {
  in6_addr scratch{};
  return inet_pton(AF_INET, host.c_str(), &scratch) == 1 ||
         inet_pton(AF_INET6, host.c_str(), &scratch) == 1;
}

bool sameAddress(const sockaddr_storage& a, const sockaddr_storage& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

} // namespace

Pool::Pool(const config::Backend& config, metrics::Registry& registry, admin::Control* control)
    : config_(config), registry_(registry), control_(control),
      balancer_(makeBalancer(config.balance)), metrics_(registry.backend(config.name)) {
  if (config.tls != config::TlsMode::None) {
    auto context = tls::ClientContext::create(config);
    if (context) {
      tlsContext_ = *context;
    } else {
      error_ = context.error();
    }
  }
  for (const config::ServerAddress& address : config.servers) {
    entries_.push_back({address, isLiteral(address.host), nullptr});
  }
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    std::string error;
    std::vector<sockaddr_storage> addresses =
        net::resolveNow(entries_[i].address.host, entries_[i].address.port, error);
    if (addresses.empty()) {
      // Not fatal: the name may appear later (a service scaling up); re-resolution adds it.
      logging::error(
          "cannot resolve backend server",
          {{"backend", config.name}, {"server", entries_[i].address.text()}, {"error", error}});
    }
    for (const sockaddr_storage& address : addresses) {
      add(i, address);
    }
  }
}

Pool::~Pool() { stop(); }

Server& Pool::add(std::size_t entry, const sockaddr_storage& address) {
  auto server = std::make_unique<Server>();
  server->entry = entry;
  server->host = entries_[entry].address.host;
  server->address = address;
  server->addressText = net::formatAddress(address);
  // Every address is a server of its own, known by its address: the same in every instance
  // that resolves the same name.
  server->name = server->addressText;
  server->metrics =
      registry_.server(config_.name, server->name, config_.tls != config::TlsMode::None);
  server->metrics.up(true);
  std::size_t order = servers_.size();
  server->control = control_ != nullptr
                        ? control_->server(config_.name, server->name, order, server->metrics)
                        : std::make_shared<admin::ServerControl>(config_.name, server->name, order,
                                                                 server->metrics);
  servers_.push_back(std::move(server));
  identitiesStale_ = true;
  Server& added = *servers_.back();
  if (checking_) {
    added.checker = std::make_unique<HealthChecker>(loop_, *this, added, protocol_);
    added.checker->start();
  }
  return added;
}

void Pool::start(uv_loop_t* loop, config::Protocol protocol) {
  loop_ = loop;
  protocol_ = protocol;
  checking_ = true;
  for (auto& server : servers_) {
    server->checker = std::make_unique<HealthChecker>(loop_, *this, *server, protocol_);
    server->checker->start();
  }
  bool anyName = std::any_of(entries_.begin(), entries_.end(),
                             [](const Entry& entry) { return !entry.literal; });
  if (anyName) {
    refresh_ = net::Timer::create(loop_, this);
    refresh_->start(config_.dns_refresh);
  }
}

void Pool::stop() {
  checking_ = false;
  for (auto& server : servers_) {
    if (server->checker != nullptr) {
      server->checker->stop();
    }
  }
  for (Entry& entry : entries_) {
    if (entry.pending != nullptr) {
      entry.pending->cancel();
      entry.pending = nullptr;
    }
  }
  if (refresh_ != nullptr) {
    refresh_->close();
    refresh_ = nullptr;
  }
}

void Pool::onTimer() {
  for (std::size_t i = 0; i < entries_.size(); ++i) {
    Entry& entry = entries_[i];
    if (entry.literal || entry.pending != nullptr) {
      continue;
    }
    entry.pending =
        net::Resolution::start(loop_, entry.address.host, entry.address.port,
                               [this, i](int status, std::vector<sockaddr_storage> addresses) {
                                 resolved(i, status, std::move(addresses));
                               });
  }
  refresh_->start(config_.dns_refresh);
}

// New addresses become servers; addresses the name no longer has stop taking sessions, and
// their running sessions finish normally. A failed lookup changes nothing.
void Pool::resolved(std::size_t entry, int status, std::vector<sockaddr_storage> addresses) {
  entries_[entry].pending = nullptr;
  if (status != 0 || addresses.empty()) {
    logging::warn("backend re-resolution failed",
                  {{"backend", config_.name},
                   {"server", entries_[entry].address.text()},
                   {"error", status != 0 ? uv_strerror(status) : "no addresses"}});
    return;
  }
  for (const sockaddr_storage& address : addresses) {
    bool known = std::any_of(servers_.begin(), servers_.end(), [&](const auto& server) {
      return server->entry == entry && !server->vanished && sameAddress(server->address, address);
    });
    if (!known) {
      Server& added = add(entry, address);
      logging::info("backend server added", {{"backend", config_.name},
                                             {"server", added.name},
                                             {"name", entries_[entry].address.text()}});
    }
  }
  for (auto& server : servers_) {
    if (server->entry != entry || server->vanished) {
      continue;
    }
    bool still = std::any_of(addresses.begin(), addresses.end(), [&](const sockaddr_storage& a) {
      return sameAddress(a, server->address);
    });
    if (!still) {
      server->vanished = true;
      identitiesStale_ = true;
      server->metrics.up(false);
      server->control->up = false;
      if (server->checker != nullptr) {
        server->checker->stop();
      }
      logging::info("backend server removed", {{"backend", config_.name},
                                               {"server", server->name},
                                               {"name", entries_[entry].address.text()}});
    }
  }
  reap();
}

// Vanished servers are forgotten once their last session has ended.
void Pool::reap() {
  std::erase_if(servers_, [](const std::unique_ptr<Server>& server) {
    return server->vanished && server->active == 0;
  });
}

void Pool::assignIdentities() {
  identitiesStale_ = false;
  for (auto& server : servers_) {
    std::string ip = net::formatIp(server->address);
    bool shared = std::any_of(servers_.begin(), servers_.end(), [&](const auto& other) {
      return other != server && !other->vanished && net::formatIp(other->address) == ip;
    });
    server->identity = shared ? server->name : std::move(ip);
  }
}

Server* Pool::pick(const std::vector<const Server*>& tried, std::string_view key) {
  if (identitiesStale_) {
    assignIdentities();
  }
  candidates_.clear();
  indexes_.clear();
  for (std::size_t i = 0; i < servers_.size(); ++i) {
    const Server& server = *servers_[i];
    if (server.vanished) {
      continue;
    }
    bool wasTried = std::find(tried.begin(), tried.end(), &server) != tried.end();
    bool eligible = server.up && !wasTried && server.control->takesSessions();
    candidates_.push_back({server.identity, server.active, eligible});
    indexes_.push_back(i);
  }
  int index = balancer_->pick(candidates_, key);
  if (index < 0) {
    return nullptr;
  }
  Server& chosen = *servers_[indexes_[static_cast<std::size_t>(index)]];
  chosen.metrics.selected();
  ++chosen.active;
  ++chosen.control->active;
  chosen.metrics.activeChange(+1);
  return &chosen;
}

std::vector<std::string> Pool::commonCapabilities() const {
  std::vector<std::vector<std::string>> lists;
  for (const auto& server : servers_) {
    if (server->up && !server->vanished && !server->capabilities.empty()) {
      lists.push_back(server->capabilities);
    }
  }
  return protocol::commonCapabilities(lists);
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
    // What the runtime API shows follows the latest verdict of any worker's pool (a pool built
    // by a reload starts its servers up and may never flip them).
    server.control->up = server.up;
    return;
  }
  server.successes = 0;
  ++server.control->errors;
  if (server.up && ++server.failures >= config_.health.fall) {
    server.up = false;
    server.failures = 0;
    server.metrics.up(false);
    logging::warn("backend server down", {{"backend", config_.name},
                                          {"server", server.name},
                                          {"reason", reason},
                                          {"check", active ? "active" : "passive"}});
  }
  server.control->up = server.up;
}

void Pool::release(Server& server) {
  --server.active;
  --server.control->active;
  server.metrics.activeChange(-1);
  if (server.vanished && server.active == 0) {
    reap();
  }
}

} // namespace backend
