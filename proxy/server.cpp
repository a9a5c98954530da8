// The server: one libuv loop with its listeners, backend pools and live sessions; drain on signals.
#include "proxy/server.h"

#include "config/load.h"
#include "proxy/log.h"
#include "proxy/protocol/registry.h"
#include "tls/certificate_check.h"

#include <csignal>

namespace proxy {

Server::Server(const config::Config& config, metrics::Registry& registry)
    : config_(config), registry_(registry) {
  uv_loop_init(&loop_);
  net::attachLoopContext(&loop_, &loopContext_);
  for (const config::Backend& backend : config_.backends) {
    pools_.emplace(backend.name, std::make_unique<backend::Pool>(backend, registry_));
  }
}

Server::~Server() {
  stopLoop();
  uv_run(&loop_, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop_) != 0) {
    logging::error("event loop closed with handles still open");
  }
}

std::expected<void, std::string> Server::loadTls(const config::Tls& tls) {
  auto context = tls::ServerContext::create(tls, ticketKeys_);
  if (!context) {
    return std::unexpected(context.error());
  }
  tlsContext_ = *context;
  std::vector<metrics::Registry::Certificate> certificates;
  for (const tls::CertificateInfo& info : tlsContext_->certificates()) {
    certificates.push_back({info.subject, info.keyType, static_cast<double>(info.notAfter)});
  }
  registry_.setCertificates(certificates);
  return {};
}

std::expected<void, std::string> Server::start() {
  for (auto& [name, pool] : pools_) {
    if (!pool->error().empty()) {
      return std::unexpected("backend " + name + ": " + pool->error());
    }
  }
  bool needsTls = false;
  for (const config::Listener& listener : config_.listeners) {
    needsTls = needsTls || listener.tls != config::TlsMode::None;
  }
  if (needsTls) {
    // Ticket keys rotate hourly; a ticket stays valid for two more hours.
    ticketKeys_ = tls::makeTicketKeys(std::chrono::hours(1));
    if (auto loaded = loadTls(config_.tls); !loaded) {
      return std::unexpected("TLS: " + loaded.error());
    }
  }
  for (const config::Listener& listener : config_.listeners) {
    ListenerEntry& entry = listeners_.emplace_back();
    entry.server = this;
    entry.context.config = listener;
    entry.context.protocol = &protocol::info(listener.protocol);
    entry.context.pool = pools_.at(listener.backend).get();
    entry.context.tls = listener.tls == config::TlsMode::None ? nullptr : &tlsContext_;
    entry.context.clientLimits = session::ClientLimits(listener.limits.per_ip_max_connections,
                                                       listener.limits.per_ip_connect_rate);
    auto socket = net::Listener::open(&loop_, listener.listen, &entry);
    if (!socket) {
      return std::unexpected("listener " + listener.name + ": cannot listen on " +
                             listener.listen.text() + ": " + socket.error());
    }
    entry.socket = *socket;
    entry.context.port = entry.socket->port();
    entry.context.metrics = registry_.listener(listener.name, entry.context.protocol->name,
                                               entry.context.port, config::toString(listener.tls));
    config::SocketAddress bound = listener.listen;
    bound.port = static_cast<std::uint16_t>(entry.context.port);
    logging::info("listening", {{"listener", listener.name},
                                {"protocol", entry.context.protocol->name},
                                {"address", bound.text()},
                                {"tls", config::toString(listener.tls)},
                                {"backend", listener.backend}});
  }
  // Health checks speak the protocol of the listeners that use each pool.
  for (auto& [name, pool] : pools_) {
    for (const config::Listener& listener : config_.listeners) {
      if (listener.backend == name) {
        pool->start(&loop_, listener.protocol);
        break;
      }
    }
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
  return {};
}

void Server::run() { uv_run(&loop_, UV_RUN_DEFAULT); }

void Server::accept(ListenerEntry& entry) {
  if (draining_) {
    reject(entry, metrics::RejectReason::Draining);
    return;
  }
  if (sessions_.size() >= config_.global.max_connections) {
    reject(entry, metrics::RejectReason::MaxConnections);
    return;
  }
  auto session = std::make_unique<session::Session>(static_cast<session::SessionOwner&>(*this),
                                                    entry.context, &loop_);
  session::Session* raw = session.get();
  sessions_.emplace(raw, std::move(session));
  if (!raw->start(entry.socket->stream())) {
    // The connection vanished between readiness and accept: nothing was counted.
    finished_.push_back(std::move(sessions_.at(raw)));
    sessions_.erase(raw);
  }
}

// A connection refused by a limit: accepted only to be told so in the protocol's words, counted
// as rejected and never as accepted (SPEC §6).
void Server::reject(ListenerEntry& entry, metrics::RejectReason reason) {
  net::TcpStream* stream = net::TcpStream::accept(entry.socket->stream(), nullptr);
  entry.context.metrics.rejected(reason);
  if (stream == nullptr) {
    return;
  }
  const protocol::ProtocolInfo& info = *entry.context.protocol;
  stream->write(reason == metrics::RejectReason::Draining ? info.shuttingDown
                                                          : info.tooManyConnections);
  stream->closeAfterFlush();
  logging::warn("connection rejected", {{"listener", entry.context.config.name},
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
    server->reloadCertificates();
    return;
  }
  server->beginDrain(signal == SIGTERM ? "SIGTERM" : "SIGINT");
}

// SIGHUP: certificates and keys are read again; new handshakes use them, running sessions keep
// theirs. A configuration that does not load leaves everything as it was.
void Server::reloadCertificates() {
  auto loaded = config::loadFile(config_.file);
  std::vector<config::Diagnostic> problems;
  if (!loaded) {
    problems = loaded.error();
  } else {
    problems = tls::checkConfig(*loaded);
  }
  if (problems.empty() && tlsContext_ != nullptr) {
    if (auto reloaded = loadTls(loaded->tls); !reloaded) {
      problems.push_back({config_.file, {}, "tls", reloaded.error()});
    }
  }
  if (!problems.empty()) {
    for (const config::Diagnostic& problem : problems) {
      logging::error("reload failed", {{"error", problem.text()}});
    }
    registry_.configReload(false);
    return;
  }
  registry_.configReload(true);
  logging::info("reloaded", {{"config", config_.file},
                             {"certificates", std::to_string(config_.tls.certificates.size())},
                             {"note", "certificates reloaded; other changes apply on restart"}});
}

// SPEC §9: stop accepting, let sessions finish for up to shutdown_grace, then close the rest.
void Server::beginDrain(const char* signalName) {
  if (draining_) {
    return;
  }
  draining_ = true;
  logging::info("draining", {{"signal", signalName},
                             {"sessions", std::to_string(sessions_.size())},
                             {"grace_ms", std::to_string(config_.global.shutdown_grace.count())}});
  for (ListenerEntry& entry : listeners_) {
    if (entry.socket != nullptr) {
      entry.socket->close();
      entry.socket = nullptr;
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
  for (ListenerEntry& entry : listeners_) {
    if (entry.socket != nullptr) {
      entry.socket->close();
      entry.socket = nullptr;
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
  std::vector<session::Session*> open;
  for (auto& [raw, owned] : sessions_) {
    open.push_back(raw);
  }
  for (session::Session* session : open) {
    session->close(metrics::CloseReason::Shutdown);
  }
}

} // namespace proxy
