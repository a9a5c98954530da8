// Active health checks of one backend server: every `interval`, a connection in the pool's TLS
// mode runs the protocol's polite probe within `timeout`; `rise`/`fall` consecutive results
// (passive failures of real sessions included) flip the server up or down.
#include "proxy/backend/health.h"

#include "proxy/backend/pool.h"
#include "proxy/log.h"
#include "proxy/protocol/registry.h"

namespace backend {

HealthChecker::HealthChecker(uv_loop_t* loop, Pool& pool, Server& server, config::Protocol protocol)
    : loop_(loop), pool_(pool), server_(server), protocol_(protocol) {}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::start() {
  timer_ = net::Timer::create(loop_, this);
  begin();
}

void HealthChecker::stop() {
  connector_.reset();
  if (stream_ != nullptr) {
    stream_->close();
    stream_ = nullptr;
  }
  if (timer_ != nullptr) {
    timer_->close();
    timer_ = nullptr;
  }
}

void HealthChecker::begin() {
  const config::Backend& config = pool_.config();
  checking_ = true;
  timer_->start(config.health.timeout);
  probe_.reset();
  ConnectSpec spec;
  spec.address = server_.address;
  spec.host = server_.host;
  spec.protocol = protocol_;
  spec.tls = config.tls;
  spec.tlsContext = pool_.tlsContext();
  // With no client behind the check, the header says so (v1 UNKNOWN, v2 LOCAL).
  spec.proxyProtocol = config.send_proxy_protocol;
  Connector::Handler& handler = *this;
  connector_ = std::make_unique<Connector>(loop_, std::move(spec), handler);
  connector_->start();
}

void HealthChecker::send(const std::string& bytes) {
  if (stream_ != nullptr && stream_->write(bytes) != 0) {
    finish(false, "write failed");
  }
}

void HealthChecker::onBackendReady(Connector::Ready ready) {
  connector_.reset();
  stream_ = ready.stream;
  stream_->setHandler(this);
  if (ready.tls != nullptr) {
    server_.metrics.certificateExpiry(static_cast<double>(ready.tls->peerCertificateExpiry()));
  }
  // After STARTTLS the greeting was read already: the probe asks for capabilities at once.
  probe_ =
      std::make_unique<protocol::HealthProbe>(protocol_, protocol::hostname(), ready.greetingRead);
  if (ready.greetingRead) {
    apply(probe_->start());
  } else {
    apply(probe_->fromBackend(ready.greeting));
  }
}

void HealthChecker::onBackendFailed(const Connector::Failure& failure) {
  std::string reason = failure.detail;
  if (failure.reason == metrics::BackendError::Refused ||
      failure.reason == metrics::BackendError::Timeout) {
    reason = "connect: " + reason;
  } else if (failure.startTls) {
    reason = "STARTTLS: " + reason;
  } else if (failure.reason == metrics::BackendError::Tls) {
    reason = "TLS: " + reason;
  }
  connector_.reset();
  finish(false, reason);
}

void HealthChecker::onRead(std::span<const char> data) {
  if (probe_ != nullptr) {
    apply(probe_->fromBackend(data));
  }
}

void HealthChecker::apply(const protocol::HealthProbe::Result& result) {
  switch (result.step) {
  case protocol::HealthProbe::Step::NeedMore:
    return;
  case protocol::HealthProbe::Step::Send:
    send(result.toBackend);
    return;
  case protocol::HealthProbe::Step::Failed:
    finish(false, result.reason);
    return;
  case protocol::HealthProbe::Step::Done:
    server_.capabilities = probe_->capabilities();
    finish(true, "");
    return;
  }
}

void HealthChecker::onEnd() { finish(false, "connection closed during the check"); }

void HealthChecker::onError(int status) {
  finish(false, status == net::kTlsFailure ? std::string("TLS failure")
                                           : std::string(uv_strerror(status)));
}

void HealthChecker::onTimer() {
  if (checking_) {
    finish(false, "timeout");
    return;
  }
  begin();
}

void HealthChecker::finish(bool ok, const std::string& reason) {
  if (!checking_) {
    return;
  }
  checking_ = false;
  connector_.reset();
  if (stream_ != nullptr) {
    stream_->close();
    stream_ = nullptr;
  }
  pool_.report(server_, ok, true, reason);
  if (timer_ != nullptr) {
    timer_->start(pool_.config().health.interval);
  }
}

} // namespace backend
