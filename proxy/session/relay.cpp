// The byte pump of a session: bytes from either side through the protocol dialogue while one
// runs, then straight across; backpressure (each side's queue pauses the other's reading) and
// half-close (a side's FIN passed on after its bytes; the session ends when both have ended).
#include "proxy/session/session.h"

#include "proxy/log.h"

namespace session {

void Session::onBackendRead(std::span<const char> data) {
  if (phase_ == Phase::Connecting) {
    // Login mode: the replay speaks with the server until its verdict.
    if (login_ != nullptr && login_->replay != nullptr) {
      replayStep(login_->replay->fromBackend(data));
    }
    return;
  }
  relayFromBackend(data);
}

bool Session::becomeReady() {
  // The first bytes are the greeting: the backend is usable, the client may talk now.
  phase_ = Phase::Relaying;
  std::uint64_t now = timer_->now();
  listener_.pool->metrics().connectDuration(static_cast<double>(now - connectStartedAt_) / 1000.0);
  if (filter_ == nullptr) {
    preauthDone_ = true;
  }
  armTimer();
  if (client_->startReading() != 0) {
    close(metrics::CloseReason::ClientClosed);
    return false;
  }
  if (!earlyClient_.empty() && phase_ == Phase::Relaying) {
    std::string early;
    early.swap(earlyClient_);
    onClientRead(early);
  }
  // Bytes the client sent early may have ended the session while being relayed.
  return phase_ != Phase::Closed;
}

void Session::relayFromBackend(std::span<const char> data) {
  lastActivity_ = timer_->now();
  bytesOut_ += data.size();
  listener_.metrics.bytesToClient(data.size());
  if (filter_ != nullptr) {
    filter_->fromBackend(data, output_);
    apply(output_);
    return;
  }
  if (client_->write(data) != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  // Backpressure: a client that does not read stops us reading its backend.
  if (client_->pendingBytes() > net::ByteStream::kHighWater) {
    backend_->pauseReading();
  }
}

void Session::onClientRead(std::span<const char> data) {
  if (phase_ == Phase::ProxyHeader) {
    readProxyHeader(data);
    return;
  }
  if (login_ != nullptr && login_->dialogue != nullptr && phase_ != Phase::Closed) {
    // postern's own dialogue; while a login is replayed the bytes wait in the dialogue.
    lastActivity_ = timer_->now();
    login_->dialogue->fromClient(data, login_->output);
    applyLogin();
    return;
  }
  if (phase_ != Phase::Relaying) {
    return;
  }
  lastActivity_ = timer_->now();
  bytesIn_ += data.size();
  listener_.metrics.bytesToBackend(data.size());
  if (filter_ != nullptr) {
    filter_->fromClient(data, output_);
    apply(output_);
    return;
  }
  if (backend_->write(data) != 0) {
    close(metrics::CloseReason::BackendClosed);
    return;
  }
  if (backend_->pendingBytes() > net::ByteStream::kHighWater) {
    client_->pauseReading();
  }
}

void Session::countEvents(const std::vector<protocol::EventRecord>& events) {
  for (const protocol::EventRecord& record : events) {
    switch (record.event) {
    case protocol::Event::StartTlsRefused:
      listener_.metrics.startTls(metrics::StartTlsSide::Client, metrics::StartTlsResult::Refused);
      break;
    case protocol::Event::StartTlsInjection:
      listener_.metrics.startTls(metrics::StartTlsSide::Client,
                                 metrics::StartTlsResult::InjectionRejected);
      logging::warn("STARTTLS command injection refused",
                    {{"listener", listener_.config.name}, {"client", clientAddress_}});
      break;
    case protocol::Event::AuthRefusedPlaintext:
      listener_.metrics.auth(record.mechanism, metrics::AuthResult::RefusedPlaintext);
      break;
    case protocol::Event::Authenticated: // passthrough: the backend's verdict is relayed as is
    case protocol::Event::MailAccepted:
      preauthOver();
      break;
    case protocol::Event::StartTlsOk: // counted when the handshake finishes
      break;
    }
  }
}

void Session::apply(protocol::Output& out) {
  countEvents(out.events);
  bool startTls = out.startTls;
  bool closeNow = out.close;
  bool relayOnly = out.relayOnly;
  int backendStatus = out.toBackend.empty() ? 0 : backend_->write(out.toBackend);
  int clientStatus = out.toClient.empty() ? 0 : client_->write(out.toClient);
  out.clear();
  if (closeNow) {
    close(metrics::CloseReason::ProtocolError);
    return;
  }
  if (backendStatus != 0) {
    close(metrics::CloseReason::BackendClosed);
    return;
  }
  if (clientStatus != 0) {
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  if (relayOnly) {
    filter_.reset();
    preauthOver();
  }
  if (startTls) {
    upgradeClient();
    return;
  }
  if (backend_->pendingBytes() > net::ByteStream::kHighWater) {
    client_->pauseReading();
  }
  if (client_->pendingBytes() > net::ByteStream::kHighWater) {
    backend_->pauseReading();
    // postern's own replies count too: a client that sends and never reads stops being read.
    client_->pauseReading();
  }
}

void Session::onClientDrained() {
  if (phase_ == Phase::Login && login_ != nullptr && !login_->credentials && !login_->delaying) {
    client_->startReading();
    return;
  }
  if (phase_ == Phase::Relaying && !backendEnded_ && backend_ != nullptr) {
    backend_->startReading();
  }
  if (phase_ == Phase::Relaying && !clientEnded_ && backend_ != nullptr &&
      backend_->pendingBytes() <= net::ByteStream::kHighWater) {
    client_->startReading();
  }
}

void Session::onBackendDrained() {
  if (phase_ == Phase::Relaying && !clientEnded_) {
    client_->startReading();
  }
}

// Half-close: the side that finished sending has its FIN passed on once its bytes are through;
// the session ends when both directions have finished.
void Session::onClientEnd() {
  if (phase_ != Phase::Relaying) {
    // (Before a PROXY header was complete this is a refused connection, counted as such.)
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  clientEnded_ = true;
  if (filter_ != nullptr) {
    filter_->clientEnded(output_);
    apply(output_);
    if (phase_ == Phase::Closed) {
      return;
    }
  }
  backend_->shutdownWrite();
  finishIfBothEnded(backendEnded_ ? metrics::CloseReason::BackendClosed
                                  : metrics::CloseReason::ClientClosed);
}

void Session::onBackendEnd() {
  if (phase_ == Phase::Connecting) {
    backendFailed(metrics::BackendError::Closed, "closed before the greeting");
    return;
  }
  backendEnded_ = true;
  if (filter_ != nullptr) {
    filter_->backendEnded(output_);
    apply(output_);
    if (phase_ == Phase::Closed) {
      return;
    }
  }
  client_->shutdownWrite();
  finishIfBothEnded(clientEnded_ ? metrics::CloseReason::ClientClosed
                                 : metrics::CloseReason::BackendClosed);
}

void Session::finishIfBothEnded(metrics::CloseReason reason) {
  if (clientEnded_ && backendEnded_) {
    close(reason);
  }
}

} // namespace session
