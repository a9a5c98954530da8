// The TLS engine without sockets: two engines talk through strings, fed in every chunk size.
#include "tests/tls/test_contexts.h"
#include "tls/context.h"
#include "tls/engine.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace tls {
namespace {

struct Collect final : PlaintextSink {
  std::string data;
  std::size_t stopAfter = SIZE_MAX; // stop after this many deliveries
  std::size_t deliveries = 0;
  bool onPlaintext(std::span<const char> bytes) override {
    data.append(bytes.data(), bytes.size());
    return ++deliveries < stopAfter;
  }
};

class EngineTest : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    dir_ = std::filesystem::temp_directory_path() /
           ("postern-engine-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    std::string d = dir_.string();
    std::string script =
        "cd " + d +
        " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 5 "
        "-subj '/CN=test CA' -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE "
        "2>/dev/null"
        " && openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-subj /CN=mail.example.test -keyout mail.key -out mail.csr 2>/dev/null"
        " && printf 'subjectAltName=DNS:mail.example.test\\n' > mail.ext"
        " && openssl x509 -req -in mail.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 5 "
        "-extfile mail.ext -out mail.pem 2>/dev/null";
    ASSERT_EQ(std::system(script.c_str()), 0);
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }

  void SetUp() override {
    tls::test_support::Contexts contexts = tls::test_support::makeContexts(dir_, dir_ / "ca.pem");
    ASSERT_TRUE(contexts.error.empty()) << contexts.error;
    serverContext_ = contexts.server;
    clientContext_ = contexts.client;
  }

  // Moves bytes between the two engines in chunks of `chunk` until neither has anything to say.
  void converse(Engine& client, Engine& server, std::string& toServer, std::string& toClient,
                Collect& atClient, Collect& atServer, std::size_t chunk) {
    for (int rounds = 0; rounds < 1000 && (!toServer.empty() || !toClient.empty()); ++rounds) {
      std::string batch;
      batch.swap(toServer);
      for (std::size_t i = 0; i < batch.size(); i += chunk) {
        server.receive(std::span(batch).subspan(i, std::min(chunk, batch.size() - i)), toClient,
                       atServer);
      }
      batch.clear();
      batch.swap(toClient);
      for (std::size_t i = 0; i < batch.size(); i += chunk) {
        client.receive(std::span(batch).subspan(i, std::min(chunk, batch.size() - i)), toServer,
                       atClient);
      }
    }
  }

  static std::filesystem::path dir_;
  std::shared_ptr<ServerContext> serverContext_;
  std::shared_ptr<ClientContext> clientContext_;
};

std::filesystem::path EngineTest::dir_;

TEST_F(EngineTest, HandshakeAndDataInEveryChunkSize) {
  for (std::size_t chunk : {1u, 2u, 5u, 7u, 100u, 1500u, 100000u}) {
    auto server = Engine::server(serverContext_->newSsl("imap"));
    auto client = Engine::client(clientContext_->newSsl("mail.example.test"));
    std::string toServer;
    std::string toClient;
    Collect atClient;
    Collect atServer;
    EXPECT_EQ(client->start(toServer), Engine::State::Handshaking);
    ASSERT_FALSE(toServer.empty()) << "a client starts with its ClientHello";
    converse(*client, *server, toServer, toClient, atClient, atServer, chunk);
    ASSERT_EQ(server->state(), Engine::State::Open) << "chunk " << chunk << server->error();
    ASSERT_EQ(client->state(), Engine::State::Open) << client->error();
    EXPECT_TRUE(server->handshakeJustFinished());
    EXPECT_FALSE(server->handshakeJustFinished()) << "reported once";
    EXPECT_EQ(server->version(), "TLSv1.3");
    // postern's TLS 1.3 default prefers AES-128-GCM over the client's AES-256-GCM first.
    EXPECT_EQ(server->cipher(), "TLS_AES_128_GCM_SHA256");

    std::string greeting = "* OK ready\r\n";
    ASSERT_EQ(server->send(greeting, toClient), Engine::State::Open);
    std::string upload(70000, 'u');
    ASSERT_EQ(client->send(upload, toServer), Engine::State::Open);
    converse(*client, *server, toServer, toClient, atClient, atServer, chunk);
    EXPECT_EQ(atClient.data, greeting);
    EXPECT_EQ(atServer.data, upload);
    EXPECT_FALSE(server->hasBuffered());
  }
}

TEST_F(EngineTest, SinkThatStopsKeepsTheRestForResume) {
  auto server = Engine::server(serverContext_->newSsl("pop3"));
  auto client = Engine::client(clientContext_->newSsl("mail.example.test"));
  std::string toServer;
  std::string toClient;
  Collect atClient;
  Collect atServer;
  client->start(toServer);
  converse(*client, *server, toServer, toClient, atClient, atServer, 4096);
  ASSERT_EQ(server->state(), Engine::State::Open);
  // Records are handed over up to 64 KiB at a time; a sink that stops after one delivery finds
  // the rest kept for resume().
  std::string whole = std::string(30000, 'a') + std::string(30000, 'b') + std::string(30000, 'c');
  for (std::size_t at = 0; at < whole.size(); at += 30000) {
    client->send(std::string_view(whole).substr(at, 30000), toServer);
  }
  atServer.stopAfter = 1;
  server->receive(toServer, toClient, atServer);
  EXPECT_EQ(atServer.data, whole.substr(0, 65536));
  EXPECT_TRUE(server->hasBuffered());
  atServer.deliveries = 0;
  atServer.stopAfter = SIZE_MAX;
  server->resume(toClient, atServer);
  EXPECT_EQ(atServer.data, whole);
  EXPECT_FALSE(server->hasBuffered());
}

TEST_F(EngineTest, CloseNotifyEndsTheStream) {
  auto server = Engine::server(serverContext_->newSsl("smtp"));
  auto client = Engine::client(clientContext_->newSsl("mail.example.test"));
  std::string toServer;
  std::string toClient;
  Collect atClient;
  Collect atServer;
  client->start(toServer);
  converse(*client, *server, toServer, toClient, atClient, atServer, 4096);
  client->shutdown(toServer);
  EXPECT_EQ(server->receive(toServer, toClient, atServer), Engine::State::Closed);
}

TEST_F(EngineTest, PlaintextOnATlsPortFails) {
  auto server = Engine::server(serverContext_->newSsl("imap"));
  std::string out;
  Collect sink;
  EXPECT_EQ(server->receive(std::string_view("a1 CAPABILITY\r\n"), out, sink),
            Engine::State::Failed);
  EXPECT_FALSE(server->error().empty());
  EXPECT_EQ(server->version(), "");
  EXPECT_TRUE(sink.data.empty());
}

TEST_F(EngineTest, WrongServerNameFailsVerification) {
  auto server = Engine::server(serverContext_->newSsl("imap"));
  auto client = Engine::client(clientContext_->newSsl("other.example.test"));
  std::string toServer;
  std::string toClient;
  Collect atClient;
  Collect atServer;
  client->start(toServer);
  converse(*client, *server, toServer, toClient, atClient, atServer, 4096);
  EXPECT_EQ(client->state(), Engine::State::Failed);
  EXPECT_NE(client->error().find("certificate verify failed"), std::string::npos)
      << client->error();
}

} // namespace
} // namespace tls
