// Login mode in the session (SPEC §5): postern's own dialogue with the client, the throttle,
// routing by user, the replay at the chosen server and what its verdict means for the session.
#include "proxy/session/session.h"

#include "proxy/log.h"

namespace session {

protocol::Policy Session::listenerPolicy() const {
  protocol::Policy policy;
  policy.listenerTls = listener_.config.tls;
  policy.requireTls = listener_.config.require_tls;
  policy.allowAuth = listener_.config.allow_auth;
  policy.maxLineLength = listener_.config.limits.max_line_length;
  policy.hostname = protocol::hostname();
  return policy;
}

void Session::startLogin() {
  enter<InLogin>();
  filter_.reset();
  login_->dialogue = listener_.protocol->makeLogin(listenerPolicy(), {pool_->commonCapabilities()});
  login_->dialogue->greet(login_->output);
  applyLogin();
  if (phase() != Phase::Login) {
    return;
  }
  armTimer();
  if (client_->startReading() != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  if (!earlyClient_.empty()) {
    std::string early;
    early.swap(earlyClient_);
    onClientRead(early);
  }
}

void Session::applyLogin() {
  protocol::LoginOutput& out = login_->output;
  countEvents(out.events);
  int clientStatus = out.toClient.empty() ? 0 : client_->write(out.toClient);
  bool closeNow = out.close;
  bool quit = out.quit;
  bool startTls = out.startTls;
  std::optional<protocol::Credentials> credentials = std::move(out.credentials);
  std::string helo = std::move(out.clientHelo);
  out.reset();
  if (closeNow) {
    close(metrics::CloseReason::ProtocolError);
    return;
  }
  if (quit || clientStatus != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  if (startTls) {
    upgradeClient();
    return;
  }
  if (credentials) {
    credentialsCaptured(std::move(*credentials), std::move(helo));
    return;
  }
  if (client_->pendingBytes() > net::ByteStream::kHighWater) {
    client_->pauseReading(); // a client that sends and never reads its replies
  }
}

std::string Session::throttleUser() const {
  std::string user = user_;
  for (char& c : user) {
    c = protocol::lowerAscii(c);
  }
  return user;
}

void Session::credentialsCaptured(protocol::Credentials credentials, std::string helo) {
  user_ = credentials.user;
  login_->mechanism = credentials.mechanism;
  login_->clientHelo = std::move(helo);
  AuthThrottle::Decision decision =
      listener_.authThrottle->attempt(login_->throttleAddress, throttleUser(), timer_->now());
  if (decision.blocked) {
    listener_.metrics.auth(login_->mechanism, metrics::AuthResult::Throttled);
    credentials.clear();
    if (++login_->throttledAttempts >= kMaxThrottledAttempts) {
      // A client that keeps trying while refused gets its refusal and the door.
      logging::warn(
          "authentication throttled; closing",
          {{"listener", listener_.config.name}, {"client", clientAddress_}, {"user", user_}});
      client_->write(login_->dialogue->throttledReply()); // what was pipelined is dropped
      close(metrics::CloseReason::ProtocolError);
      return;
    }
    logging::warn(
        "authentication throttled",
        {{"listener", listener_.config.name}, {"client", clientAddress_}, {"user", user_}});
    login_->dialogue->throttled(login_->output);
    applyLogin();
    return;
  }
  login_->credentials = std::move(credentials);
  client_->pauseReading();
  if (decision.delay.count() > 0) {
    // SPEC §8: every attempt the throttle delays counts as throttled (its verdict, when it
    // comes, counts as ok or failed as well).
    listener_.metrics.auth(login_->mechanism, metrics::AuthResult::Throttled);
    logging::info("authentication delayed", {{"listener", listener_.config.name},
                                             {"client", clientAddress_},
                                             {"user", user_},
                                             {"delay_ms", std::to_string(decision.delay.count())}});
    login_->delaying = true;
    timer_->start(decision.delay);
    return;
  }
  routeLogin();
}

void Session::routeLogin() {
  enter<Connecting>();
  route();
  tried_.clear();
  connectBackend();
}

void Session::startReplay(bool greeted) {
  protocol::ReplayContext context;
  context.clientIp = net::formatIp(clientPeer_);
  context.clientPort = net::portOf(clientPeer_);
  context.serverHost = server_->host;
  context.serverPort = net::portOf(server_->address);
  context.hostname = protocol::hostname();
  context.clientHelo = login_->clientHelo;
  context.greeted = greeted;
  // The replay gets a copy: a server that fails before the credentials went out is retried
  // elsewhere with the session's.
  login_->replay = listener_.protocol->makeReplay(login_->credentials->copy(), std::move(context));
  // The server may take its time to check a password (and delays failures on purpose).
  timer_->start(std::max<std::chrono::milliseconds>(pool_->config().connect_timeout,
                                                    std::chrono::seconds(30)));
  if (greeted) {
    replayStep(login_->replay->start());
  }
}

void Session::replayStep(protocol::LoginReplay::Result result) {
  using Step = protocol::LoginReplay::Step;
  switch (result.step) {
  case Step::NeedMore:
    return;
  case Step::Send: {
    int status = backend_->write(result.toBackend);
    protocol::wipe(result.toBackend);
    if (status != 0) {
      backendFailed(metrics::BackendError::Closed, "write failed");
    }
    return;
  }
  case Step::Failed:
    backendFailed(metrics::BackendError::Greeting, result.reason);
    return;
  case Step::Accepted:
    loginAccepted(std::move(result.toClient));
    return;
  case Step::Rejected:
    loginRejected(std::move(result.toClient));
    return;
  }
}

void Session::loginAccepted(std::string verdict) {
  listener_.metrics.auth(login_->mechanism, metrics::AuthResult::Ok);
  // Not a failure after all.
  listener_.authThrottle->succeeded(login_->throttleAddress, throttleUser());
  std::string rest = login_->dialogue->acceptedRest();
  login_.reset(); // dialogue, replay and credentials (wiped): the session only relays now
  if (record_ != nullptr) {
    listener_.control->setUser(*record_, user_); // the API lists (and kicks) it by user now
  }
  // The server's verdict, byte for byte.
  bytesOut_ += verdict.size();
  listener_.metrics.bytesToClient(verdict.size());
  if (client_->write(verdict) != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  if (listener_.protocol->makeFilterAfterLogin != nullptr) {
    // SMTP stays parsed after authentication, as in passthrough: XCLIENT/XFORWARD from a
    // client must never reach a server that trusts postern.
    protocol::Policy policy = listenerPolicy();
    // With TLS the filter treats the session as TLS; without, STARTTLS is no longer postern's
    // to answer (nor to offer) once the session is authenticated.
    policy.listenerTls = clientTls_ != nullptr ? config::TlsMode::Implicit : config::TlsMode::None;
    filter_ = listener_.protocol->makeFilterAfterLogin(policy);
  }
  if (!becomeReady()) {
    return;
  }
  preauthOver();
  if (!rest.empty() && phase() == Phase::Relaying) {
    onClientRead(rest);
  }
}

void Session::loginRejected(std::string verdict) {
  listener_.metrics.auth(login_->mechanism, metrics::AuthResult::Failed); // (counted at attempt())
  logging::info("authentication failed", {{"listener", listener_.config.name},
                                          {"client", clientAddress_},
                                          {"user", user_},
                                          {"server", server_ != nullptr ? server_->name : "-"}});
  login_->credentials.reset();
  // The server keeps nothing of a failed login; a retry is routed afresh (the user may change).
  releaseBackend();
  tried_.clear();
  enter<InLogin>();
  if (client_->write(verdict) != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  armTimer();
  login_->dialogue->rejected(login_->output);
  applyLogin();
  if (phase() == Phase::Login && !login_->credentials && !login_->delaying) {
    client_->startReading();
  }
}

// The server failed after the credentials went out (closed, timed out, misbehaved): the
// attempt ends here with a temporary failure. Never replayed at another server: whoever
// guesses passwords gets one try per attempt, and it was counted as one.
void Session::loginUnavailable(metrics::BackendError reason, const std::string& detail) {
  logging::warn("backend failed during login",
                {{"listener", listener_.config.name},
                 {"client", clientAddress_},
                 {"user", user_},
                 {"server", server_ != nullptr ? server_->name : "-"},
                 {"reason", metrics::toString(reason)},
                 {"error", detail}});
  listener_.metrics.auth(login_->mechanism, metrics::AuthResult::Failed);
  if (server_ != nullptr) {
    server_->metrics.error(reason);
    if (reason != metrics::BackendError::Timeout) {
      // A server that dies mid-login is unhealthy; one slow to judge a password is not.
      pool_->report(*server_, false, false, metrics::toString(reason));
    }
  }
  login_->credentials.reset();
  releaseBackend();
  tried_.clear();
  enter<InLogin>();
  armTimer();
  login_->dialogue->unavailable(login_->output);
  applyLogin();
  if (phase() == Phase::Login && !login_->credentials && !login_->delaying) {
    client_->startReading();
  }
}

} // namespace session
