// A backend pool: its servers (every address of every configured name), their state and
// counters, the balancer, health checks and DNS re-resolution.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/admin/control.h"
#include "proxy/backend/balancer.h"
#include "proxy/backend/health.h"
#include "proxy/net/resolver.h"
#include "proxy/net/timer.h"
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
  std::string name; // "ip:port": the metrics label
  // What hashing ranks: the server's IP, so that a user's IMAP, POP3 and ManageSieve sessions
  // meet on the same mail host whatever the ports (SPEC §12); "ip:port" where two servers of
  // the pool share an IP.
  std::string identity;
  std::string host;                      // as configured: the TLS server name to send and verify
  std::size_t entry = 0;                 // which `servers` entry it came from
  bool up = true;                        // servers start up; `fall` failures in a row take one down
  bool vanished = false;                 // DNS no longer returns it: no new sessions
  std::uint32_t failures = 0;            // consecutive failed checks (active or passive)
  std::uint32_t successes = 0;           // consecutive good checks while down
  std::vector<std::string> capabilities; // as the last health check saw them
  sockaddr_storage address{};
  std::string addressText; // the resolved ip:port, for logs
  std::size_t active = 0;  // sessions using it now
  metrics::ServerMetrics metrics;
  std::unique_ptr<HealthChecker> checker;
  // What every worker's pool shares about this server: the runtime API's state (drained and
  // disabled servers take no new sessions), and the sessions and errors of all workers.
  std::shared_ptr<admin::ServerControl> control;
};

class Pool final : private net::TimerHandler {
public:
  // Resolves each configured server now (blocking; at start-up, before the loop runs).
  // `control`: where the runtime API sees and sets the servers' state (null: a pool of its own).
  Pool(const config::Backend& config, metrics::Registry& registry,
       admin::Control* control = nullptr);
  ~Pool();

  const config::Backend& config() const { return config_; }
  metrics::BackendMetrics& metrics() { return metrics_; }
  std::size_t serverCount() const { return servers_.size(); }
  // The servers by position (0 .. serverCount()-1), for reports and listings.
  Server& serverAt(std::size_t index) { return *servers_[index]; }

  // The server for a new connection attempt, or nullptr when none is left to try. `key` is
  // the client address (source_hash) or user (user_hash). The chosen server counts the
  // session as active until release().
  Server* pick(const std::vector<const Server*>& tried, std::string_view key);
  void release(Server& server);

  // Login mode: the capabilities every healthy server reported to its last health check.
  std::vector<std::string> commonCapabilities() const;

  // A check's verdict: `active` for health checks, false for real sessions (passive). Flips the
  // server after `fall` failures or `rise` successes in a row.
  void report(Server& server, bool ok, bool active, const std::string& reason);

  // Health checks (speaking `protocol`) and re-resolution every dns_refresh.
  void start(uv_loop_t* loop, config::Protocol protocol);
  void stop();

  // For TLS pools: the context new backend connections are made with.
  tls::ClientContext* tlsContext() { return tlsContext_.get(); }
  // Set when the pool cannot work (its TLS context did not load).
  const std::string& error() const { return error_; }

private:
  struct Entry {
    config::ServerAddress address;
    bool literal = false;
    net::Resolution* pending = nullptr;
  };

  void onTimer() override; // time to re-resolve
  void resolved(std::size_t entry, int status, std::vector<sockaddr_storage> addresses);
  Server& add(std::size_t entry, const sockaddr_storage& address);
  void reap();

  config::Backend config_;
  metrics::Registry& registry_;
  admin::Control* control_;
  std::vector<Entry> entries_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::unique_ptr<Balancer> balancer_;
  metrics::BackendMetrics metrics_;
  std::shared_ptr<tls::ClientContext> tlsContext_;
  std::vector<Candidate> candidates_; // scratch for pick(), kept to avoid an allocation each time
  std::vector<std::size_t> indexes_;  // candidates_[i] is servers_[indexes_[i]]
  bool identitiesStale_ = true;       // servers came or went since identities were assigned
  void assignIdentities();
  uv_loop_t* loop_ = nullptr;
  config::Protocol protocol_ = config::Protocol::Imap;
  bool checking_ = false;
  net::Timer* refresh_ = nullptr;
  std::string error_;
};

} // namespace backend
