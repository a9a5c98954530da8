// One TLS connection as a pure state machine: ciphertext in, plaintext out and the reverse, with
// no sockets. Its BIO reads straight from the caller's buffer and writes into the caller's
// string, so the only copies are the ones TLS itself needs.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

typedef struct ssl_st SSL;

namespace tls {

// Receives decrypted bytes; returns false to stop (backpressure). The bytes are only valid
// during the call.
class PlaintextSink {
public:
  virtual bool onPlaintext(std::span<const char> data) = 0;

protected:
  ~PlaintextSink() = default;
};

class Engine {
public:
  enum class State {
    Handshaking, // more bytes from the other side are needed
    Open,        // handshake done; data flows
    Closed,      // the other side sent close_notify
    Failed,      // handshake or record error; error() says what
  };

  // Takes ownership of `ssl` (from ServerContext::newSsl or ClientContext::newSsl).
  static std::unique_ptr<Engine> server(SSL* ssl);
  static std::unique_ptr<Engine> client(SSL* ssl);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Starts the handshake (a client's ClientHello goes to `out`).
  State start(std::string& out);

  // Ciphertext from the other side. Handshake bytes are answered into `out`; plaintext goes to
  // `sink` until it asks to stop, and whatever was not processed is kept for `resume`.
  State receive(std::span<const char> ciphertext, std::string& out, PlaintextSink& sink);
  // Continues after the sink asked to stop.
  State resume(std::string& out, PlaintextSink& sink) { return receive({}, out, sink); }
  // Whether bytes are held back from the sink (undecrypted input or a decrypted record).
  bool hasBuffered() const;

  // Plaintext to send; ciphertext goes to `out`. Only in the Open state.
  State send(std::span<const char> plaintext, std::string& out);
  // Sends close_notify into `out`.
  void shutdown(std::string& out);

  State state() const { return state_; }
  // Whether the handshake finished and handshakeJustFinished() has not said so yet.
  bool handshakeFinishing() const { return justFinished_; }
  bool handshakeJustFinished() {
    bool finished = justFinished_;
    justFinished_ = false;
    return finished;
  }
  const std::string& error() const { return error_; }
  std::string version() const; // "TLSv1.3", or "" before the handshake
  // A server whose TLS 1.3 handshake is done: what it writes on its own from here on (the
  // session tickets sent right after the client's Finished) is nothing the client waits for, so
  // it may travel with the first data instead of in a write of its own.
  bool serverAfterTls13Handshake() const;
  std::string cipher() const; // "TLS_AES_128_GCM_SHA256"
  bool resumed() const;
  // The TLS server name (SNI) the client sent, "" when it sent none (server side).
  std::string serverName() const;
  // Whether the peer presented a certificate, whether it verified, and its subject's common
  // name when it did ("" otherwise).
  bool peerPresentedCertificate() const;
  bool peerVerified() const;
  std::string peerCommonName() const;
  // The other side's certificate expiry (seconds since the epoch), 0 when there is none.
  std::int64_t peerCertificateExpiry() const;

  // Releases the buffer of unprocessed input when it is empty (an idle session keeps nothing).
  void trim();

  struct Io; // what the BIO reads from and writes to during one call

private:
  Engine(SSL* ssl, bool server);
  State fail();
  State pump(std::string& out, PlaintextSink* sink);

  SSL* ssl_;
  bool server_;
  State state_ = State::Handshaking;
  bool justFinished_ = false;
  std::string error_;
  std::string leftover_; // ciphertext received but not yet consumed by OpenSSL
  std::unique_ptr<Io> io_;
};

} // namespace tls
