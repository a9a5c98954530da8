// A session driven on a real libuv loop over loopback: a client that resets before its accept
// completes leaves no readable peer address (finding 5 of "One reading of the wire": that made
// `std::stoul("-")` throw inside a libuv callback on an SMTP listener with smtp_xclient, and the
// process abort). The session must end alone, counted, without touching a backend, and the loop
// must close with no handle left open (STYLE #9).
#include "proxy/session/session.h"

#include "proxy/net/tcp_stream.h"
#include "tests/proxy/support/scripted_server.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <vector>

namespace session {
namespace {

// A plain listening socket standing in for the pool's server: whether anything connected to it
// tells whether the session reached for a backend.
struct BackendSocket {
  int fd = -1;
  std::uint16_t port = 0;
  BackendSocket() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    sockaddr_in address = testing_support::loopback();
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::listen(fd, 8);
    socklen_t length = sizeof address;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    port = ntohs(address.sin_port);
  }
  ~BackendSocket() { ::close(fd); }
  bool connectedTo() const {
    int accepted = ::accept(fd, nullptr, nullptr);
    if (accepted >= 0) {
      ::close(accepted);
      return true;
    }
    return false;
  }
};

class Harness : public SessionOwner {
public:
  // `connectTimeout`: how long the backend has to greet (the backend socket never does).
  explicit Harness(std::chrono::milliseconds connectTimeout = std::chrono::seconds(5))
      : registry_("test") {
    uv_loop_init(&loop_);
    net::attachLoopContext(&loop_, &loopContext_);
    config::Backend backend;
    backend.name = "pool";
    backend.servers.push_back({"127.0.0.1", backendSocket_.port});
    backend.smtp_xclient = true; // the path that parsed the address from text
    backend.connect_timeout = connectTimeout;
    backend.retries = 0;
    pool_ = std::make_shared<backend::Pool>(backend, registry_);
    context_ = std::make_shared<ListenerContext>();
    context_->config.name = "smtp";
    context_->config.protocol = config::Protocol::Smtp;
    context_->config.backend = "pool";
    context_->protocol = &protocol::info(config::Protocol::Smtp);
    context_->pool = pool_;
    context_->clientLimits = std::make_shared<ClientLimits>(100, 1000);
    context_->metrics = registry_.listener("smtp", "smtp", 25, "none");

    uv_tcp_init(&loop_, &listener_);
    listener_.data = this;
    port_ = testing_support::listenOnLoopback(&listener_, 128, onConnection);
  }

  ~Harness() {
    sessions_.clear();
    uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    loopClosed_ = uv_loop_close(&loop_);
  }

  // A client that connects and stays; its socket (blocking, with a receive timeout).
  int connectClient() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address = testing_support::loopback(port_);
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    timeval wait{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
    return fd;
  }

  // A client that connects, then resets (SO_LINGER 0) before postern's loop has accepted it.
  void connectAndReset() {
    int fd = connectClient();
    linger reset{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(fd);
  }

  // Runs the loop a few turns without blocking (lets queued writes and closes finish).
  void settle() {
    for (int turn = 0; turn < 20; ++turn) {
      uv_run(&loop_, UV_RUN_NOWAIT);
    }
  }

  // Runs the loop until `count` sessions have ended (bounded: a few hundred turns).
  void runUntilClosed(std::size_t count) {
    for (int turn = 0; turn < 3000 && closed_ < count; ++turn) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (closed_ < count) {
        usleep(1000); // the kernel delivers the connection; no ordering relies on it
      }
    }
  }

  void onSessionClosed(Session&) override { ++closed_; }

  std::string metrics() const { return registry_.render(); }
  std::size_t closed() const { return closed_; }
  std::size_t started() const { return started_; }
  bool reachedBackend() const { return backendSocket_.connectedTo(); }
  static int loopClosed() { return loopClosed_; }

private:
  static void onConnection(uv_stream_t* server, int status) noexcept {
    auto* self = static_cast<Harness*>(server->data);
    if (status != 0) {
      return;
    }
    auto session = std::make_unique<Session>(*self, self->context_, &self->loop_);
    if (session->start(server)) {
      ++self->started_;
    }
    self->sessions_.push_back(std::move(session));
  }

  uv_loop_t loop_{};
  net::LoopContext loopContext_{};
  metrics::Registry registry_;
  BackendSocket backendSocket_;
  std::shared_ptr<backend::Pool> pool_;
  std::shared_ptr<ListenerContext> context_;
  uv_tcp_t listener_{};
  std::uint16_t port_ = 0;
  std::vector<std::unique_ptr<Session>> sessions_;
  std::size_t closed_ = 0;
  std::size_t started_ = 0;
  static inline int loopClosed_ = -1;
};

bool contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(Session, AClientWithoutAPeerAddressEndsAloneAndIsCounted) {
  {
    Harness harness;
    constexpr std::size_t kClients = 20; // as many as it took to abort the process
    for (std::size_t i = 0; i < kClients; ++i) {
      harness.connectAndReset();
    }
    harness.runUntilClosed(kClients);
    // (The kernel may drop a connection reset while it waits to be accepted; every one that
    // reached postern must have ended, all of them without an address.)
    ASSERT_GT(harness.started(), 0U);
    EXPECT_EQ(harness.closed(), harness.started());
    // Never routed: no backend connection, no XCLIENT built from an address that is none.
    EXPECT_FALSE(harness.reachedBackend());
    std::string metrics = harness.metrics();
    EXPECT_TRUE(contains(metrics, "postern_sessions_closed_total{listener=\"smtp\",reason="
                                  "\"client_closed\"} " +
                                      std::to_string(harness.started())))
        << metrics;
    EXPECT_TRUE(contains(metrics, "postern_connections_active{listener=\"smtp\",port=\"25\","
                                  "protocol=\"smtp\",tls=\"none\"} 0"))
        << metrics;
  }
  // Every libuv handle the sessions opened was closed: the loop closes cleanly.
  EXPECT_EQ(Harness::loopClosed(), 0);
}

// A backend that accepts (its kernel does) and never greets: after connect_timeout, with no
// retry left, the client hears SMTP's own "temporarily unavailable" and the session ends as
// backend_unavailable, the timeout counted against the server.
TEST(Session, ABackendThatNeverGreetsTimesOut) {
  {
    Harness harness(std::chrono::milliseconds(100));
    int client = harness.connectClient();
    harness.runUntilClosed(1);
    ASSERT_EQ(harness.closed(), 1U);
    harness.settle();
    char reply[256] = {};
    ssize_t got = ::recv(client, reply, sizeof reply - 1, 0);
    ::close(client);
    ASSERT_GT(got, 0);
    EXPECT_TRUE(std::string(reply).starts_with("421 4.3.2 ")) << reply;
    std::string metrics = harness.metrics();
    EXPECT_TRUE(contains(metrics, "postern_sessions_closed_total{listener=\"smtp\",reason="
                                  "\"backend_unavailable\"} 1"))
        << metrics;
    // (Every reason's series exists from the start; this one must say 1.)
    std::size_t at =
        metrics.find("postern_backend_errors_total{backend=\"pool\",reason=\"timeout\"");
    ASSERT_NE(at, std::string::npos) << metrics;
    EXPECT_TRUE(metrics.substr(at, metrics.find('\n', at) - at).ends_with(" 1")) << metrics;
  }
  EXPECT_EQ(Harness::loopClosed(), 0);
}

} // namespace
} // namespace session
