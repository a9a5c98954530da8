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

#include <map>
#include <memory>
#include <optional>
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

// A backend scripted for one test (see ScriptedServer), and how the pool reaches it.
struct Scripted {
  std::string greeting;
  std::map<std::string, std::string> replies;
  config::TlsMode tls = config::TlsMode::None;
};

class Harness : public SessionOwner {
public:
  // `connectTimeout`: how long the backend has to greet. Without `scripted` the backend is a
  // socket that accepts and never says anything; the listener is SMTP, the pool sends XCLIENT
  // (the path that once parsed the client address from text).
  explicit Harness(std::chrono::milliseconds connectTimeout = std::chrono::seconds(5),
                   std::optional<Scripted> scripted = std::nullopt,
                   config::Protocol protocol = config::Protocol::Smtp)
      : registry_("test") {
    uv_loop_init(&loop_);
    net::attachLoopContext(&loop_, &loopContext_);
    config::Backend backend;
    backend.name = "pool";
    std::uint16_t port = backendSocket_.port;
    if (scripted) {
      scripted_ = std::make_unique<testing_support::ScriptedServer>(&loop_, scripted->greeting,
                                                                    scripted->replies);
      port = ntohs(reinterpret_cast<const sockaddr_in*>(&scripted_->address())->sin_port);
      backend.tls = scripted->tls;
      backend.tls_verify = false;
    }
    backend.servers.push_back({"127.0.0.1", port});
    backend.smtp_xclient = protocol == config::Protocol::Smtp;
    backend.connect_timeout = connectTimeout;
    backend.retries = 0;
    pool_ = std::make_shared<backend::Pool>(backend, registry_);
    const char* name = protocol::info(protocol).name;
    context_ = std::make_shared<ListenerContext>();
    context_->config.name = name;
    context_->config.protocol = protocol;
    context_->config.backend = "pool";
    context_->protocol = &protocol::info(protocol);
    context_->pool = pool_;
    context_->clientLimits = std::make_shared<ClientLimits>(100, 1000);
    context_->metrics = registry_.listener(name, name, 25, "none");

    uv_tcp_init(&loop_, &listener_);
    listener_.data = this;
    port_ = testing_support::listenOnLoopback(&listener_, 128, onConnection);
  }

  ~Harness() {
    sessions_.clear();
    scripted_.reset();
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

  // Reads from `fd` until `text` has arrived (or the peer closed), turning the loop meanwhile.
  std::string readUntil(int fd, std::string_view text) {
    std::string got;
    char chunk[512];
    for (int turn = 0; turn < 3000 && got.find(text) == std::string::npos; ++turn) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      ssize_t n = ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
      if (n == 0) {
        break;
      }
      if (n > 0) {
        got.append(chunk, static_cast<std::size_t>(n));
      } else {
        usleep(1000); // nothing yet; the loop's next turn may write it
      }
    }
    return got;
  }

  // What the server does at SIGTERM once the grace is over: every session ends now.
  void shutdownSessions() {
    for (auto& session : sessions_) {
      session->shutdown();
    }
  }

  // What the runtime API's kick does to every session of a user (SPEC §14).
  void kickSessions() {
    for (auto& session : sessions_) {
      session->kick("127.0.0.1:1");
    }
  }

  void onSessionClosed(Session&) override { ++closed_; }

  std::string metrics() const { return registry_.render(); }
  std::size_t closed() const { return closed_; }
  std::size_t started() const { return started_; }
  bool reachedBackend() const { return backendSocket_.connectedTo(); }
  const testing_support::ScriptedServer& scripted() const { return *scripted_; }
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
  std::unique_ptr<testing_support::ScriptedServer> scripted_;
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

// The series `name{labels}` has the value `value` in `metrics`.
bool hasSeries(const std::string& metrics, const std::string& series, int value) {
  std::size_t at = metrics.find(series + " ");
  return at != std::string::npos &&
         metrics.substr(at, metrics.find('\n', at) - at) == series + " " + std::to_string(value);
}

// Backend STARTTLS where the server closes instead of answering STARTTLS: a failed backend,
// never a plaintext session; the client hears IMAP's "temporarily unavailable" and nothing the
// server said before TLS.
TEST(Session, ABackendThatDiesMidStarttlsIsAFailedBackend) {
  {
    Harness harness(std::chrono::seconds(5),
                    Scripted{"* OK [ALERT] plaintext greeting\r\n",
                             {{"P1 CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK\r\n"},
                              {"P2 STARTTLS\r\n", "<close>"}},
                             config::TlsMode::StartTls},
                    config::Protocol::Imap);
    int client = harness.connectClient();
    std::string said = harness.readUntil(client, "\r\n");
    harness.runUntilClosed(1);
    ::close(client);
    EXPECT_EQ(said, "* BYE [UNAVAILABLE] Service temporarily unavailable\r\n");
    EXPECT_EQ(harness.closed(), 1U);
    EXPECT_NE(harness.scripted().received().find("P2 STARTTLS\r\n"), std::string::npos);
    std::string metrics = harness.metrics();
    EXPECT_TRUE(hasSeries(
        metrics, "postern_sessions_closed_total{listener=\"imap\",reason=\"backend_unavailable\"}",
        1))
        << metrics;
    // The close counts against the server (its series' labels end with the server's address).
    std::size_t at =
        metrics.find("postern_backend_errors_total{backend=\"pool\",reason=\"closed\"");
    ASSERT_NE(at, std::string::npos) << metrics;
    EXPECT_TRUE(metrics.substr(at, metrics.find('\n', at) - at).ends_with(" 1")) << metrics;
  }
  EXPECT_EQ(Harness::loopClosed(), 0);
}

// At shutdown a session whose dialogue postern still parses hears the protocol's goodbye, and
// ends as `shutdown`.
TEST(Session, ShutdownSaysGoodbyeWhilePosternHoldsTheDialogue) {
  {
    Harness harness(std::chrono::seconds(5), Scripted{"* OK ready\r\n", {}},
                    config::Protocol::Imap);
    int client = harness.connectClient();
    EXPECT_EQ(harness.readUntil(client, "\r\n"), "* OK ready\r\n");
    harness.shutdownSessions();
    std::string goodbye = harness.readUntil(client, "\r\n");
    ::close(client);
    EXPECT_EQ(goodbye, "* BYE [UNAVAILABLE] Server shutting down\r\n");
    EXPECT_EQ(harness.closed(), 1U);
    harness.settle();
    EXPECT_TRUE(harness.scripted().peerEnded()); // the backend connection went with it
    EXPECT_TRUE(hasSeries(harness.metrics(),
                          "postern_sessions_closed_total{listener=\"imap\",reason=\"shutdown\"}",
                          1))
        << harness.metrics();
  }
  EXPECT_EQ(Harness::loopClosed(), 0);
}

// SPEC §14: a kicked session hears its protocol's goodbye while postern parses the dialogue, and
// is counted as kicked.
TEST(Session, AKickSaysTheProtocolsGoodbye) {
  {
    Harness harness(std::chrono::seconds(5), Scripted{"+OK ready\r\n", {}}, config::Protocol::Pop3);
    int client = harness.connectClient();
    EXPECT_EQ(harness.readUntil(client, "\r\n"), "+OK ready\r\n");
    harness.kickSessions();
    std::string goodbye = harness.readUntil(client, "\r\n");
    ::close(client);
    EXPECT_EQ(goodbye, "-ERR [SYS/PERM] Disconnected by the administrator\r\n");
    harness.settle();
    EXPECT_TRUE(harness.scripted().peerEnded());
    EXPECT_TRUE(hasSeries(harness.metrics(),
                          "postern_sessions_closed_total{listener=\"pop3\",reason=\"kicked\"}", 1))
        << harness.metrics();
  }
  EXPECT_EQ(Harness::loopClosed(), 0);
}

// Relaying raw bytes after authentication, the goodbye follows only a line the server finished:
// inside a line it would become part of the server's reply, so the session just closes.
TEST(Session, AKickMidLineClosesWithoutAGoodbye) {
  for (bool lineEnded : {false, true}) {
    SCOPED_TRACE(lineEnded ? "at a line end" : "mid-line");
    {
      std::string body = lineEnded ? "+OK\r\nSubject: whole\r\n" : "+OK\r\nSubject: part";
      Harness harness(
          std::chrono::seconds(5),
          Scripted{"+OK ready\r\n",
                   {{"USER a\r\n", "+OK\r\n"}, {"PASS b\r\n", "+OK in\r\n"}, {"RETR 1\r\n", body}}},
          config::Protocol::Pop3);
      int client = harness.connectClient();
      EXPECT_EQ(harness.readUntil(client, "\r\n"), "+OK ready\r\n");
      ::send(client, "USER a\r\n", 8, 0);
      EXPECT_EQ(harness.readUntil(client, "\r\n"), "+OK\r\n");
      ::send(client, "PASS b\r\n", 8, 0);
      EXPECT_EQ(harness.readUntil(client, "\r\n"), "+OK in\r\n");
      ::send(client, "RETR 1\r\n", 8, 0);
      EXPECT_EQ(harness.readUntil(client, lineEnded ? "whole\r\n" : "part"), body);
      harness.kickSessions();
      std::string rest = harness.readUntil(client, "<never>"); // until postern closes
      ::close(client);
      EXPECT_EQ(rest, lineEnded ? "-ERR [SYS/PERM] Disconnected by the administrator\r\n" : "");
      harness.settle();
      EXPECT_TRUE(hasSeries(harness.metrics(),
                            "postern_sessions_closed_total{listener=\"pop3\",reason=\"kicked\"}",
                            1))
          << harness.metrics();
    }
    EXPECT_EQ(Harness::loopClosed(), 0);
  }
}

// A client that resets mid-session: its session ends as client_closed and the backend
// connection is closed with it (no descriptor left behind).
TEST(Session, AClientResetMidSessionClosesTheBackendToo) {
  {
    Harness harness(std::chrono::seconds(5), Scripted{"+OK ready\r\n", {}}, config::Protocol::Pop3);
    int client = harness.connectClient();
    EXPECT_EQ(harness.readUntil(client, "\r\n"), "+OK ready\r\n");
    linger reset{1, 0};
    ::setsockopt(client, SOL_SOCKET, SO_LINGER, &reset, sizeof reset);
    ::close(client);
    harness.runUntilClosed(1);
    EXPECT_EQ(harness.closed(), 1U);
    harness.settle();
    EXPECT_TRUE(harness.scripted().peerEnded());
    EXPECT_TRUE(
        hasSeries(harness.metrics(),
                  "postern_sessions_closed_total{listener=\"pop3\",reason=\"client_closed\"}", 1))
        << harness.metrics();
  }
  EXPECT_EQ(Harness::loopClosed(), 0);
}

} // namespace
} // namespace session
