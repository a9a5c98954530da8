// The byte pump of a session: bytes from either side through the protocol dialogue while one
// runs, then straight across; backpressure (each side's queue pauses the other's reading) and
// half-close (a side's FIN passed on after its bytes; the session ends when both have ended).
#include "proxy/session/session.h"

#include "proxy/log.h"

namespace session {

void Session::onBackendRead(std::span<const char> data) {
  if (phase() == Phase::Connecting) {
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
  std::uint64_t now = timer_->now();
  std::uint64_t connectStartedAt = std::get<Connecting>(state_).startedAt;
  enter<Relaying>();
  pool_->metrics().connectDuration(static_cast<double>(now - connectStartedAt) / 1000.0);
  if (filter_ == nullptr) {
    preauthDone_ = true;
  }
  armTimer();
  if (client_->startReading() != 0) {
    close(metrics::CloseReason::ClientClosed);
    return false;
  }
  if (!earlyClient_.empty() && phase() == Phase::Relaying) {
    std::string early;
    early.swap(earlyClient_);
    onClientRead(early);
  }
  // Bytes the client sent early may have ended the session while being relayed.
  return phase() != Phase::Closed;
}

void Session::relayFromBackend(std::span<const char> data) {
  lastActivity_ = timer_->now();
  bytesOut_ += data.size();
  listener_.metrics.bytesToClient(data.size());
  if (record_ != nullptr) {
    record_->bytesOut.store(bytesOut_, std::memory_order_relaxed);
  }
  if (filter_ != nullptr) {
    filter_->fromBackend(data, output_);
    apply(output_);
    return;
  }
  if (!data.empty()) {
    lastToClient_ = data.back();
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
  if (phase() == Phase::ProxyHeader) {
    readProxyHeader(data);
    return;
  }
  if (login_ != nullptr && login_->dialogue != nullptr && phase() != Phase::Closed) {
    // postern's own dialogue; while a login is replayed the bytes wait in the dialogue.
    lastActivity_ = timer_->now();
    login_->dialogue->fromClient(data, login_->output);
    applyLogin();
    return;
  }
  if (phase() != Phase::Relaying) {
    return;
  }
  lastActivity_ = timer_->now();
  bytesIn_ += data.size();
  listener_.metrics.bytesToBackend(data.size());
  if (record_ != nullptr) {
    record_->bytesIn.store(bytesIn_, std::memory_order_relaxed);
  }
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
  if (phase() == Phase::Login && login_ != nullptr && !login_->credentials && !login_->delaying) {
    client_->startReading();
    return;
  }
  Relaying* relaying = in<Relaying>();
  if (relaying == nullptr || backend_ == nullptr) {
    return;
  }
  if (!relaying->backendEnded) {
    backend_->startReading();
  }
  if (!relaying->clientEnded && backend_->pendingBytes() <= net::ByteStream::kHighWater) {
    client_->startReading();
  }
}

void Session::onBackendDrained() {
  if (Relaying* relaying = in<Relaying>(); relaying != nullptr && !relaying->clientEnded) {
    client_->startReading();
  }
}

// Half-close: the side that finished sending has its FIN passed on once its bytes are through;
// the session ends when both directions have finished. The FIN towards a side that has ended
// already is left to the close (its own FIN, after close_notify on TLS): a shutdown there is a
// system call that changes nothing.
void Session::onClientEnd() {
  if (phase() != Phase::Relaying) {
    // (Before a PROXY header was complete this is a refused connection, counted as such.)
    close(metrics::CloseReason::ClientClosed);
    return;
  }
  std::get<Relaying>(state_).clientEnded = true;
  if (filter_ != nullptr) {
    filter_->clientEnded(output_);
    apply(output_);
    if (phase() != Phase::Relaying) {
      return;
    }
  }
  if (!std::get<Relaying>(state_).backendEnded) {
    backend_->shutdownWrite();
  }
  finishIfBothEnded(std::get<Relaying>(state_).backendEnded ? metrics::CloseReason::BackendClosed
                                                            : metrics::CloseReason::ClientClosed);
}

void Session::onBackendEnd() {
  if (phase() == Phase::Connecting) {
    backendFailed(metrics::BackendError::Closed, "closed before the greeting");
    return;
  }
  Relaying* relaying = in<Relaying>();
  if (relaying == nullptr) {
    return;
  }
  relaying->backendEnded = true;
  if (filter_ != nullptr) {
    filter_->backendEnded(output_);
    apply(output_);
    if (phase() != Phase::Relaying) {
      return;
    }
  }
  if (!std::get<Relaying>(state_).clientEnded) {
    client_->shutdownWrite();
  }
  finishIfBothEnded(std::get<Relaying>(state_).clientEnded ? metrics::CloseReason::ClientClosed
                                                           : metrics::CloseReason::BackendClosed);
}

void Session::finishIfBothEnded(metrics::CloseReason reason) {
  if (Relaying* relaying = in<Relaying>();
      relaying != nullptr && relaying->clientEnded && relaying->backendEnded) {
    close(reason);
  }
}

} // namespace session
