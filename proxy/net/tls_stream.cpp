// TLS stacked on a TCP stream: the same ByteStream interface, over a tls::Engine. Usable at
// accept (implicit TLS), in the middle of a plaintext session (STARTTLS) and towards backends.
#include "proxy/net/tls_stream.h"

#include <algorithm>

namespace net {

namespace {
// The loop's ciphertext buffer is kept up to this size between engine calls (one 256 KiB write
// batch, sixteen records, and their overhead fit); a larger one, after a burst, is given back.
constexpr std::size_t kOutputKept = 320 * 1024;
} // namespace

TlsStream::TlsStream(TcpStream* tcp, std::unique_ptr<tls::Engine> engine, StreamHandler* handler)
    : tcp_(tcp), engine_(std::move(engine)), handler_(handler) {}

TlsStream* TlsStream::wrap(TcpStream* tcp, std::unique_ptr<tls::Engine> engine,
                           StreamHandler* handler) {
  auto layer = std::make_unique<TlsStream>(tcp, std::move(engine), handler);
  TlsStream* stream = layer.get();
  tcp->setHandler(stream);
  tcp->adopt(std::move(layer));
  return stream;
}

void TlsStream::begin() {
  // The handshake needs the socket read; plaintext flows to the owner unless it pauses.
  paused_ = false;
  if (int status = tcp_->startReading(); status != 0) {
    onError(status);
    return;
  }
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  afterEngine(engine_->start(out));
}

// Sends whatever the last engine call produced. False when the stream died doing so.
bool TlsStream::flush() {
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  if (out.empty()) {
    return !closed_;
  }
  if (engine_->handshakeFinishing() && engine_->serverAfterTls13Handshake()) {
    // What a TLS 1.3 server writes as its handshake ends is the session tickets, which the
    // client does not wait for (its handshake ended with our Finished, sent already). They go
    // with the next write, which for a mail server is the greeting.
    corked_.append(out);
    out.clear();
    return !closed_;
  }
  int status = send(out);
  out.clear();
  if (out.capacity() > kOutputKept) {
    std::string().swap(out);
  }
  if (status != 0 && !closed_) {
    closed_ = true;
    if (handler_ != nullptr) {
      handler_->onError(status);
    }
    return false;
  }
  return !closed_;
}

int TlsStream::send(std::span<const char> out) {
  if (corked_.empty()) {
    return out.empty() ? 0 : tcp_->write(out);
  }
  corked_.append(out.data(), out.size());
  int status = tcp_->write(corked_);
  std::string().swap(corked_);
  return status;
}

// Reports the end of the handshake once, before any plaintext, and sends what the owner wrote
// while it was under way. False when the owner closed the stream meanwhile.
bool TlsStream::noticeHandshake() {
  if (!engine_->handshakeJustFinished()) {
    return true;
  }
  if (!flush()) {
    return false;
  }
  if (!early_.empty()) {
    std::string early;
    early.swap(early_);
    if (write(early) != 0) {
      return false;
    }
  }
  if (handler_ != nullptr) {
    handler_->onSecured();
  }
  return !closed_;
}

void TlsStream::afterEngine(tls::Engine::State state) {
  if (!flush() || !noticeHandshake()) {
    return;
  }
  if (!engine_->hasBuffered()) {
    engine_->trim();
  }
  switch (state) {
  case tls::Engine::State::Failed:
    closed_ = true;
    tcp_->pauseReading();
    if (handler_ != nullptr) {
      handler_->onError(kTlsFailure);
    }
    break;
  case tls::Engine::State::Closed:
    if (!ended_) {
      ended_ = true;
      tcp_->notePeerEnded();
      tcp_->pauseReading();
      if (handler_ != nullptr) {
        handler_->onEnd();
      }
    }
    break;
  default:
    break;
  }
}

void TlsStream::onRead(std::span<const char> ciphertext) {
  heardFromPeer_ = heardFromPeer_ || !ciphertext.empty();
  if (paused_ && engine_->state() != tls::Engine::State::Handshaking) {
    // The owner paused and the peer sent anyway: the socket stops now, and these bytes (one
    // read's worth at most) wait undecrypted for startReading(), as they would have in the
    // kernel.
    tcp_->pauseReading();
    parked_.append(ciphertext.data(), ciphertext.size());
    return;
  }
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  afterEngine(engine_->receive(ciphertext, out, *this));
}

bool TlsStream::onPlaintext(std::span<const char> data) {
  // Handshake bytes go out (and the owner hears of the handshake) before any data is handed on.
  if (!flush() || !noticeHandshake() || closed_) {
    return false;
  }
  if (paused_) {
    // The owner paused while hearing of the handshake (it wants a backend first), but these
    // bytes were decrypted in the same read: keep them for startReading().
    held_.append(data.data(), data.size());
    return false;
  }
  if (handler_ != nullptr) {
    handler_->onRead(data);
  }
  return !closed_ && !paused_;
}

void TlsStream::onEnd() {
  if (closed_ || ended_) {
    return;
  }
  if (paused_ && engine_->state() != tls::Engine::State::Handshaking) {
    endParked_ = true; // heard after what is parked, when the owner reads again
    return;
  }
  ended_ = true;
  if (handler_ == nullptr) {
    return;
  }
  // A TCP end before the handshake finished is a failed handshake; after it, a truncation that
  // mail protocols tolerate (their own dialogue says when the session is over).
  if (engine_->state() == tls::Engine::State::Handshaking) {
    closed_ = true;
    handler_->onError(kTlsFailure);
    return;
  }
  handler_->onEnd();
}

void TlsStream::onError(int status) {
  if (closed_) {
    return;
  }
  closed_ = true;
  if (handler_ != nullptr) {
    handler_->onError(status);
  }
}

void TlsStream::onDrained() {
  if (handler_ != nullptr && !closed_) {
    handler_->onDrained();
  }
}

int TlsStream::startReading() {
  if (closed_) {
    return UV_EPIPE;
  }
  paused_ = false;
  if (!held_.empty()) {
    std::string held;
    held.swap(held_);
    if (handler_ != nullptr) {
      handler_->onRead(held);
    }
    if (closed_ || paused_) {
      return 0;
    }
  }
  if (engine_->hasBuffered()) {
    process();
    if (closed_ || paused_) {
      return 0;
    }
  }
  if (!parked_.empty()) {
    std::string parked;
    parked.swap(parked_);
    onRead(parked);
    if (closed_ || paused_) {
      return 0;
    }
  }
  if (endParked_) {
    endParked_ = false;
    onEnd();
    return 0;
  }
  return ended_ ? 0 : tcp_->startReading();
}

void TlsStream::process() {
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  afterEngine(engine_->resume(out, *this));
}

void TlsStream::pauseReading() {
  // The socket itself is stopped only when the peer sends while paused (onRead). Most pauses
  // end before it does (a client waits for the backend's greeting), and stopping and starting
  // a libuv stream costs epoll_ctl calls each way. During the handshake the socket is read
  // anyway: the handshake is postern's business.
  paused_ = true;
}

int TlsStream::write(std::span<const char> data) {
  if (closed_) {
    return UV_EPIPE;
  }
  if (engine_->state() == tls::Engine::State::Handshaking) {
    early_.append(data.data(), data.size());
    return 0;
  }
  // Up to 256 KiB of plaintext (one backend read's worth, sixteen records) per system call: each
  // write is a trip through the TCP stack and, on loopback, a wake-up of the reader, so a
  // download costs a sixteenth of the calls a record at a time would. The loop's output buffer
  // stays under kOutputKept, so it is kept between writes.
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  constexpr std::size_t kBatch = 256 * 1024;
  while (!data.empty()) {
    std::span<const char> batch = data.first(std::min(kBatch, data.size()));
    data = data.subspan(batch.size());
    if (engine_->send(batch, out) == tls::Engine::State::Failed) {
      out.clear();
      return kTlsFailure;
    }
    if (!out.empty()) {
      int status = send(out);
      out.clear();
      if (status != 0) {
        return status;
      }
    }
  }
  return 0;
}

void TlsStream::shutdownWrite() {
  if (closed_) {
    return;
  }
  std::string& out = loopContext(tcp_->loop()).tlsOutput;
  engine_->shutdown(out);
  send(out);
  out.clear();
  tcp_->shutdownWrite();
}

void TlsStream::close() {
  handler_ = nullptr;
  closed_ = true;
  tcp_->close(); // frees this stream too, in the TCP close callback
}

void TlsStream::closeAfterFlush() {
  handler_ = nullptr;
  if (!closed_) {
    std::string& out = loopContext(tcp_->loop()).tlsOutput;
    engine_->shutdown(out);
    send(out);
    out.clear();
  }
  closed_ = true;
  tcp_->closeAfterFlush();
}

} // namespace net
