// One way to a backend server (see connector.h): the steps in the order they go on the wire.
#include "proxy/backend/connector.h"

#include "proxy/net/tls_stream.h"
#include "proxy/protocol/proxy_header.h"
#include "proxy/protocol/registry.h"

namespace backend {

Connector::Connector(uv_loop_t* loop, ConnectSpec spec, Handler& handler)
    : loop_(loop), spec_(std::move(spec)), handler_(handler) {}

Connector::~Connector() {
  if (stream_ != nullptr) {
    stream_->close();
  }
}

void Connector::start() {
  int status = 0;
  tcp_ = net::TcpStream::connect(loop_, reinterpret_cast<const sockaddr*>(&spec_.address), this,
                                 status);
  stream_ = tcp_;
  if (tcp_ == nullptr) {
    fail(metrics::BackendError::Refused, uv_strerror(status));
  }
}

bool Connector::send(const std::string& bytes) {
  if (stream_->write(bytes) != 0) {
    fail(metrics::BackendError::Closed, "write failed");
    return false;
  }
  return true;
}

void Connector::onConnected(int status) {
  if (status != 0) {
    fail(status == UV_ETIMEDOUT ? metrics::BackendError::Timeout : metrics::BackendError::Refused,
         uv_strerror(status));
    return;
  }
  // The PROXY header comes first on the wire, before TLS or anything of the protocol.
  if (spec_.proxyProtocol != config::ProxyProtocol::Off &&
      tcp_->write(protocol::encodeProxyHeader(spec_.proxyProtocol, spec_.client, spec_.local,
                                              spec_.clientTls ? &*spec_.clientTls : nullptr)) !=
          0) {
    fail(metrics::BackendError::Closed, "cannot send the PROXY header");
    return;
  }
  switch (spec_.tls) {
  case config::TlsMode::Implicit:
    startTlsHandshake();
    return;
  case config::TlsMode::StartTls:
    step_ = Step::StartTls;
    upgrade_ = protocol::info(spec_.protocol).makeBackendStartTls(protocol::hostname());
    if (int error = tcp_->startReading(); error != 0) {
      fail(metrics::BackendError::Closed, uv_strerror(error));
    }
    return;
  case config::TlsMode::None:
    afterSecured();
    return;
  }
}

// TLS towards the server, on connect (implicit) or after its STARTTLS go-ahead.
void Connector::startTlsHandshake() {
  step_ = Step::Handshaking;
  SSL* ssl = spec_.tlsContext != nullptr ? spec_.tlsContext->newSsl(spec_.host) : nullptr;
  if (ssl == nullptr) {
    fail(metrics::BackendError::Tls, "cannot create a TLS connection");
    return;
  }
  auto* stream = net::TlsStream::wrap(tcp_, tls::Engine::client(ssl), this);
  stream_ = stream;
  tls_ = &stream->engine();
  stream->begin();
}

void Connector::onSecured() { afterSecured(); }

void Connector::afterSecured() {
  if (!spec_.xclient.empty() && protocol::info(spec_.protocol).hasXclient) {
    startXclient(upgraded_ ? plaintextGreeting_ : std::string());
    return;
  }
  if (upgraded_) {
    ready(plaintextGreeting_, true);
    return;
  }
  step_ = Step::Greeting;
  if (int error = stream_->startReading(); error != 0) {
    fail(metrics::BackendError::Closed, uv_strerror(error));
  }
}

void Connector::startXclient(std::string greetingForClient) {
  step_ = Step::Xclient;
  bool greeted = !greetingForClient.empty();
  xclient_ = std::make_unique<protocol::SmtpXclient>(protocol::hostname(), spec_.xclient,
                                                     std::move(greetingForClient));
  if (int error = stream_->startReading(); error != 0) {
    fail(metrics::BackendError::Closed, uv_strerror(error));
    return;
  }
  if (greeted) {
    // After STARTTLS the server waits for EHLO; XCLIENT follows over TLS.
    stepXclient(xclient_->start());
  }
}

void Connector::onRead(std::span<const char> data) {
  switch (step_) {
  case Step::StartTls:
    stepStartTls(data);
    return;
  case Step::Xclient:
    stepXclient(xclient_->fromBackend(data));
    return;
  case Step::Greeting:
    // SPEC §7: a server that greets with a refusal is a failed server; another may serve.
    if (!protocol::greetingIsReady(spec_.protocol, std::string_view(data.data(), data.size()))) {
      std::string_view text(data.data(), std::min<std::size_t>(data.size(), 80));
      fail(metrics::BackendError::Greeting, std::string(text.substr(0, text.find('\r'))));
      return;
    }
    ready(std::string(data.data(), data.size()), false);
    return;
  case Step::Connecting:
  case Step::Handshaking:
  case Step::Done:
    return;
  }
}

// SPEC §5: backend STARTTLS fails closed. Anything but a clean go-ahead makes this a failed
// backend (retried elsewhere), never a plaintext session.
void Connector::stepStartTls(std::span<const char> data) {
  using Step = protocol::BackendStartTls::Step;
  using Failure = protocol::BackendStartTls::Failure;
  protocol::BackendStartTls::Result result = upgrade_->fromBackend(data);
  switch (result.step) {
  case Step::NeedMore:
  case Step::Ready:
    return;
  case Step::Send:
    send(result.toBackend);
    return;
  case Step::StartTls:
    // The client sees only the plaintext greeting's status line, response codes removed.
    plaintextGreeting_ = upgrade_->greetingForClient();
    upgraded_ = true;
    startTlsHandshake();
    return;
  case Step::Failed:
    if (result.failure == Failure::Greeting) {
      fail(metrics::BackendError::Greeting, result.reason);
      return;
    }
    fail(metrics::BackendError::Tls, result.reason,
         result.failure == Failure::Injection ? metrics::StartTlsResult::InjectionRejected
                                              : metrics::StartTlsResult::Refused);
    return;
  }
}

// SMTP XCLIENT: the server learns the client's address before the client says anything.
void Connector::stepXclient(const protocol::BackendStartTls::Result& result) {
  using Step = protocol::BackendStartTls::Step;
  switch (result.step) {
  case Step::NeedMore:
  case Step::StartTls:
    return;
  case Step::Send:
    send(result.toBackend);
    return;
  case Step::Failed:
    fail(metrics::BackendError::Greeting, result.reason);
    return;
  case Step::Ready:
    ready(xclient_->greetingForClient(), true);
    return;
  }
}

void Connector::ready(std::string greeting, bool greetingRead) {
  step_ = Step::Done;
  Ready done{stream_,      tls_,      std::move(greeting),
             greetingRead, upgraded_, xclient_ != nullptr && xclient_->forwarded()};
  stream_ = nullptr; // the owner's now
  tcp_ = nullptr;
  handler_.onBackendReady(std::move(done)); // may destroy this connector
}

void Connector::fail(metrics::BackendError reason, std::string detail,
                     std::optional<metrics::StartTlsResult> startTls) {
  if (step_ == Step::Done) {
    return;
  }
  step_ = Step::Done;
  if (stream_ != nullptr) {
    stream_->close();
    stream_ = nullptr;
    tcp_ = nullptr;
  }
  tls_ = nullptr;
  handler_.onBackendFailed({reason, startTls, std::move(detail)}); // may destroy this connector
}

void Connector::onEnd() {
  fail(metrics::BackendError::Closed, step_ == Step::StartTls || step_ == Step::Xclient
                                          ? "closed during the dialogue before the greeting"
                                          : "closed before the greeting");
}

void Connector::onError(int status) {
  if (status == net::kTlsFailure) {
    // A handshake after the server's STARTTLS go-ahead that fails counts as such.
    bool afterGoAhead = upgraded_ && step_ == Step::Handshaking;
    fail(metrics::BackendError::Tls, tls_ != nullptr ? tls_->error() : "TLS failure",
         afterGoAhead ? std::optional(metrics::StartTlsResult::HandshakeFailed) : std::nullopt);
    return;
  }
  fail(metrics::BackendError::Closed, uv_strerror(status));
}

} // namespace backend
