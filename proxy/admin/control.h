// What the runtime API reads and changes, shared by every worker loop and the API (SPEC §14):
// each backend server's administrative state and live counts, the live sessions, and each
// worker's mailbox for kicks. Thread-safe.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace admin {

// Set through the API. Drained: no new sessions, running ones go on. Disabled: down for the
// balancer (whatever the health checks say) until enabled; health checks keep running.
enum class ServerState { Enabled, Drained, Disabled };
const char* toString(ServerState state);

// One backend server (a pool's address) as every worker's pool sees it. The pools of all
// workers share one object; it lives while any pool still has the server.
struct ServerControl {
  ServerControl(std::string poolName, std::string serverName, std::size_t position,
                metrics::ServerMetrics serverMetrics)
      : pool(std::move(poolName)), server(std::move(serverName)), order(position),
        metrics(serverMetrics) {}
  const std::string pool;
  const std::string server; // "ip:port", as the metrics label it
  const std::size_t order;  // its position in the pool, for listings
  std::atomic<ServerState> state{ServerState::Enabled};
  std::atomic<int> active{0};           // sessions on it now, all workers
  std::atomic<bool> up{true};           // as the health checks last said
  std::atomic<std::uint64_t> errors{0}; // failed connects, checks and greetings
  metrics::ServerMetrics metrics;

  bool takesSessions() const {
    return state.load(std::memory_order_relaxed) == ServerState::Enabled;
  }
};

// One live session, as the API lists it. The worker that owns the session writes it; the API
// reads it under Control's lock (user, backend) or atomically (bytes).
struct SessionRecord {
  std::uint64_t id = 0;
  int worker = 0;
  std::string listener;
  std::string protocol;
  std::string client; // ip:port
  std::chrono::system_clock::time_point since;
  std::string user;    // login mode, once authenticated
  std::string backend; // the server, once chosen
  std::atomic<std::uint64_t> bytesIn{0};
  std::atomic<std::uint64_t> bytesOut{0};
  // Only the owning worker touches these: the session, and whether it has closed.
  void* session = nullptr;
  bool closed = false;
};

// A request to close a session, carried to the worker that owns it.
struct Kick {
  std::shared_ptr<SessionRecord> record;
  std::string by; // who asked (the API client's address)
};

// A worker's side of the kick path: post() is called from any thread and must wake the loop.
class Mailbox {
public:
  virtual void post(std::vector<Kick> kicks) = 0;

protected:
  ~Mailbox() = default;
};

// A copy of one session for a listing.
struct SessionView {
  std::uint64_t id;
  std::string listener, protocol, client, user, backend;
  std::chrono::system_clock::time_point since;
  std::uint64_t bytesIn, bytesOut;
};

// What the page and /v1/listeners show of the running configuration.
struct Snapshot {
  std::shared_ptr<const config::Config> config;
  std::map<std::string, int> ports; // listener -> bound port
  struct Certificate {
    std::string subject;
    std::string keyType;
    double notAfter;
  };
  std::vector<Certificate> certificates;
  std::chrono::system_clock::time_point started;
};

class Control {
public:
  Control();

  // Servers. A pool asks for each server it adds; a server keeps a state set by the API when
  // its pool is rebuilt (SIGHUP) or its address comes back.
  std::shared_ptr<ServerControl> server(const std::string& pool, const std::string& server,
                                        std::size_t order, metrics::ServerMetrics metrics);
  // The servers some pool has now, in pool then position order; null when unknown.
  std::vector<std::shared_ptr<ServerControl>> servers() const;
  std::shared_ptr<ServerControl> find(const std::string& pool, const std::string& server) const;
  // Sets (and remembers) a live server's state in one step; null when no pool has the server.
  // `before` receives the state it had.
  std::shared_ptr<ServerControl> setState(const std::string& pool, const std::string& server,
                                          ServerState state, ServerState& before);

  // Sessions.
  std::shared_ptr<SessionRecord> open(int worker, std::string listener, std::string protocol,
                                      std::string client, void* session);
  void close(SessionRecord& record);
  void setUser(SessionRecord& record, const std::string& user);
  void setBackend(SessionRecord& record, const std::string& backend);
  // Live sessions; an empty filter matches all. `client` matches the address or its IP.
  // `user` matches without regard to ASCII case.
  std::vector<SessionView> sessions(const std::string& user, const std::string& client) const;
  // Live sessions by listener name (without copying them).
  std::map<std::string, std::size_t> sessionsPerListener() const;
  // Asks each worker to close `user`'s sessions; returns how many were asked to close.
  std::size_t kick(const std::string& user, const std::string& by);

  // Workers.
  void attach(int worker, Mailbox* mailbox);
  void detach(int worker);

  // The running configuration (worker 0 publishes it at start and after each reload).
  void publish(std::shared_ptr<const config::Config> config, std::map<std::string, int> ports);
  void setCertificates(std::vector<Snapshot::Certificate> certificates);
  Snapshot snapshot() const;

private:
  static std::string key(const std::string& pool, const std::string& server);

  mutable std::mutex mutex_;
  std::map<std::string, std::weak_ptr<ServerControl>> servers_;
  std::map<std::string, ServerState> remembered_; // states the API set, by key
  std::unordered_map<std::uint64_t, std::shared_ptr<SessionRecord>> sessions_;
  std::uint64_t nextId_ = 1;
  std::map<int, Mailbox*> mailboxes_;
  Snapshot snapshot_;
};

} // namespace admin
