// The runtime API's shared state: servers' administrative states, live sessions, kicks.
#include "proxy/admin/control.h"

#include "proxy/protocol/line_reader.h"

#include <algorithm>

namespace admin {

namespace {

// "1.2.3.4:5" -> "1.2.3.4", "[::1]:5" -> "::1".
std::string_view ipOf(std::string_view address) {
  std::size_t colon = address.rfind(':');
  std::string_view ip = colon == std::string_view::npos ? address : address.substr(0, colon);
  if (ip.size() >= 2 && ip.front() == '[' && ip.back() == ']') {
    ip = ip.substr(1, ip.size() - 2);
  }
  return ip;
}

} // namespace

const char* toString(ServerState state) {
  switch (state) {
  case ServerState::Enabled:
    return "enabled";
  case ServerState::Drained:
    return "drained";
  case ServerState::Disabled:
    return "disabled";
  }
  return "?";
}

Control::Control() { snapshot_.started = std::chrono::system_clock::now(); }

std::string Control::key(const std::string& pool, const std::string& server) {
  return pool + '\n' + server;
}

std::shared_ptr<ServerControl> Control::server(const std::string& pool, const std::string& server,
                                               std::size_t order, metrics::ServerMetrics metrics) {
  std::lock_guard lock(mutex_);
  std::string k = key(pool, server);
  if (auto found = servers_.find(k); found != servers_.end()) {
    if (auto live = found->second.lock()) {
      return live;
    }
  }
  // Servers no pool has any more (a reload, DNS) are forgotten; a state set for one is not.
  std::erase_if(servers_, [](const auto& entry) { return entry.second.expired(); });
  auto created = std::make_shared<ServerControl>(pool, server, order, metrics);
  ServerState state = ServerState::Enabled;
  if (auto remembered = remembered_.find(k); remembered != remembered_.end()) {
    state = remembered->second;
  }
  created->state = state;
  created->metrics.adminState(state == ServerState::Drained, state == ServerState::Disabled);
  servers_[k] = created;
  return created;
}

std::vector<std::shared_ptr<ServerControl>> Control::servers() const {
  std::vector<std::shared_ptr<ServerControl>> out;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [k, weak] : servers_) {
      if (auto live = weak.lock()) {
        out.push_back(std::move(live));
      }
    }
  }
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a->pool, a->order) < std::tie(b->pool, b->order);
  });
  return out;
}

std::shared_ptr<ServerControl> Control::find(const std::string& pool,
                                             const std::string& server) const {
  std::lock_guard lock(mutex_);
  auto found = servers_.find(key(pool, server));
  return found == servers_.end() ? nullptr : found->second.lock();
}

std::shared_ptr<ServerControl> Control::setState(const std::string& pool, const std::string& server,
                                                 ServerState state, ServerState& before) {
  std::lock_guard lock(mutex_);
  std::string k = key(pool, server);
  auto found = servers_.find(k);
  std::shared_ptr<ServerControl> live = found == servers_.end() ? nullptr : found->second.lock();
  if (live == nullptr) {
    return nullptr;
  }
  before = live->state.load();
  live->state = state;
  live->metrics.adminState(state == ServerState::Drained, state == ServerState::Disabled);
  if (state == ServerState::Enabled) {
    remembered_.erase(k);
  } else {
    remembered_[k] = state;
  }
  return live;
}

std::shared_ptr<SessionRecord> Control::open(int worker, std::string listener, std::string protocol,
                                             std::string client, void* session) {
  auto record = std::make_shared<SessionRecord>();
  record->worker = worker;
  record->listener = std::move(listener);
  record->protocol = std::move(protocol);
  record->client = std::move(client);
  record->since = std::chrono::system_clock::now();
  record->session = session;
  std::lock_guard lock(mutex_);
  record->id = nextId_++;
  sessions_.emplace(record->id, record);
  return record;
}

void Control::close(SessionRecord& record) {
  record.closed = true;
  std::lock_guard lock(mutex_);
  sessions_.erase(record.id);
}

void Control::setUser(SessionRecord& record, const std::string& user) {
  std::lock_guard lock(mutex_);
  record.user = user;
}

void Control::setBackend(SessionRecord& record, const std::string& backend) {
  std::lock_guard lock(mutex_);
  record.backend = backend;
}

std::vector<SessionView> Control::sessions(const std::string& user,
                                           const std::string& client) const {
  std::vector<SessionView> out;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, record] : sessions_) {
      if (!user.empty() && !protocol::equalsNoCase(record->user, user)) {
        continue;
      }
      if (!client.empty() && record->client != client && ipOf(record->client) != client) {
        continue;
      }
      out.push_back({record->id, record->listener, record->protocol, record->client, record->user,
                     record->backend, record->since,
                     record->bytesIn.load(std::memory_order_relaxed),
                     record->bytesOut.load(std::memory_order_relaxed)});
    }
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
  return out;
}

std::map<std::string, std::size_t> Control::sessionsPerListener() const {
  std::map<std::string, std::size_t> counts;
  std::lock_guard lock(mutex_);
  for (const auto& [id, record] : sessions_) {
    ++counts[record->listener];
  }
  return counts;
}

std::size_t Control::kick(const std::string& user, const std::string& by) {
  std::map<int, std::vector<Kick>> byWorker;
  std::size_t count = 0;
  std::lock_guard lock(mutex_);
  for (const auto& [id, record] : sessions_) {
    if (!record->user.empty() && protocol::equalsNoCase(record->user, user) &&
        mailboxes_.contains(record->worker)) {
      byWorker[record->worker].push_back({record, by});
      ++count;
    }
  }
  for (auto& [worker, kicks] : byWorker) {
    mailboxes_[worker]->post(std::move(kicks));
  }
  return count;
}

void Control::attach(int worker, Mailbox* mailbox) {
  std::lock_guard lock(mutex_);
  mailboxes_[worker] = mailbox;
}

void Control::detach(int worker) {
  std::lock_guard lock(mutex_);
  mailboxes_.erase(worker);
}

void Control::publish(std::shared_ptr<const config::Config> config,
                      std::map<std::string, int> ports) {
  std::lock_guard lock(mutex_);
  snapshot_.config = std::move(config);
  snapshot_.ports = std::move(ports);
}

void Control::setCertificates(std::vector<Snapshot::Certificate> certificates) {
  std::lock_guard lock(mutex_);
  snapshot_.certificates = std::move(certificates);
}

Snapshot Control::snapshot() const {
  std::lock_guard lock(mutex_);
  return snapshot_;
}

} // namespace admin
