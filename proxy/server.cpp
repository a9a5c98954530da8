// The server: one libuv loop with its listeners, backend pools and live sessions; drain on signals.
#include "proxy/server.h"

#include <atomic>

#include "config/load.h"
#include "proxy/log.h"
#include "proxy/protocol/registry.h"
#include "tls/certificate_check.h"

#include <algorithm>
#include <csignal>

namespace proxy {

std::shared_ptr<session::ClientLimits> Shared::limitsFor(const config::Listener& listener) {
  std::lock_guard lock(mutex);
  std::string key = listener.name + "/" + std::to_string(listener.limits.per_ip_max_connections) +
                    "/" + std::to_string(listener.limits.per_ip_connect_rate);
  auto& limits = clientLimits[key];
  if (limits == nullptr) {
    limits = std::make_shared<session::ClientLimits>(listener.limits.per_ip_max_connections,
                                                     listener.limits.per_ip_connect_rate);
  }
  return limits;
}

std::shared_ptr<session::AuthThrottle> Shared::throttleFor(const config::Listener& listener) {
  std::lock_guard lock(mutex);
  const config::Limits& l = listener.limits;
  std::string key = listener.name + "/" + std::to_string(l.auth_failures_before_delay) + "/" +
                    std::to_string(l.auth_failure_window.count()) + "/" +
                    std::to_string(l.auth_max_delay.count()) + "/" +
                    std::to_string(l.auth_failures_before_block) + "/" +
                    std::to_string(l.auth_block.count());
  auto& throttle = authThrottles[key];
  if (throttle == nullptr) {
    throttle = std::make_shared<session::AuthThrottle>(l);
  }
  return throttle;
}

Server::Server(const config::Config& config, metrics::Registry& registry, Shared& shared,
               int worker)
    : config_(config), registry_(registry), shared_(shared), worker_(worker) {
  uv_loop_init(&loop_);
  net::attachLoopContext(&loop_, &loopContext_);
}

namespace {

std::atomic<bool> gLeakedHandles{false};

} // namespace

bool Server::leakedHandles() { return gLeakedHandles.load(); }

Server::~Server() {
  stopLoop();
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0) {
    // Name what is still open, so a leak says where it comes from.
    std::string open;
    uv_walk(
        &loop_,
        [](uv_handle_t* handle, void* names) {
          auto* list = static_cast<std::string*>(names);
          *list += (list->empty() ? "" : ",");
          *list += uv_handle_type_name(uv_handle_get_type(handle));
          *list += uv_is_closing(handle) != 0 ? "(closing)" : "";
        },
        &open);
    logging::error("event loop closed with handles still open",
                   {{"worker", std::to_string(worker_)}, {"handles", open}});
    gLeakedHandles = true;
  }
}

std::expected<void, std::string> Server::loadTls(const config::Tls& tls) {
  auto context = tls::ServerContext::create(tls, ticketKeys_);
  if (!context) {
    return std::unexpected(context.error());
  }
  tlsContext_ = *context;
  publishCertificates();
  return {};
}

void Server::publishCertificates() {
  std::vector<metrics::Registry::Certificate> certificates;
  if (tlsContext_ != nullptr) {
    for (const tls::CertificateInfo& info : tlsContext_->certificates()) {
      certificates.push_back({info.subject, info.keyType, static_cast<double>(info.notAfter)});
    }
  }
  registry_.setCertificates(certificates);
  if (worker_ == 0) {
    std::vector<admin::Snapshot::Certificate> shown;
    for (const auto& certificate : certificates) {
      shown.push_back({certificate.subject, certificate.keyType, certificate.notAfter});
    }
    shared_.control.setCertificates(std::move(shown));
  }
}

std::shared_ptr<session::ListenerContext>
Server::makeContext(const config::Listener& listener,
                    const std::map<std::string, std::shared_ptr<backend::Pool>>& pools, int port) {
  auto context = std::make_shared<session::ListenerContext>();
  context->config = listener;
  context->protocol = &protocol::info(listener.protocol);
  context->pool = pools.at(listener.backend);
  context->defaultRoute = registry_.route(listener.name, listener.backend);
  for (const config::Route& route : listener.routes) {
    context->routes.push_back(
        {route, pools.at(route.backend), registry_.route(listener.name, route.backend)});
  }
  context->tls = listener.tls == config::TlsMode::None ? nullptr : &tlsContext_;
  context->clientLimits = shared_.limitsFor(listener);
  if (listener.mode == config::Mode::Login) {
    context->authThrottle = shared_.throttleFor(listener);
  }
  context->port = port;
  context->control = shared_.sessionDirectory ? &shared_.control : nullptr;
  context->worker = worker_;
  // The same labels give the same series: counts go on across reloads.
  context->metrics = registry_.listener(listener.name, context->protocol->name, port,
                                        config::toString(listener.tls));
  return context;
}

// Builds everything `config` describes next to what is running, then swaps it in. Any failure
// (a pool's TLS context, certificates, a port that cannot be bound) leaves the old state whole.
std::expected<void, std::string> Server::apply(const config::Config& config) {
  std::map<std::string, std::shared_ptr<backend::Pool>> pools;
  for (const config::Backend& backend : config.backends) {
    auto pool = std::make_shared<backend::Pool>(backend, registry_, &shared_.control);
    if (!pool->error().empty()) {
      return std::unexpected("backend " + backend.name + ": " + pool->error());
    }
    pools.emplace(backend.name, std::move(pool));
  }
  bool needsTls = std::any_of(config.listeners.begin(), config.listeners.end(),
                              [](const auto& l) { return l.tls != config::TlsMode::None; });
  if (needsTls) {
    if (ticketKeys_ == nullptr) {
      // Ticket keys rotate hourly; a ticket stays valid for two more hours, across reloads.
      ticketKeys_ = tls::makeTicketKeys(std::chrono::hours(1));
    }
    if (auto loaded = loadTls(config.tls); !loaded) {
      return std::unexpected("TLS: " + loaded.error());
    }
  }
  // Sockets: a listener keeps its socket when its name and address stay; others are opened
  // now, before anything running is touched.
  std::vector<std::unique_ptr<ListenerEntry>> entries;
  auto abandon = [&](std::string error) -> std::expected<void, std::string> {
    for (auto& entry : entries) {
      bool reused = std::any_of(listeners_.begin(), listeners_.end(),
                                [&](const auto& old) { return old->socket == entry->socket; });
      if (!reused && entry->socket != nullptr) {
        entry->socket->close();
      }
    }
    return std::unexpected(std::move(error));
  };
  for (const config::Listener& listener : config.listeners) {
    auto entry = std::make_unique<ListenerEntry>();
    entry->server = this;
    for (auto& old : listeners_) {
      if (old->socket != nullptr && old->context->config.name == listener.name &&
          old->context->config.listen.text() == listener.listen.text()) {
        entry->socket = old->socket;
      }
    }
    if (entry->socket == nullptr) {
      auto socket = net::Listener::open(&loop_, listener.listen, entry.get());
      if (!socket) {
        return abandon("listener " + listener.name + ": cannot listen on " +
                       listener.listen.text() + ": " + socket.error());
      }
      entry->socket = *socket;
    }
    entry->context = makeContext(listener, pools, entry->socket->port());
    entries.push_back(std::move(entry));
  }
  // Commit. Sockets no new listener kept are closed; the handlers of kept ones move over.
  for (auto& old : listeners_) {
    bool kept = std::any_of(entries.begin(), entries.end(),
                            [&](const auto& entry) { return entry->socket == old->socket; });
    if (!kept && old->socket != nullptr) {
      logging::info("listener closed", {{"listener", old->context->config.name}});
      old->socket->close();
    }
  }
  for (auto& entry : entries) {
    entry->socket->setHandler(entry.get());
    if (worker_ != 0) {
      continue; // every worker binds the same addresses; one says so
    }
    config::SocketAddress bound = entry->context->config.listen;
    bound.port = static_cast<std::uint16_t>(entry->context->port);
    logging::info("listening", {{"listener", entry->context->config.name},
                                {"protocol", entry->context->protocol->name},
                                {"address", bound.text()},
                                {"tls", config::toString(entry->context->config.tls)},
                                {"backend", entry->context->config.backend}});
  }
  for (auto& [name, pool] : pools_) {
    pool->stop(); // running sessions may still use it; it just stops checking
  }
  pools_ = std::move(pools);
  listeners_ = std::move(entries);
  // Health checks speak the protocol of the listeners that use each pool (as their backend or
  // through a route).
  for (auto& [name, pool] : pools_) {
    for (const config::Listener& listener : config.listeners) {
      bool routed = std::any_of(listener.routes.begin(), listener.routes.end(),
                                [&](const config::Route& route) { return route.backend == name; });
      if (listener.backend == name || routed) {
        pool->start(&loop_, listener.protocol);
        break;
      }
    }
  }
  config_ = config;
  return {};
}

std::expected<void, std::string> Server::start() {
  if (auto applied = apply(config_); !applied) {
    return applied;
  }
  uv_signal_init(&loop_, &sigterm_);
  uv_signal_init(&loop_, &sigint_);
  uv_signal_init(&loop_, &sighup_);
  for (uv_signal_t* handle : {&sigterm_, &sigint_, &sighup_}) {
    handle->data = this;
  }
  uv_signal_start(&sigterm_, onSignal, SIGTERM);
  uv_signal_start(&sigint_, onSignal, SIGINT);
  uv_signal_start(&sighup_, onSignal, SIGHUP);
  uv_check_init(&loop_, &reaper_);
  reaper_.data = this;
  uv_check_start(&reaper_, onCheck);
  uv_async_init(&loop_, &kickSignal_, onKicks);
  kickSignal_.data = this;
  shared_.control.attach(worker_, this);
  return startAdmin();
}

std::expected<void, std::string> Server::startAdmin() {
  if (worker_ != 0) {
    return {};
  }
  publishState();
  if (!config_.admin.enabled) {
    return {};
  }
  admin_ = std::make_unique<admin::AdminServer>(&loop_, shared_.control, config_.admin.token);
  auto port = admin_->start(config_.admin.listen);
  if (!port) {
    return std::unexpected("admin: cannot listen on " + config_.admin.listen.text() + ": " +
                           port.error());
  }
  adminListen_ = config_.admin.listen;
  config::SocketAddress bound = config_.admin.listen;
  bound.port = static_cast<std::uint16_t>(*port);
  logging::info("admin listening", {{"address", bound.text()},
                                    {"token", config_.admin.token.empty() ? "none" : "required"}});
  return {};
}

void Server::publishState() {
  shared_.control.publish(std::make_shared<const config::Config>(config_), boundPorts());
}

void Server::post(std::vector<admin::Kick> kicks) {
  {
    std::lock_guard lock(kicksMutex_);
    for (admin::Kick& kick : kicks) {
      kicks_.push_back(std::move(kick));
    }
  }
  uv_async_send(&kickSignal_);
}

void Server::onKicks(uv_async_t* handle) noexcept {
  static_cast<Server*>(handle->data)->takeKicks();
}

void Server::takeKicks() {
  std::vector<admin::Kick> kicks;
  {
    std::lock_guard lock(kicksMutex_);
    kicks.swap(kicks_);
  }
  for (admin::Kick& kick : kicks) {
    // A session that ended meanwhile has left its record closed; its memory may be gone.
    if (!kick.record->closed) {
      static_cast<session::Session*>(kick.record->session)->kick(kick.by);
    }
  }
}

void Server::run() { uv_run(&loop_, UV_RUN_DEFAULT); }

std::map<std::string, int> Server::boundPorts() const {
  std::map<std::string, int> ports;
  for (const auto& entry : listeners_) {
    ports[entry->context->config.name] = entry->context->port;
  }
  return ports;
}

void Server::accept(ListenerEntry& entry) {
  if (draining_) {
    reject(entry, metrics::RejectReason::Draining);
    return;
  }
  if (shared_.sessions.load() >= config_.global.max_connections) {
    reject(entry, metrics::RejectReason::MaxConnections);
    return;
  }
  auto session = std::make_unique<session::Session>(static_cast<session::SessionOwner&>(*this),
                                                    entry.context, &loop_);
  session::Session* raw = session.get();
  sessions_.emplace(raw, std::move(session));
  ++shared_.sessions;
  if (!raw->start(entry.socket->stream())) {
    // The connection vanished between readiness and accept: nothing was counted.
    if (auto found = sessions_.find(raw); found != sessions_.end()) {
      finished_.push_back(std::move(found->second));
      sessions_.erase(found);
    }
    --shared_.sessions;
  }
}

// A connection refused by a limit: accepted only to be told so in the protocol's words, counted
// as rejected and never as accepted (SPEC §6).
void Server::reject(ListenerEntry& entry, metrics::RejectReason reason) {
  net::TcpStream* stream = net::TcpStream::accept(entry.socket->stream(), nullptr);
  entry.context->metrics.rejected(reason);
  if (stream == nullptr) {
    return;
  }
  const protocol::ProtocolInfo& info = *entry.context->protocol;
  stream->write(reason == metrics::RejectReason::Draining ? info.shuttingDown
                                                          : info.tooManyConnections);
  stream->closeAfterFlush();
  logging::warn("connection rejected", {{"listener", entry.context->config.name},
                                        {"client", net::formatAddress(stream->peer())},
                                        {"reason", metrics::toString(reason)}});
}

void Server::onSessionClosed(session::Session& session) {
  auto found = sessions_.find(&session);
  if (found == sessions_.end()) {
    return;
  }
  // Freed by the check handle after this loop iteration, never inside the session's own callback.
  finished_.push_back(std::move(found->second));
  sessions_.erase(found);
  --shared_.sessions;
  if (draining_ && sessions_.empty()) {
    stopLoop();
  }
}

void Server::onCheck(uv_check_t* handle) noexcept {
  static_cast<Server*>(handle->data)->finished_.clear();
}

void Server::onSignal(uv_signal_t* handle, int signal) noexcept {
  auto* server = static_cast<Server*>(handle->data);
  if (signal == SIGHUP) {
    server->reload();
    return;
  }
  server->beginDrain(signal == SIGTERM ? "SIGTERM" : "SIGINT");
}

// SIGHUP (SPEC §9): the file is read and checked again; new listeners open, removed ones close,
// changed pools and certificates apply to new sessions, running sessions keep what they started
// with. A config that does not load or apply changes nothing.
void Server::reload() {
  if (draining_) {
    return;
  }
  auto loaded = config::loadFile(config_.file);
  std::vector<config::Diagnostic> problems;
  if (!loaded) {
    problems = loaded.error();
  } else {
    problems = tls::checkConfig(*loaded);
  }
  std::shared_ptr<tls::ServerContext> previousTls = tlsContext_;
  if (problems.empty()) {
    if (auto applied = apply(*loaded); !applied) {
      problems.push_back({config_.file, {}, "", applied.error()});
    }
  }
  if (!problems.empty()) {
    for (const config::Diagnostic& problem : problems) {
      logging::error("reload failed", {{"error", problem.text()}});
    }
    if (tlsContext_ != previousTls) {
      tlsContext_ = previousTls; // the certificates that still serve, and their gauges
      publishCertificates();
    }
    if (worker_ == 0) {
      registry_.configReload(false); // every worker reloads; the count is per SIGHUP
    }
    return;
  }
  if (worker_ == 0) {
    registry_.configReload(true);
    publishState();
    if (admin_ != nullptr) {
      // The listener stays where it is until a restart, so only a config that keeps it there
      // may change its token: the checker made sure that one is safe for that address.
      const config::Admin& next = loaded->admin;
      if (next.enabled && next.listen.text() == adminListen_.text()) {
        admin_->setToken(next.token);
      } else {
        logging::warn("admin listener kept until restart, with its token",
                      {{"address", adminListen_.text()},
                       {"configured", next.enabled ? next.listen.text() : "off"}});
      }
    }
  }
  logging::info(
      "reloaded",
      {{"config", config_.file},
       {"listeners", std::to_string(listeners_.size())},
       {"backends", std::to_string(pools_.size())},
       {"note", "workers, user, log, metrics and admin.listen settings apply on restart"}});
}

// SPEC §9: stop accepting, let sessions finish for up to shutdown_grace, then close the rest.
void Server::beginDrain(const char* signalName) {
  if (draining_) {
    return;
  }
  draining_ = true;
  if (admin_ != nullptr) {
    admin_->stop();
  }
  logging::info("draining", {{"signal", signalName},
                             {"sessions", std::to_string(sessions_.size())},
                             {"grace_ms", std::to_string(config_.global.shutdown_grace.count())}});
  for (auto& entry : listeners_) {
    if (entry->socket != nullptr) {
      entry->socket->close();
      entry->socket = nullptr;
    }
  }
  if (sessions_.empty()) {
    stopLoop();
    return;
  }
  graceTimer_ = net::Timer::create(&loop_, this);
  graceTimer_->start(config_.global.shutdown_grace);
}

void Server::onTimer() {
  logging::info("shutdown grace over; closing sessions",
                {{"sessions", std::to_string(sessions_.size())}});
  std::vector<session::Session*> open;
  for (auto& [raw, owned] : sessions_) {
    open.push_back(raw);
  }
  for (session::Session* session : open) {
    session->shutdown();
  }
}

void Server::stopLoop() {
  if (stopped_) {
    return;
  }
  stopped_ = true;
  for (auto& entry : listeners_) {
    if (entry->socket != nullptr) {
      entry->socket->close();
      entry->socket = nullptr;
    }
  }
  if (graceTimer_ != nullptr) {
    graceTimer_->close();
    graceTimer_ = nullptr;
  }
  for (auto& [name, pool] : pools_) {
    pool->stop();
  }
  for (uv_signal_t* handle : {&sigterm_, &sigint_, &sighup_}) {
    if (handle->loop != nullptr && uv_is_closing(reinterpret_cast<uv_handle_t*>(handle)) == 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(handle), nullptr);
    }
  }
  if (reaper_.loop != nullptr && uv_is_closing(reinterpret_cast<uv_handle_t*>(&reaper_)) == 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(&reaper_), nullptr);
  }
  if (admin_ != nullptr) {
    admin_->stop();
  }
  if (kickSignal_.loop != nullptr &&
      uv_is_closing(reinterpret_cast<uv_handle_t*>(&kickSignal_)) == 0) {
    shared_.control.detach(worker_);
    uv_close(reinterpret_cast<uv_handle_t*>(&kickSignal_), nullptr);
  }
  std::vector<session::Session*> open;
  for (auto& [raw, owned] : sessions_) {
    open.push_back(raw);
  }
  for (session::Session* session : open) {
    session->close(metrics::CloseReason::Shutdown);
  }
}

} // namespace proxy
