// One client session: TLS at accept when the listener says so, connect a backend server (over
// TLS when the pool says so), then relay bytes both ways until either side ends. Here the
// lifecycle (accept, PROXY header, TLS, connecting, timers, close); the byte pump is
// relay.cpp, login mode session_login.cpp.
#include "proxy/session/session.h"

#include "proxy/log.h"
#include "proxy/net/tls_stream.h"
#include "proxy/protocol/proxy_header.h"
#include "tls/engine.h"

#include <cstring>

namespace session {

Session::Session(SessionOwner& owner, std::shared_ptr<ListenerContext> listener, uv_loop_t* loop)
    : owner_(owner), listenerRef_(std::move(listener)), listener_(*listenerRef_), loop_(loop),
      pool_(listener_.pool.get()) {}

Session::~Session() {
  // close() has released everything already; this guards against a session dropped unclosed
  // (a record left listed would let a kick reach freed memory).
  if (record_ != nullptr) {
    listener_.control->close(*record_);
  }
  if (client_ != nullptr) {
    client_->close();
  }
  if (backend_ != nullptr) {
    backend_->close();
  }
  if (timer_ != nullptr) {
    timer_->close();
  }
}

bool Session::start(uv_stream_t* listening) {
  net::TcpStream* tcp = net::TcpStream::accept(listening, &clientSide_);
  if (tcp == nullptr) {
    enter<Closed>();
    return false;
  }
  client_ = tcp;
  clientTcp_ = tcp;
  clientPeer_ = tcp->peer();
  clientAddress_ = net::formatAddress(clientPeer_); // for the logs only; the address stays binary
  filter_ = listener_.protocol->makeFilter(listenerPolicy());
  timer_ = net::Timer::create(loop_, this);
  startedAt_ = timer_->now();
  lastActivity_ = startedAt_;
  if (!net::isInternetAddress(clientPeer_)) {
    // SPEC §5.1: a client that reset before the accept completed has no address to limit,
    // route, forward or log. That session alone ends (counted as closed by the client); no
    // limit key, no XCLIENT, nothing parsed from text.
    logging::debug("client address unreadable; closing", {{"listener", listener_.config.name}});
    accepted_ = true;
    listener_.metrics.accepted();
    close(metrics::CloseReason::ClientClosed);
    return true;
  }
  if (listener_.config.accept_proxy_protocol) {
    // Only a load balancer we trust may say who the client is.
    bool trusted = false;
    for (const config::Cidr& network : listener_.config.trusted_proxies) {
      trusted = trusted || protocol::cidrContains(network, clientPeer_);
    }
    if (!trusted) {
      logging::warn("PROXY header refused", {{"listener", listener_.config.name},
                                             {"client", clientAddress_},
                                             {"error", "not in trusted_proxies"}});
      close(metrics::CloseReason::ProtocolError);
      return true;
    }
    enter<AwaitingProxyHeader>();
    timer_->start(listener_.config.limits.preauth_timeout);
    client_->startReading();
    return true;
  }
  begin();
  return true;
}

void Session::begin() {
  // SPEC §8: per client address (the real one, behind a trusted PROXY header).
  std::string address = net::formatIp(clientPeer_);
  if (auto refused = listener_.clientLimits->admit(address, timer_->now())) {
    rejectReason_ = *refused;
    logging::warn("connection rejected", {{"listener", listener_.config.name},
                                          {"client", clientAddress_},
                                          {"reason", metrics::toString(*refused)}});
    if (listener_.config.tls != config::TlsMode::Implicit) {
      client_->write(listener_.protocol->tooManyConnections);
    }
    close(metrics::CloseReason::ProtocolError);
    return;
  }
  limitKey_ = std::move(address);
  if (loginMode()) {
    login_ = std::make_unique<LoginState>();
    // SPEC §8: failures count per address, and an IPv6 client per /64 (one host's range).
    sockaddr_storage network = clientPeer_;
    if (network.ss_family == AF_INET6) {
      auto* v6 = reinterpret_cast<sockaddr_in6*>(&network);
      if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
        // ::ffff:a.b.c.d (a PROXY header may carry IPv4 clients so) is an IPv4 client: keyed
        // by its own address, never by the /64 all IPv4 addresses share.
        sockaddr_in v4{};
        v4.sin_family = AF_INET;
        std::memcpy(&v4.sin_addr, &v6->sin6_addr.s6_addr[12], 4);
        network = sockaddr_storage{};
        std::memcpy(&network, &v4, sizeof v4);
      } else {
        std::memset(&v6->sin6_addr.s6_addr[8], 0, 8);
      }
    }
    login_->throttleAddress = net::formatIp(network);
  }
  accepted_ = true;
  listener_.metrics.accepted();
  if (listener_.control != nullptr) {
    record_ = listener_.control->open(listener_.worker, listener_.config.name,
                                      listener_.protocol->name, clientAddress_, this);
  }
  if (listener_.config.tls == config::TlsMode::Implicit) {
    startTls(clientTcp_);
  } else if (loginMode()) {
    startLogin();
  } else {
    enter<Connecting>();
    route();
    connectBackend();
  }
}

void Session::readProxyHeader(std::span<const char> data) {
  std::string& received = std::get<AwaitingProxyHeader>(state_).received;
  received.append(data.data(), data.size());
  protocol::ProxyHeader header = protocol::parseProxyHeader(received);
  if (header.status == protocol::ProxyHeader::Status::NeedMore) {
    return;
  }
  if (header.status == protocol::ProxyHeader::Status::Invalid) {
    logging::warn(
        "PROXY header refused",
        {{"listener", listener_.config.name}, {"client", clientAddress_}, {"error", header.error}});
    close(metrics::CloseReason::ProtocolError);
    return;
  }
  if (header.hasAddresses) {
    clientPeer_ = header.source;
    clientLocal_ = header.destination;
    clientAddress_ = net::formatAddress(clientPeer_);
  }
  std::string rest = received.substr(header.consumed);
  timer_->stop();
  client_->pauseReading();
  begin();
  if (rest.empty() || phase() == Phase::Closed) {
    return;
  }
  if (phase() == Phase::Handshaking) {
    static_cast<net::TlsStream*>(client_)->receive(rest); // the start of the ClientHello
  } else {
    earlyClient_ = std::move(rest); // relayed once the backend has greeted
  }
}

// Implicit TLS: the handshake comes first; the backend is only connected for a client that
// completed it, so a port scan or plaintext on a TLS port never reaches a backend.
void Session::startTls(net::TcpStream* tcp) {
  enter<Handshaking>();
  tlsContext_ = *listener_.tls;
  SSL* ssl = tlsContext_->newSsl(listener_.protocol->alpn);
  if (ssl == nullptr) {
    handshakeFailed("cannot create a TLS connection");
    return;
  }
  timer_->start(listener_.config.limits.preauth_timeout);
  auto* stream = net::TlsStream::wrap(tcp, tls::Engine::server(ssl), &clientSide_);
  client_ = stream;
  clientTls_ = &stream->engine();
  stream->begin();
}

void Session::onClientSecured() {
  if (clientUpgrading_) {
    // STARTTLS finished: the dialogue goes on inside TLS, with what was learned forgotten.
    clientUpgrading_ = false;
    tlsVersion_ = clientTls_->version();
    tlsCipher_ = clientTls_->cipher();
    listener_.metrics.tlsHandshakeOk(
        tlsVersion_, static_cast<double>(timer_->now() - upgradeStartedAt_) / 1000.0,
        clientTls_->resumed());
    listener_.metrics.startTls(metrics::StartTlsSide::Client, metrics::StartTlsResult::Ok);
    if (listener_.protocol->preauthEndsAtTls) {
      preauthOver(); // SMTP relay sessions: the limit runs until TLS (SPEC §3)
    }
    if (filter_ != nullptr) {
      filter_->tlsStarted(output_);
      apply(output_);
    }
    if (login_ != nullptr && login_->dialogue != nullptr) {
      login_->dialogue->tlsStarted(login_->output);
      applyLogin();
    }
    return;
  }
  if (phase() != Phase::Handshaking) {
    return;
  }
  timer_->stop();
  tlsVersion_ = clientTls_->version();
  tlsCipher_ = clientTls_->cipher();
  listener_.metrics.tlsHandshakeOk(
      tlsVersion_, static_cast<double>(timer_->now() - startedAt_) / 1000.0, clientTls_->resumed());
  if (listener_.protocol->preauthEndsAtTls) {
    preauthDone_ = true;
  }
  if (loginMode()) {
    startLogin();
    return;
  }
  // The client has nothing to say before the backend's greeting; it waits in the kernel.
  client_->pauseReading();
  enter<Connecting>();
  route();
  connectBackend();
}

void Session::handshakeFailed(const std::string& why) {
  listener_.metrics.tlsHandshakeFailed(static_cast<double>(timer_->now() - startedAt_) / 1000.0);
  logging::warn("TLS handshake failed",
                {{"listener", listener_.config.name}, {"client", clientAddress_}, {"error", why}});
  close(why == "timeout" ? metrics::CloseReason::Timeout : metrics::CloseReason::TlsError);
}

void Session::route() {
  std::string serverName = clientTls_ != nullptr ? clientTls_->serverName() : "";
  // The part after the '@'; a user without one, or with more than one (servers split such a
  // name differently), has no domain to route by.
  std::string_view domain;
  if (std::size_t at = user_.find('@'); at != std::string::npos && user_.rfind('@') == at) {
    domain = std::string_view(user_).substr(at + 1);
  }
  for (ListenerContext::RouteTarget& target : listener_.routes) {
    std::string_view name =
        target.route.kind == config::Route::Kind::Sni ? std::string_view(serverName) : domain;
    if (!name.empty() && config::routeMatches(target.route.pattern, name)) {
      pool_ = target.pool.get();
      target.metrics.chosen();
      return;
    }
  }
  pool_ = listener_.pool.get();
  listener_.defaultRoute.chosen();
}

void Session::connectBackend() {
  // What the pool's balancer hashes, as its catalogue row says (the client address is the one
  // a trusted PROXY header gave, if any).
  std::string key;
  switch (backend::balancerInfo(pool_->config().balance).key) {
  case backend::BalanceKey::None:
    break;
  case backend::BalanceKey::ClientAddress:
    key = net::formatIp(clientPeer_);
    break;
  case backend::BalanceKey::User:
    key = throttleUser(); // the user name, case folded
    break;
  }
  server_ = pool_->pick(tried_, key);
  if (server_ == nullptr) {
    // Every server was tried (or the pool has none): the client hears the protocol's own
    // "temporarily unavailable" and the session ends.
    client_->write(listener_.protocol->unavailable);
    close(metrics::CloseReason::BackendUnavailable);
    return;
  }
  tried_.push_back(server_);
  if (record_ != nullptr) {
    listener_.control->setBackend(*record_, server_->addressText);
  }
  Connecting* connecting = in<Connecting>();
  if (connecting == nullptr) {
    connecting = &enter<Connecting>();
  }
  connecting->startedAt = timer_->now();
  timer_->start(pool_->config().connect_timeout);
  const config::Backend& pool = pool_->config();
  backend::ConnectSpec spec;
  spec.address = server_->address;
  spec.host = server_->host;
  spec.protocol = listener_.config.protocol;
  spec.tls = pool.tls;
  spec.tlsContext = pool_->tlsContext();
  spec.proxyProtocol = pool.send_proxy_protocol;
  spec.client = clientPeer_;
  if (pool.send_proxy_protocol != config::ProxyProtocol::Off && clientLocal_.ss_family == 0) {
    // Asked of the kernel only for a PROXY header to send (one system call per session less
    // for every other pool).
    clientLocal_ = clientTcp_->local();
  }
  spec.local = clientLocal_;
  if (pool.send_proxy_protocol == config::ProxyProtocol::V2 && clientTls_ != nullptr &&
      !clientUpgrading_ && !tlsVersion_.empty()) {
    // SPEC §13: what the client's TLS was, for servers that log it or decide by it.
    protocol::ProxyTls facts;
    facts.version = tlsVersion_;
    facts.cipher = tlsCipher_;
    facts.serverName = clientTls_->serverName();
    facts.clientCertificate = clientTls_->peerPresentedCertificate();
    facts.certificateOnThisConnection = facts.clientCertificate && !clientTls_->resumed();
    facts.clientVerified = clientTls_->peerVerified();
    facts.clientCommonName = clientTls_->peerCommonName();
    spec.clientTls = std::move(facts);
  }
  if (listener_.protocol->hasXclient && pool.smtp_xclient) {
    spec.xclient = xclientCommandForClient();
  }
  connecting->connector = std::make_unique<backend::Connector>(
      loop_, std::move(spec), static_cast<backend::Connector::Handler&>(backendSide_));
  connecting->connector->start(); // (may report a failure, and so end this phase, at once)
}

void Session::releaseBackend() {
  if (backend_ != nullptr) {
    backend_->close();
    backend_ = nullptr;
  }
  if (Connecting* connecting = in<Connecting>()) {
    connecting->connector.reset();
  }
  backendTls_ = nullptr;
  if (login_ != nullptr) {
    login_->replay.reset();
  }
  if (server_ != nullptr) {
    pool_->release(*server_);
    server_ = nullptr;
    if (record_ != nullptr) {
      listener_.control->setBackend(*record_, "");
    }
  }
}

// A connect, TLS or greeting failure before anything reached the client: try another server
// while `retries` allows (SPEC §7), otherwise tell the client the service is unavailable.
void Session::backendFailed(metrics::BackendError reason, const std::string& detail) {
  if (login_ != nullptr && login_->replay != nullptr && login_->replay->credentialsSent()) {
    loginUnavailable(reason, detail);
    return;
  }
  logging::warn("backend failed", {{"listener", listener_.config.name},
                                   {"backend", pool_->config().name},
                                   {"server", server_ != nullptr ? server_->name : "-"},
                                   {"reason", metrics::toString(reason)},
                                   {"error", detail}});
  if (server_ != nullptr) {
    server_->metrics.error(reason);
    pool_->report(*server_, false, false, metrics::toString(reason)); // passive
  }
  releaseBackend();
  timer_->stop();
  if (tried_.size() <= pool_->config().retries) {
    connectBackend();
    return;
  }
  client_->write(listener_.protocol->unavailable);
  close(metrics::CloseReason::BackendUnavailable);
}

// The server is reachable and greeted (or its greeting was read by STARTTLS/XCLIENT).
void Session::onBackendReady(backend::Connector::Ready ready) {
  std::get<Connecting>(state_).connector.reset(); // (its last callback: this one)
  backend_ = ready.stream;
  backend_->setHandler(&backendSide_);
  backendTls_ = ready.tls;
  if (backendTls_ != nullptr && server_ != nullptr) {
    server_->metrics.certificateExpiry(static_cast<double>(backendTls_->peerCertificateExpiry()));
  }
  if (ready.startTls) {
    listener_.metrics.startTls(metrics::StartTlsSide::Backend, metrics::StartTlsResult::Ok);
  }
  if (listener_.protocol->hasXclient && pool_->config().smtp_xclient && !ready.xclientForwarded) {
    logging::info("XCLIENT not used", {{"listener", listener_.config.name},
                                       {"server", server_ != nullptr ? server_->name : "-"},
                                       {"reason", "not offered or refused by the server"}});
  }
  if (loginMode()) {
    startReplay(ready.greetingRead);
    if (!ready.greetingRead && login_ != nullptr && login_->replay != nullptr) {
      replayStep(login_->replay->fromBackend(ready.greeting)); // the server's first bytes
    }
    return;
  }
  if (becomeReady()) {
    relayFromBackend(ready.greeting);
  }
}

// SPEC §5, §7: a connect, TLS, STARTTLS or greeting failure makes a failed server; another may
// serve (backend STARTTLS fails closed: never a plaintext session).
void Session::onBackendFailed(const backend::Connector::Failure& failure) {
  std::get<Connecting>(state_).connector.reset(); // (its last callback: this one)
  if (failure.startTls) {
    listener_.metrics.startTls(metrics::StartTlsSide::Backend, *failure.startTls);
  }
  backendFailed(failure.reason, failure.detail);
}

std::string Session::xclientCommandForClient() const {
  // From the binary address: nothing here parses text, nothing can throw (SPEC §5.1).
  return protocol::xclientCommand(net::formatIp(clientPeer_), clientPeer_.ss_family == AF_INET6,
                                  net::portOf(clientPeer_));
}

// The go-ahead is already queued on the TCP stream, ahead of anything TLS will write, so the
// client reads it in plaintext before its handshake starts.
void Session::upgradeClient() {
  tlsContext_ = *listener_.tls;
  SSL* ssl = tlsContext_->newSsl(listener_.protocol->alpn);
  if (ssl == nullptr) {
    close(metrics::CloseReason::TlsError);
    return;
  }
  clientUpgrading_ = true;
  upgradeStartedAt_ = timer_->now();
  auto* stream = net::TlsStream::wrap(clientTcp_, tls::Engine::server(ssl), &clientSide_);
  client_ = stream;
  clientTls_ = &stream->engine();
  stream->begin();
}

void Session::onClientError(int status) {
  if (clientUpgrading_) {
    listener_.metrics.startTls(metrics::StartTlsSide::Client,
                               metrics::StartTlsResult::HandshakeFailed);
    upgradeStartedAt_ = upgradeStartedAt_ == 0 ? startedAt_ : upgradeStartedAt_;
    handshakeFailed(status == net::kTlsFailure ? clientTls_->error() : uv_strerror(status));
    return;
  }
  if (phase() == Phase::Handshaking) {
    if (!static_cast<const net::TlsStream*>(client_)->heardFromPeer()) {
      // SPEC §6: a connection that closes before sending a byte (a load balancer's TCP check,
      // a port scan) is no failed handshake: the client simply closed.
      logging::debug("client closed before the TLS handshake",
                     {{"listener", listener_.config.name}, {"client", clientAddress_}});
      close(metrics::CloseReason::ClientClosed);
      return;
    }
    handshakeFailed(status == net::kTlsFailure ? clientTls_->error() : uv_strerror(status));
    return;
  }
  if (status == net::kTlsFailure) {
    logging::info("TLS error", {{"listener", listener_.config.name},
                                {"client", clientAddress_},
                                {"error", clientTls_->error()}});
    close(metrics::CloseReason::TlsError);
    return;
  }
  logging::debug("client connection error",
                 {{"listener", listener_.config.name}, {"error", uv_strerror(status)}});
  close(metrics::CloseReason::ClientClosed);
}

void Session::onBackendError(int status) {
  if (phase() == Phase::Connecting) {
    // (During a login replay; the connector reports its own failures.)
    if (status == net::kTlsFailure) {
      backendFailed(metrics::BackendError::Tls,
                    backendTls_ != nullptr ? backendTls_->error() : "TLS failure");
    } else {
      backendFailed(metrics::BackendError::Closed, uv_strerror(status));
    }
    return;
  }
  logging::debug("backend connection error",
                 {{"listener", listener_.config.name},
                  {"error", status == net::kTlsFailure ? "TLS failure" : uv_strerror(status)}});
  close(metrics::CloseReason::BackendClosed);
}

void Session::onTimer() {
  switch (phase()) {
  case Phase::ProxyHeader:
    logging::warn(
        "PROXY header refused",
        {{"listener", listener_.config.name}, {"client", clientAddress_}, {"error", "timeout"}});
    close(metrics::CloseReason::Timeout);
    return;
  case Phase::Handshaking:
    handshakeFailed("timeout");
    return;
  case Phase::Connecting:
    backendFailed(metrics::BackendError::Timeout, login_ != nullptr && login_->replay != nullptr
                                                      ? "no verdict within the login timeout"
                                                      : "no greeting within connect_timeout");
    return;
  case Phase::Login:
    if (login_ != nullptr && login_->delaying) {
      login_->delaying = false;
      routeLogin();
      return;
    }
    break;
  case Phase::Relaying:
    break;
  case Phase::Closed:
    return;
  }
  std::uint64_t now = timer_->now();
  auto idle = static_cast<std::uint64_t>(listener_.config.limits.idle_timeout.count());
  auto preauth = static_cast<std::uint64_t>(listener_.config.limits.preauth_timeout.count());
  if (!preauthDone_ && now - startedAt_ >= preauth) {
    // SPEC §8: a client that has not authenticated in time hears so in its protocol's words.
    client_->write(listener_.protocol->timedOut);
    close(metrics::CloseReason::Timeout);
    return;
  }
  // The timer is armed once per period, not per read: a read only moves lastActivity_.
  if (now - lastActivity_ >= idle) {
    close(metrics::CloseReason::Timeout);
    return;
  }
  armTimer();
}

void Session::armTimer() {
  std::uint64_t now = timer_->now();
  auto idle = static_cast<std::uint64_t>(listener_.config.limits.idle_timeout.count());
  std::uint64_t at = lastActivity_ + idle;
  if (!preauthDone_) {
    at = std::min<std::uint64_t>(
        at,
        startedAt_ + static_cast<std::uint64_t>(listener_.config.limits.preauth_timeout.count()));
  }
  timer_->start(std::chrono::milliseconds(at > now ? at - now : 0));
}

void Session::preauthOver() {
  if (!preauthDone_) {
    preauthDone_ = true;
    if (phase() == Phase::Relaying) {
      armTimer();
    }
  }
}

void Session::shutdown() {
  // SPEC §9: the protocol's goodbye where postern still holds the dialogue (before the backend
  // greeted, or while the session is still parsed); after that it would land mid-stream.
  bool parsed = phase() == Phase::Connecting || phase() == Phase::Login ||
                (phase() == Phase::Relaying && filter_ != nullptr);
  if (parsed && client_ != nullptr && !clientUpgrading_) {
    client_->write(listener_.protocol->shuttingDown);
  }
  close(metrics::CloseReason::Shutdown);
}

void Session::kick(const std::string& by) {
  if (phase() == Phase::Closed) {
    return;
  }
  logging::info("session kicked", {{"listener", listener_.config.name},
                                   {"client", clientAddress_},
                                   {"user", user_.empty() ? "-" : user_},
                                   {"by", by}});
  bool parsed = phase() == Phase::Connecting || phase() == Phase::Login ||
                (phase() == Phase::Relaying && filter_ != nullptr);
  // Relaying raw bytes, the goodbye can only follow a line the server finished.
  bool betweenLines = phase() == Phase::Relaying && filter_ == nullptr && lastToClient_ == '\n';
  if ((parsed || betweenLines) && client_ != nullptr && !clientUpgrading_) {
    client_->write(listener_.protocol->kicked);
  }
  close(metrics::CloseReason::Kicked);
}

void Session::close(metrics::CloseReason reason) {
  if (phase() == Phase::Closed) {
    return;
  }
  if (record_ != nullptr) {
    listener_.control->close(*record_);
    record_.reset();
  }
  // Whatever the phase held goes now (a connector closes its connection).
  enter<Closed>();
  std::uint64_t now = timer_->now();
  double seconds = static_cast<double>(now - startedAt_) / 1000.0;
  std::string backendAddress = server_ != nullptr ? server_->addressText : "";
  if (!accepted_) {
    // Refused before it became a session (PROXY header, per-IP limits): counted as rejected
    // only; what postern said (the protocol's refusal) still goes out.
    listener_.metrics.rejected(rejectReason_);
    releaseBackend();
    client_->closeAfterFlush();
    client_ = nullptr;
    timer_->close();
    timer_ = nullptr;
    owner_.onSessionClosed(*this);
    return;
  }
  listener_.metrics.closed(reason, seconds);
  login_.reset(); // the credentials, if any, are wiped
  if (!limitKey_.empty()) {
    listener_.clientLimits->leave(limitKey_, now);
  }
  logging::access({{"listener", listener_.config.name},
                   {"protocol", listener_.protocol->name},
                   {"client", clientAddress_},
                   {"tls_version", tlsVersion_},
                   {"tls_cipher", tlsCipher_},
                   {"user", user_},
                   {"backend", backendAddress},
                   {"pool", backendAddress.empty() ? "" : pool_->config().name},
                   {"bytes_in", std::to_string(bytesIn_)},
                   {"bytes_out", std::to_string(bytesOut_)},
                   {"duration_ms", std::to_string(now - startedAt_)},
                   {"reason", metrics::toString(reason)}});
  releaseBackend();
  if (client_ != nullptr) {
    // Whatever postern itself said last ("* BYE ...") still goes out before the close.
    client_->closeAfterFlush();
    client_ = nullptr;
    clientTls_ = nullptr;
  }
  timer_->close();
  timer_ = nullptr;
  owner_.onSessionClosed(*this);
}

} // namespace session
