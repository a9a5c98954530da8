// One TLS connection as a pure state machine: ciphertext in, plaintext out and the reverse, with
// no sockets. Its BIO reads straight from the caller's buffer and writes into the caller's
// string, so the only copies are the ones TLS itself needs.
#include "tls/engine.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <cstring>
#include <ctime>

namespace tls {

struct Engine::Io {
  std::span<const char> input; // unread ciphertext
  std::string* output = nullptr;
};

namespace {

// Records are decrypted into one buffer until it is full or the input is used up, so a burst of
// records reaches the owner (and the socket behind it) as one write, not one per record.
constexpr std::size_t kPlaintextChunk = 64 * 1024;

// A memory BIO over caller-owned buffers: reads consume Io::input, writes append to Io::output.
int bioWrite(BIO* bio, const char* data, std::size_t length, std::size_t* written) {
  auto* io = static_cast<Engine::Io*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (io->output == nullptr) {
    BIO_set_retry_write(bio);
    return 0;
  }
  io->output->append(data, length);
  *written = length;
  return 1;
}

int bioRead(BIO* bio, char* data, std::size_t length, std::size_t* read) {
  auto* io = static_cast<Engine::Io*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  if (io->input.empty()) {
    BIO_set_retry_read(bio);
    return 0;
  }
  std::size_t n = std::min(length, io->input.size());
  std::memcpy(data, io->input.data(), n);
  io->input = io->input.subspan(n);
  *read = n;
  return 1;
}

long bioControl(BIO*, int command, long, void*) {
  switch (command) {
  case BIO_CTRL_FLUSH:
  case BIO_CTRL_PUSH:
  case BIO_CTRL_POP:
    return 1;
  default:
    return 0;
  }
}

int bioCreate(BIO* bio) {
  BIO_set_init(bio, 1);
  return 1;
}

BIO_METHOD* bioMethod() {
  // Created once per process; OpenSSL keeps it for the process lifetime.
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "postern");
    BIO_meth_set_write_ex(m, bioWrite);
    BIO_meth_set_read_ex(m, bioRead);
    BIO_meth_set_ctrl(m, bioControl);
    BIO_meth_set_create(m, bioCreate);
    return m;
  }();
  return method;
}

// Sets the BIO's buffers for the length of one call and restores them afterwards: a sink may
// send (a reply to the client) while receive() is still working through its input.
class IoScope {
public:
  IoScope(Engine::Io& io, std::span<const char> input, std::string& output) : io_(io), saved_(io) {
    io_.input = input;
    io_.output = &output;
  }
  ~IoScope() { io_ = saved_; }
  IoScope(const IoScope&) = delete;
  IoScope& operator=(const IoScope&) = delete;

private:
  Engine::Io& io_;
  Engine::Io saved_;
};

} // namespace

Engine::Engine(SSL* ssl, bool server) : ssl_(ssl), server_(server), io_(std::make_unique<Io>()) {
  BIO* bio = BIO_new(bioMethod());
  BIO_set_data(bio, io_.get());
  // One BIO for both directions: SSL_set_bio takes the single reference.
  SSL_set_bio(ssl_, bio, bio);
  if (server) {
    SSL_set_accept_state(ssl_);
  } else {
    SSL_set_connect_state(ssl_);
  }
}

Engine::~Engine() { SSL_free(ssl_); }

std::unique_ptr<Engine> Engine::server(SSL* ssl) {
  return std::unique_ptr<Engine>(new Engine(ssl, true));
}

std::unique_ptr<Engine> Engine::client(SSL* ssl) {
  return std::unique_ptr<Engine>(new Engine(ssl, false));
}

Engine::State Engine::fail() {
  unsigned long code = ERR_peek_last_error();
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  error_ = reason != nullptr ? reason : "connection failed";
  // "certificate verify failed" alone does not say why; the verification result does.
  long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) {
    error_ += std::string(": ") + X509_verify_cert_error_string(verify);
  }
  ERR_clear_error();
  state_ = State::Failed;
  return state_;
}

Engine::State Engine::start(std::string& out) {
  IoScope scope(*io_, {}, out);
  return pump(out, nullptr);
}

Engine::State Engine::receive(std::span<const char> ciphertext, std::string& out,
                              PlaintextSink& sink) {
  if (state_ == State::Failed || state_ == State::Closed) {
    return state_;
  }
  // Unconsumed bytes from before come first; new bytes join them only when there are some.
  std::span<const char> input = ciphertext;
  if (!leftover_.empty()) {
    leftover_.append(ciphertext.data(), ciphertext.size());
    input = leftover_;
  }
  State state;
  std::span<const char> remaining;
  {
    IoScope scope(*io_, input, out);
    state = pump(out, &sink);
    remaining = io_->input;
  }
  if (input.data() == leftover_.data() && remaining.size() == leftover_.size()) {
    return state; // nothing consumed
  }
  if (remaining.empty()) {
    leftover_.clear();
  } else if (!leftover_.empty()) {
    leftover_.erase(0, leftover_.size() - remaining.size());
  } else {
    leftover_.assign(remaining.data(), remaining.size());
  }
  return state;
}

Engine::State Engine::pump(std::string& out, PlaintextSink* sink) {
  (void)out;
  if (state_ == State::Handshaking) {
    ERR_clear_error();
    int result = SSL_do_handshake(ssl_);
    if (result != 1) {
      int error = SSL_get_error(ssl_, result);
      if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
        return state_;
      }
      return fail();
    }
    state_ = State::Open;
    justFinished_ = true;
  }
  if (sink == nullptr || state_ != State::Open) {
    return state_;
  }
  // Decrypt into a buffer on the stack, several records at a time; the sink copies only if it
  // must queue.
  char plaintext[kPlaintextChunk];
  std::size_t filled = 0;
  for (;;) {
    std::size_t read = 0;
    ERR_clear_error();
    if (SSL_read_ex(ssl_, plaintext + filled, sizeof plaintext - filled, &read) == 1) {
      filled += read;
      if (filled == sizeof plaintext) {
        if (!sink->onPlaintext(std::span<const char>(plaintext, filled))) {
          return state_;
        }
        filled = 0;
      }
      continue;
    }
    int error = SSL_get_error(ssl_, 0);
    if (filled > 0 && (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE ||
                       error == SSL_ERROR_ZERO_RETURN)) {
      // What was decrypted goes out first (a close_notify ends the stream after it).
      if (!sink->onPlaintext(std::span<const char>(plaintext, filled))) {
        return state_;
      }
      filled = 0;
    }
    if (error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE) {
      return state_;
    }
    if (error == SSL_ERROR_ZERO_RETURN) {
      state_ = State::Closed;
      return state_;
    }
    return fail();
  }
}

bool Engine::hasBuffered() const { return !leftover_.empty() || SSL_pending(ssl_) > 0; }

Engine::State Engine::send(std::span<const char> plaintext, std::string& out) {
  if (state_ != State::Open) {
    return state_;
  }
  IoScope scope(*io_, io_->input, out);
  while (!plaintext.empty()) {
    std::size_t written = 0;
    ERR_clear_error();
    if (SSL_write_ex(ssl_, plaintext.data(), plaintext.size(), &written) != 1) {
      return fail();
    }
    plaintext = plaintext.subspan(written);
  }
  return state_;
}

void Engine::shutdown(std::string& out) {
  if (state_ != State::Open && state_ != State::Closed) {
    return;
  }
  IoScope scope(*io_, {}, out);
  ERR_clear_error();
  SSL_shutdown(ssl_);
  ERR_clear_error();
}

std::string Engine::version() const {
  return state_ == State::Handshaking || state_ == State::Failed ? "" : SSL_get_version(ssl_);
}

bool Engine::serverAfterTls13Handshake() const {
  return server_ && (state_ == State::Open || state_ == State::Closed) &&
         SSL_version(ssl_) == TLS1_3_VERSION;
}

std::string Engine::cipher() const {
  const char* name = SSL_get_cipher_name(ssl_);
  return name != nullptr && state_ != State::Handshaking ? name : "";
}

bool Engine::resumed() const { return SSL_session_reused(ssl_) == 1; }

bool Engine::peerPresentedCertificate() const {
  X509* peer = SSL_get0_peer_certificate(ssl_);
  return peer != nullptr;
}

bool Engine::peerVerified() const {
  return peerPresentedCertificate() && SSL_get_verify_result(ssl_) == X509_V_OK;
}

std::string Engine::peerCommonName() const {
  if (!peerVerified()) {
    return "";
  }
  // Exactly one CN, as UTF-8 without NUL bytes (a name that holds one could read as another).
  X509_NAME* subject = X509_get_subject_name(SSL_get0_peer_certificate(ssl_));
  int index = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (index < 0 || X509_NAME_get_index_by_NID(subject, NID_commonName, index) >= 0) {
    return "";
  }
  unsigned char* utf8 = nullptr;
  int length =
      ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, index)));
  if (length <= 0) {
    return "";
  }
  std::string name(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(length));
  OPENSSL_free(utf8);
  return name.find('\0') == std::string::npos ? name : "";
}

std::string Engine::serverName() const {
  const char* name = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name);
  return name != nullptr ? name : "";
}

std::int64_t Engine::peerCertificateExpiry() const {
  X509* peer = SSL_get1_peer_certificate(ssl_);
  if (peer == nullptr) {
    return 0;
  }
  std::tm tm{};
  std::int64_t when = 0;
  if (ASN1_TIME_to_tm(X509_get0_notAfter(peer), &tm) == 1) {
    when = static_cast<std::int64_t>(timegm(&tm));
  }
  X509_free(peer);
  return when;
}

void Engine::trim() {
  if (leftover_.empty() && leftover_.capacity() > 0) {
    std::string().swap(leftover_);
  }
}

} // namespace tls
