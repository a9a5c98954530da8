// TLS stacked on a TCP stream: the same ByteStream interface, over a tls::Engine. Usable at
// accept (implicit TLS), in the middle of a plaintext session (STARTTLS) and towards backends.
#pragma once

#include "proxy/net/byte_stream.h"
#include "proxy/net/tcp_stream.h"
#include "tls/engine.h"

#include <memory>
#include <string>

namespace net {

class TlsStream final : public ByteStream,
                        public StreamLayer,
                        private StreamHandler,
                        private tls::PlaintextSink {
public:
  // Takes over `tcp` (which must be connected; its handler becomes this stream). The TCP stream
  // owns the result; close() releases both.
  static TlsStream* wrap(TcpStream* tcp, std::unique_ptr<tls::Engine> engine,
                         StreamHandler* handler);
  // Starts the handshake (a client sends its ClientHello). Separate from wrap() so the owner
  // holds the pointer before any callback can reach it.
  void begin();

  void setHandler(StreamHandler* handler) override { handler_ = handler; }
  int startReading() override;
  void pauseReading() override;
  int write(std::span<const char> data) override;
  std::size_t pendingBytes() const override { return tcp_->pendingBytes() + early_.size(); }
  void shutdownWrite() override;
  void close() override;
  void closeAfterFlush() override;
  const sockaddr_storage& peer() const override { return tcp_->peer(); }

  const tls::Engine& engine() const { return *engine_; }
  // Whether the peer has sent any byte at all (a TCP check that connects and closes has not).
  bool heardFromPeer() const { return heardFromPeer_; }
  // Ciphertext that reached the owner before the stream was wrapped (after a PROXY header).
  void receive(std::span<const char> ciphertext) { onRead(ciphertext); }

  TlsStream(TcpStream* tcp, std::unique_ptr<tls::Engine> engine, StreamHandler* handler);

private:
  // From the TCP stream below.
  void onConnected(int) override {}
  void onSecured() override {}
  void onRead(std::span<const char> ciphertext) override;
  void onEnd() override;
  void onError(int status) override;
  void onDrained() override;
  // From the engine.
  bool onPlaintext(std::span<const char> data) override;

  bool flush();
  // Writes `out` (which may be empty) to the socket, behind the corked ciphertext if any.
  int send(std::span<const char> out);
  void afterEngine(tls::Engine::State state);
  bool noticeHandshake();
  void process();

  TcpStream* tcp_;
  std::unique_ptr<tls::Engine> engine_;
  StreamHandler* handler_;
  std::string early_;      // plaintext written before the handshake finished
  std::string held_;       // plaintext decrypted while the owner had paused reading
  std::string parked_;     // ciphertext read while the owner had paused reading
  bool endParked_ = false; // the TCP ended while the owner had paused reading
  // A TLS 1.3 server's session tickets, kept to travel with the first bytes written after the
  // handshake (the greeting) instead of in a system call and a client wake-up of their own.
  std::string corked_;
  bool paused_ = true;
  bool closed_ = false;
  bool ended_ = false;
  bool heardFromPeer_ = false;
};

} // namespace net
