// TlsStream on a real libuv loop over loopback, the client a tls::Engine on a plain socket the
// test drives by hand: a TLS 1.3 server's session ticket waits for the first write and leaves
// with it (issue 18: one write and one client wake-up less per session); TLS 1.2, whose server
// Finished is the handshake's last word, is never held back; and what a peer sends while the
// owner has paused reading (the socket is only stopped once it does) reaches the owner in order,
// its end after it, when the owner reads again.
#include "proxy/net/tls_stream.h"

#include "tests/proxy/support/scripted_server.h"
#include "tests/tls/test_contexts.h"
#include "tls/context.h"

#include <gtest/gtest.h>

#include <openssl/ssl.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace net {
namespace {

struct Collect final : tls::PlaintextSink {
  std::string data;
  bool onPlaintext(std::span<const char> bytes) override {
    data.append(bytes.data(), bytes.size());
    return true;
  }
};

// The owner of the server-side stream: records what it hears.
struct Owner final : StreamHandler {
  TlsStream* stream = nullptr;
  bool secured = false;
  bool pauseOnSecured = false;
  std::string read;
  int ends = 0;
  int errors = 0;
  void onConnected(int) override {}
  void onSecured() override {
    secured = true;
    if (pauseOnSecured) {
      stream->pauseReading();
    }
  }
  void onRead(std::span<const char> data) override { read.append(data.data(), data.size()); }
  void onEnd() override { ++ends; }
  void onError(int) override { ++errors; }
  void onDrained() override {}
};

// The TLS record types in `data` (whole records).
std::vector<int> recordTypes(std::string_view data) {
  std::vector<int> types;
  while (data.size() >= 5) {
    std::size_t length =
        (static_cast<unsigned char>(data[3]) << 8) | static_cast<unsigned char>(data[4]);
    types.push_back(static_cast<unsigned char>(data[0]));
    data.remove_prefix(std::min(data.size(), 5 + length));
  }
  return types;
}

class TlsStreamTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() /
           ("postern-tls-stream-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    std::string script =
        "cd " + dir_.string() +
        " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 5 "
        "-subj /CN=mail.example.test -addext subjectAltName=DNS:mail.example.test "
        "-keyout mail.key -out mail.pem 2>/dev/null";
    ASSERT_EQ(std::system(script.c_str()), 0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  void SetUp() override {
    tls::test_support::Contexts contexts = tls::test_support::makeContexts(dir_, dir_ / "mail.pem");
    ASSERT_TRUE(contexts.error.empty()) << contexts.error;
    serverContext_ = contexts.server;
    clientContext_ = contexts.client;

    uv_loop_init(&loop_);
    attachLoopContext(&loop_, &context_);
    uv_tcp_init(&loop_, &listener_);
    listener_.data = this;
    std::uint16_t port = testing_support::listenOnLoopback(&listener_, 8, onConnection);
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address = testing_support::loopback(port);
    ASSERT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
  }

  void TearDown() override {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    if (owner_.stream != nullptr) {
      owner_.stream->close();
    }
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    for (int i = 0; i < 100 && uv_run(&loop_, UV_RUN_NOWAIT) != 0; ++i) {
    }
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  static void onConnection(uv_stream_t* server, int status) {
    auto* self = static_cast<TlsStreamTest*>(server->data);
    ASSERT_EQ(status, 0);
    TcpStream* tcp = TcpStream::accept(server, nullptr);
    ASSERT_NE(tcp, nullptr);
    self->owner_.stream = TlsStream::wrap(
        tcp, tls::Engine::server(self->serverContext_->newSsl("imap")), &self->owner_);
    self->owner_.stream->begin();
  }

  // Runs the loop and moves the client's bytes until `done` (or about two seconds).
  bool pump(const std::function<bool()>& done) {
    for (int i = 0; i < 2000; ++i) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      sendClientOutput();
      if (done()) {
        return true;
      }
      ::usleep(1000);
    }
    return false;
  }

  // Runs the loop for about 100 ms: time for anything that would happen to happen.
  void settle() {
    for (int i = 0; i < 100; ++i) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      sendClientOutput();
      ::usleep(1000);
    }
  }

  // Whatever the server sent since the last call (every read the socket had).
  std::string received() {
    std::string all;
    char buffer[65536];
    for (ssize_t n; (n = ::recv(fd_, buffer, sizeof buffer, 0)) > 0;) {
      all.append(buffer, static_cast<std::size_t>(n));
    }
    return all;
  }

  void sendClientOutput() {
    if (!toServer_.empty()) {
      ASSERT_EQ(::send(fd_, toServer_.data(), toServer_.size(), 0),
                static_cast<ssize_t>(toServer_.size()));
      toServer_.clear();
    }
  }

  // A full handshake, the client offering TLS up to `maximum`.
  void handshake(int maximum) {
    SSL* ssl = clientContext_->newSsl("mail.example.test");
    ASSERT_NE(ssl, nullptr);
    SSL_set_max_proto_version(ssl, maximum);
    client_ = tls::Engine::client(ssl);
    client_->start(toServer_);
    ASSERT_TRUE(pump([&] {
      std::string bytes = received();
      if (!bytes.empty()) {
        client_->receive(bytes, toServer_, atClient_);
      }
      return client_->state() == tls::Engine::State::Open && owner_.secured;
    })) << client_->error();
  }

  static std::filesystem::path dir_;
  std::shared_ptr<tls::ServerContext> serverContext_;
  std::shared_ptr<tls::ClientContext> clientContext_;
  uv_loop_t loop_{};
  LoopContext context_;
  uv_tcp_t listener_{};
  int fd_ = -1;
  Owner owner_;
  std::unique_ptr<tls::Engine> client_;
  std::string toServer_;
  Collect atClient_;
};

std::filesystem::path TlsStreamTest::dir_;

TEST_F(TlsStreamTest, ATls13TicketLeavesWithTheFirstWrite) {
  handshake(TLS1_3_VERSION);
  EXPECT_EQ(owner_.stream->engine().version(), "TLSv1.3");
  // The handshake is over on both sides; the loop runs on and the ticket stays.
  settle();
  EXPECT_EQ(received(), "") << "the session ticket went out on its own";

  ASSERT_EQ(owner_.stream->write(std::string_view("* OK ready\r\n")), 0);
  std::string bytes;
  ASSERT_TRUE(pump([&] {
    bytes += received();
    return recordTypes(bytes).size() >= 2;
  }));
  // One ticket (postern sends one) and the greeting, in the one write: 23 is what TLS 1.3 calls
  // every record after the handshake.
  EXPECT_EQ(recordTypes(bytes), (std::vector<int>{23, 23}));
  client_->receive(bytes, toServer_, atClient_);
  EXPECT_EQ(atClient_.data, "* OK ready\r\n");
  EXPECT_EQ(client_->state(), tls::Engine::State::Open) << client_->error();
}

TEST_F(TlsStreamTest, ATls12HandshakeIsNotHeldBack) {
  // The server's Finished is TLS 1.2's last handshake message: holding it for a greeting would
  // leave a client that speaks first waiting for ever. handshake() finishing is the check.
  handshake(TLS1_2_VERSION);
  EXPECT_EQ(owner_.stream->engine().version(), "TLSv1.2");
  ASSERT_EQ(client_->send(std::string_view("a NOOP\r\n"), toServer_), tls::Engine::State::Open);
  ASSERT_TRUE(pump([&] { return owner_.read == "a NOOP\r\n"; }));
}

TEST_F(TlsStreamTest, WhatArrivesWhilePausedWaitsInOrderWithItsEnd) {
  owner_.pauseOnSecured = true;
  handshake(TLS1_3_VERSION);
  ASSERT_EQ(client_->send(std::string_view("a1 NOOP\r\n"), toServer_), tls::Engine::State::Open);
  settle();
  ASSERT_EQ(client_->send(std::string_view("a2 LOGOUT\r\n"), toServer_), tls::Engine::State::Open);
  client_->shutdown(toServer_); // close_notify
  sendClientOutput();
  ::shutdown(fd_, SHUT_WR);
  settle();
  EXPECT_EQ(owner_.read, "") << "delivered while paused";
  EXPECT_EQ(owner_.ends, 0) << "the end was heard before the bytes in front of it";

  ASSERT_EQ(owner_.stream->startReading(), 0);
  ASSERT_TRUE(pump([&] { return owner_.ends > 0; }));
  EXPECT_EQ(owner_.read, "a1 NOOP\r\na2 LOGOUT\r\n");
  EXPECT_EQ(owner_.ends, 1);
  EXPECT_EQ(owner_.errors, 0);
}

} // namespace
} // namespace net
