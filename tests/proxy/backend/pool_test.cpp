// backend::Pool and its HealthChecker on a real loop against scripted servers: a polite check
// (greeting, capabilities, goodbye) keeps a server up and records what it offers; a server that
// refuses is taken down after `fall` failures and comes back after `rise`; passive failures of
// sessions count too. The loop closes with no handle open (STYLE #9).
#include "proxy/backend/pool.h"

#include "proxy/net/tcp_stream.h"
#include "tests/proxy/support/scripted_server.h"

#include <gtest/gtest.h>

namespace backend {
namespace {

using testing_support::ScriptedServer;

class PoolTest : public ::testing::Test {
protected:
  PoolTest() : registry_("test") {
    uv_loop_init(&loop_);
    net::attachLoopContext(&loop_, &context_);
  }
  ~PoolTest() override {
    if (pool_ != nullptr) {
      pool_->stop();
    }
    server_.reset();
    uv_run(&loop_, UV_RUN_DEFAULT);
    pool_.reset();
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a handle was left open";
  }

  // A pool of the one scripted server, checked once (the next check is an hour away).
  Pool& startPool(std::uint32_t rise, std::uint32_t fall,
                  std::chrono::milliseconds timeout = std::chrono::seconds(5)) {
    config::Backend backend;
    backend.name = "pool";
    auto* address = reinterpret_cast<const sockaddr_in*>(&server_->address());
    backend.servers.push_back({"127.0.0.1", ntohs(address->sin_port)});
    backend.health.interval = std::chrono::hours(1);
    backend.health.timeout = timeout;
    backend.health.rise = rise;
    backend.health.fall = fall;
    pool_ = std::make_unique<Pool>(backend, registry_);
    pool_->start(&loop_, config::Protocol::Imap);
    return *pool_;
  }

  // Runs the loop until `done` (bounded).
  template <typename Done> bool runUntil(Done done) {
    for (int turn = 0; turn < 2000 && !done(); ++turn) {
      uv_run(&loop_, UV_RUN_ONCE);
    }
    return done();
  }

  std::string metrics() const { return registry_.render(); }

  uv_loop_t loop_{};
  net::LoopContext context_{};
  metrics::Registry registry_;
  std::unique_ptr<ScriptedServer> server_;
  std::unique_ptr<Pool> pool_;
};

TEST_F(PoolTest, APoliteCheckKeepsTheServerUpAndLearnsItsCapabilities) {
  server_ = std::make_unique<ScriptedServer>(
      &loop_, "* OK ready\r\n",
      std::map<std::string, std::string>{
          {"H1 CAPABILITY\r\n", "* CAPABILITY IMAP4rev1 IDLE AUTH=PLAIN\r\nH1 OK done\r\n"},
          {"H2 LOGOUT\r\n", "* BYE bye\r\nH2 OK bye\r\n<then-close>"}});
  Pool& pool = startPool(1, 1);
  // The check ends when the goodbye is answered; then what the server offered is known.
  ASSERT_TRUE(runUntil([&] { return !pool.commonCapabilities().empty(); })) << metrics();
  std::string text = metrics();
  std::size_t line = text.find("postern_health_checks_total{backend=\"pool\",result=\"ok\"");
  ASSERT_NE(line, std::string::npos) << text;
  std::string series = text.substr(line, text.find('\n', line) - line);
  EXPECT_TRUE(series.ends_with(" 1")) << series;
  // Said goodbye (never a bare close that fills the server's log).
  EXPECT_NE(server_->received().find("H2 LOGOUT\r\n"), std::string::npos) << server_->received();
  EXPECT_EQ(pool.commonCapabilities(),
            (std::vector<std::string>{"IMAP4rev1", "IDLE", "AUTH=PLAIN"}));
  Server* picked = pool.pick({}, "");
  ASSERT_NE(picked, nullptr);
  pool.release(*picked);
}

TEST_F(PoolTest, ARefusingServerGoesDownAndComesBackAfterRise) {
  server_ = std::make_unique<ScriptedServer>(&loop_, "* BYE too busy\r\n",
                                             std::map<std::string, std::string>{});
  Pool& pool = startPool(2, 1);
  // Servers start up; the failed check (fall = 1) takes this one down.
  ASSERT_TRUE(runUntil([&] { return !pool.serverAt(0).up; })) << metrics();
  EXPECT_EQ(pool.pick({}, ""), nullptr);
  // Passive successes (sessions that worked) count towards `rise` like checks do.
  std::vector<const Server*> none;
  pool.report(pool.serverAt(0), true, false, "");
  EXPECT_EQ(pool.pick(none, ""), nullptr) << "one success of rise = 2 is not enough";
  pool.report(pool.serverAt(0), true, false, "");
  Server* server = pool.pick(none, "");
  ASSERT_NE(server, nullptr);
  pool.release(*server);
  // And `fall` passive failures take it down again.
  pool.report(*server, false, false, "closed");
  EXPECT_EQ(pool.pick(none, ""), nullptr);
}

// A server that accepts and never greets: the check's timeout fails it (and closes the
// connection it made; the loop still closes clean).
TEST_F(PoolTest, ASilentServerFailsItsCheckByTimeout) {
  server_ = std::make_unique<ScriptedServer>(&loop_, "", std::map<std::string, std::string>{});
  Pool& pool = startPool(1, 1, std::chrono::milliseconds(100));
  ASSERT_TRUE(runUntil([&] { return !pool.serverAt(0).up; })) << metrics();
  EXPECT_EQ(pool.pick({}, ""), nullptr);
}

} // namespace
} // namespace backend
