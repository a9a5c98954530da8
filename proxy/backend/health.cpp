// Active health checks of one backend server: every `interval`, a connection in the pool's TLS
// mode runs the protocol's polite probe within `timeout`; `rise`/`fall` consecutive results
// (passive failures of real sessions included) flip the server up or down.
#include "proxy/backend/health.h"

#include "proxy/backend/pool.h"
#include "proxy/log.h"
#include "proxy/net/tls_stream.h"
#include "proxy/protocol/proxy_header.h"
#include "proxy/protocol/registry.h"
#include "tls/engine.h"

namespace backend {

HealthChecker::HealthChecker(uv_loop_t* loop, Pool& pool, Server& server, config::Protocol protocol)
    : loop_(loop), pool_(pool), server_(server), protocol_(protocol) {}

HealthChecker::~HealthChecker() { stop(); }

void HealthChecker::start() {
  timer_ = net::Timer::create(loop_, this);
  begin();
}

void HealthChecker::stop() {
  if (stream_ != nullptr) {
    stream_->close();
    stream_ = nullptr;
    tcp_ = nullptr;
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
  upgrade_.reset();
  tls_ = nullptr;
  int status = 0;
  tcp_ = net::TcpStream::connect(loop_, reinterpret_cast<const sockaddr*>(&server_.address), this,
                                 status);
  stream_ = tcp_;
  if (tcp_ == nullptr) {
    finish(false, std::string("connect: ") + uv_strerror(status));
  }
}

void HealthChecker::send(const std::string& bytes) {
  if (stream_ != nullptr && stream_->write(bytes) != 0) {
    finish(false, "write failed");
  }
}

void HealthChecker::onConnected(int status) {
  if (status != 0) {
    finish(false, std::string("connect: ") + uv_strerror(status));
    return;
  }
  const config::Backend& config = pool_.config();
  if (config.send_proxy_protocol != config::ProxyProtocol::Off) {
    // A v2 LOCAL-equivalent is not in v1; "UNKNOWN" says: no client behind this connection.
    sockaddr_storage none{};
    send(protocol::encodeProxyHeader(config.send_proxy_protocol, none, none));
    if (stream_ == nullptr) {
      return; // the write failed and finished the check
    }
  }
  if (config.tls == config::TlsMode::Implicit) {
    SSL* ssl = pool_.tlsContext()->newSsl(server_.host);
    if (ssl == nullptr) {
      finish(false, "cannot create a TLS connection");
      return;
    }
    auto* stream = net::TlsStream::wrap(tcp_, tls::Engine::client(ssl), this);
    stream_ = stream;
    tls_ = &stream->engine();
    stream->begin();
  } else {
    if (config.tls == config::TlsMode::StartTls) {
      upgrade_ = protocol::info(protocol_).makeBackendStartTls(protocol::hostname());
    }
    tcp_->startReading();
  }
  if (stream_ != nullptr && upgrade_ == nullptr) {
    probe_ = std::make_unique<protocol::HealthProbe>(protocol_, protocol::hostname(), false);
  }
}

void HealthChecker::onSecured() {
  if (tls_ != nullptr) {
    server_.metrics.certificateExpiry(static_cast<double>(tls_->peerCertificateExpiry()));
  }
  if (upgrade_ != nullptr) {
    upgrade_.reset();
    probe_ = std::make_unique<protocol::HealthProbe>(protocol_, protocol::hostname(), true);
    apply(probe_->start());
  }
}

void HealthChecker::onRead(std::span<const char> data) {
  if (upgrade_ != nullptr) {
    using Step = protocol::BackendStartTls::Step;
    protocol::BackendStartTls::Result result = upgrade_->fromBackend(data);
    if (result.step == Step::Send) {
      send(result.toBackend);
    } else if (result.step == Step::Failed) {
      finish(false, "STARTTLS: " + result.reason);
    } else if (result.step == Step::StartTls) {
      SSL* ssl = pool_.tlsContext()->newSsl(server_.host);
      if (ssl == nullptr) {
        finish(false, "cannot create a TLS connection");
        return;
      }
      auto* stream = net::TlsStream::wrap(tcp_, tls::Engine::client(ssl), this);
      stream_ = stream;
      tls_ = &stream->engine();
      stream->begin();
    }
    return;
  }
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
  finish(false, status == net::kTlsFailure
                    ? "TLS: " + (tls_ != nullptr ? tls_->error() : std::string("failure"))
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
  if (stream_ != nullptr) {
    stream_->close();
    stream_ = nullptr;
    tcp_ = nullptr;
  }
  tls_ = nullptr;
  pool_.report(server_, ok, true, reason);
  if (timer_ != nullptr) {
    timer_->start(pool_.config().health.interval);
  }
}

} // namespace backend
