// backend::Connector on a real loop against scripted servers on loopback (in the same loop):
// refused connects, greetings good and bad, servers that close early, backend STARTTLS that is
// refused, injected or cut off, SMTP XCLIENT, and the PROXY header first on the wire. Every test
// ends with the loop closed and no handle left open (STYLE #9).
#include "proxy/backend/connector.h"

#include "proxy/net/tcp_stream.h"
#include "tests/proxy/support/scripted_server.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace backend {
namespace {

using testing_support::ScriptedServer;

struct Outcome {
  std::optional<Connector::Failure> failure;
  std::optional<Connector::Ready> ready;
};

class Recorder final : public Connector::Handler {
public:
  void onBackendReady(Connector::Ready ready) override {
    ready.stream->close(); // the test's: closed at once
    ready.stream = nullptr;
    outcome.ready = std::move(ready);
  }
  void onBackendFailed(const Connector::Failure& failure) override { outcome.failure = failure; }
  Outcome outcome;
};

class ConnectorTest : public ::testing::Test {
protected:
  ConnectorTest() {
    uv_loop_init(&loop_);
    net::attachLoopContext(&loop_, &context_);
  }
  ~ConnectorTest() override {
    server_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  // Connects to the scripted server (or `address`) and runs the loop until the outcome.
  Outcome connect(ConnectSpec spec) {
    if (server_ != nullptr && spec.address.ss_family == AF_UNSPEC) {
      spec.address = server_->address();
    }
    Recorder recorder;
    Connector connector(&loop_, std::move(spec), recorder);
    connector.start();
    for (int turn = 0; turn < 1000 && !recorder.outcome.ready && !recorder.outcome.failure;
         ++turn) {
      uv_run(&loop_, UV_RUN_ONCE);
    }
    return recorder.outcome;
  }

  void serve(std::string greeting, std::map<std::string, std::string> replies = {}) {
    server_ = std::make_unique<ScriptedServer>(&loop_, std::move(greeting), std::move(replies));
  }

  uv_loop_t loop_{};
  net::LoopContext context_{};
  std::unique_ptr<ScriptedServer> server_;
};

ConnectSpec imap(config::TlsMode tls = config::TlsMode::None) {
  ConnectSpec spec;
  spec.host = "127.0.0.1";
  spec.protocol = config::Protocol::Imap;
  spec.tls = tls;
  return spec;
}

// SMTP with XCLIENT for the client 192.0.2.7:40000.
ConnectSpec smtpWithXclient() {
  ConnectSpec spec;
  spec.host = "127.0.0.1";
  spec.protocol = config::Protocol::Smtp;
  spec.xclient = protocol::xclientCommand("192.0.2.7", false, 40000);
  return spec;
}

TEST_F(ConnectorTest, RefusedConnect) {
  serve("* OK hi\r\n");
  ConnectSpec spec = imap();
  spec.address = server_->address();
  server_->close(); // nothing listens there any more
  uv_run(&loop_, UV_RUN_NOWAIT);
  Outcome outcome = connect(spec);
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->reason, metrics::BackendError::Refused);
}

TEST_F(ConnectorTest, AReadyGreetingIsHandedOverAsItCame) {
  serve("* OK [CAPABILITY IMAP4rev1] ready\r\n");
  Outcome outcome = connect(imap());
  ASSERT_TRUE(outcome.ready);
  EXPECT_EQ(outcome.ready->greeting, "* OK [CAPABILITY IMAP4rev1] ready\r\n");
  EXPECT_FALSE(outcome.ready->greetingRead);
  EXPECT_FALSE(outcome.ready->startTls);
}

TEST_F(ConnectorTest, ARefusingGreetingIsAFailedServer) {
  serve("* BYE too busy\r\n");
  Outcome outcome = connect(imap());
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->reason, metrics::BackendError::Greeting);
  EXPECT_EQ(outcome.failure->detail, "* BYE too busy");
}

TEST_F(ConnectorTest, AServerThatClosesBeforeItsGreeting) {
  serve("<close>");
  Outcome outcome = connect(imap());
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->reason, metrics::BackendError::Closed);
}

TEST_F(ConnectorTest, BackendStartTlsRefusedIsNeverPlaintext) {
  serve("* OK hi\r\n", {{"P1 CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK\r\n"},
                        {"P2 STARTTLS\r\n", "P2 NO not now\r\n"}});
  Outcome outcome = connect(imap(config::TlsMode::StartTls));
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->reason, metrics::BackendError::Tls);
  EXPECT_EQ(outcome.failure->startTls, metrics::StartTlsResult::Refused);
}

TEST_F(ConnectorTest, BackendStartTlsResponseInjectionFailsClosed) {
  serve("* OK hi\r\n", {{"P1 CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK\r\n"},
                        {"P2 STARTTLS\r\n", "P2 OK go\r\n* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"}});
  Outcome outcome = connect(imap(config::TlsMode::StartTls));
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->startTls, metrics::StartTlsResult::InjectionRejected);
}

TEST_F(ConnectorTest, ABackendThatDiesMidStartTls) {
  // The go-ahead, then the connection ends where the TLS handshake should be.
  config::Backend backend;
  backend.tls = config::TlsMode::StartTls;
  backend.tls_verify = false;
  auto context = tls::ClientContext::create(backend);
  ASSERT_TRUE(context);
  serve("* OK hi\r\n", {{"P1 CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 STARTTLS\r\nP1 OK\r\n"},
                        {"P2 STARTTLS\r\n", "P2 OK go\r\n<then-close>"}});
  ConnectSpec spec = imap(config::TlsMode::StartTls);
  spec.tlsContext = context->get();
  Outcome outcome = connect(spec);
  ASSERT_TRUE(outcome.failure);
  EXPECT_EQ(outcome.failure->reason, metrics::BackendError::Tls);
  EXPECT_EQ(outcome.failure->startTls, metrics::StartTlsResult::HandshakeFailed);
}

TEST_F(ConnectorTest, SmtpXclientGivesTheServersNewGreeting) {
  serve("220 mx ESMTP\r\n",
        {{"EHLO postern\r\n", "250-mx\r\n250-XCLIENT ADDR PORT NAME PROTO\r\n250 8BITMIME\r\n"},
         {"XCLIENT NAME=[UNAVAILABLE] ADDR=192.0.2.7 PORT=40000 PROTO=ESMTP\r\n",
          "220 mx ESMTP for 192.0.2.7\r\n"}});
  Outcome outcome = connect(smtpWithXclient());
  ASSERT_TRUE(outcome.ready);
  EXPECT_TRUE(outcome.ready->greetingRead);
  EXPECT_TRUE(outcome.ready->xclientForwarded);
  EXPECT_EQ(outcome.ready->greeting, "220 mx ESMTP for 192.0.2.7\r\n");
}

TEST_F(ConnectorTest, XclientNotOfferedKeepsTheFirstGreeting) {
  serve("220 mx ESMTP\r\n", {{"EHLO postern\r\n", "250-mx\r\n250 8BITMIME\r\n"}});
  Outcome outcome = connect(smtpWithXclient());
  ASSERT_TRUE(outcome.ready);
  EXPECT_FALSE(outcome.ready->xclientForwarded);
  EXPECT_EQ(outcome.ready->greeting, "220 mx ESMTP\r\n");
  EXPECT_EQ(server_->received().find("XCLIENT"), std::string::npos);
}

TEST_F(ConnectorTest, TheProxyHeaderComesFirst) {
  serve("+OK hi\r\n");
  ConnectSpec spec;
  spec.host = "127.0.0.1";
  spec.protocol = config::Protocol::Pop3;
  spec.proxyProtocol = config::ProxyProtocol::V1;
  auto* client = reinterpret_cast<sockaddr_in*>(&spec.client);
  client->sin_family = AF_INET;
  client->sin_port = htons(40000);
  inet_pton(AF_INET, "192.0.2.7", &client->sin_addr);
  auto* local = reinterpret_cast<sockaddr_in*>(&spec.local);
  local->sin_family = AF_INET;
  local->sin_port = htons(110);
  inet_pton(AF_INET, "198.51.100.1", &local->sin_addr);
  Outcome outcome = connect(spec);
  ASSERT_TRUE(outcome.ready);
  for (int turn = 0; turn < 100 && server_->received().empty(); ++turn) {
    uv_run(&loop_, UV_RUN_NOWAIT); // the server reads what was sent
  }
  EXPECT_EQ(server_->received(), "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n");
}

} // namespace
} // namespace backend
