// The runtime API's routes against a Control with no loop behind it: listings, state changes,
// errors, the token, kicks handed to a worker's mailbox, and the status page.
#include "proxy/admin/api.h"

#include "metrics/metrics.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace admin {
namespace {

using nlohmann::json;

struct RecordingMailbox final : Mailbox {
  std::vector<Kick> kicks;
  void post(std::vector<Kick> posted) override {
    for (Kick& kick : posted) {
      kicks.push_back(std::move(kick));
    }
  }
};

class AdminApi : public testing::Test {
protected:
  AdminApi() {
    auto config = std::make_shared<config::Config>();
    config::Backend pool;
    pool.name = "imap-pool";
    pool.balance = config::Balance::LeastConn;
    config->backends.push_back(pool);
    config::Listener listener;
    listener.name = "imap";
    listener.listen = {"127.0.0.1", 0, false};
    listener.backend = "imap-pool";
    listener.mode = config::Mode::Login;
    config->listeners.push_back(listener);
    control_.publish(config, {{"imap", 1143}});
    a_ = control_.server("imap-pool", "10.0.0.1:143", 0,
                         registry_.server("imap-pool", "10.0.0.1:143", false));
    b_ = control_.server("imap-pool", "10.0.0.2:143", 1,
                         registry_.server("imap-pool", "10.0.0.2:143", false));
    control_.attach(0, &mailbox_);
  }

  Response call(const std::string& method, const std::string& target,
                const std::string& authorization = "") {
    std::string text = method + " " + target + " HTTP/1.1\r\nHost: x\r\n";
    if (!authorization.empty()) {
      text += "Authorization: " + authorization + "\r\n";
    }
    http::RequestReader reader;
    EXPECT_EQ(reader.feed(text + "\r\n"), http::RequestReader::Status::Complete);
    return api_.handle(reader.request(), "127.0.0.1:5555");
  }

  static json body(const Response& response) { return json::parse(response.body); }

  metrics::Registry registry_{"test"};
  Control control_;
  Api api_{control_, ""};
  RecordingMailbox mailbox_;
  std::shared_ptr<ServerControl> a_;
  std::shared_ptr<ServerControl> b_;
};

TEST_F(AdminApi, ListsPoolsAndServersInOrder) {
  a_->active = 3;
  b_->up = false;
  Response response = call("GET", "/v1/backends");
  ASSERT_EQ(response.status, 200);
  json pools = body(response)["pools"];
  ASSERT_EQ(pools.size(), 1u);
  EXPECT_EQ(pools[0]["pool"], "imap-pool");
  EXPECT_EQ(pools[0]["balance"], "least_conn");
  EXPECT_EQ(pools[0]["servers"][0]["server"], "10.0.0.1:143");
  EXPECT_EQ(pools[0]["servers"][0]["sessions"], 3);
  EXPECT_EQ(pools[0]["servers"][0]["status"], "up");
  EXPECT_EQ(pools[0]["servers"][1]["status"], "down");
}

TEST_F(AdminApi, DrainDisableEnable) {
  Response drained = call("POST", "/v1/backends/imap-pool/10.0.0.1:143/drain");
  ASSERT_EQ(drained.status, 200);
  EXPECT_EQ(body(drained)["server"]["state"], "drained");
  EXPECT_FALSE(a_->takesSessions());
  EXPECT_EQ(call("POST", "/v1/backends/imap-pool/10.0.0.2%3A143/disable").status, 200);
  EXPECT_EQ(b_->state.load(), ServerState::Disabled);
  EXPECT_EQ(body(call("GET", "/v1/backends"))["pools"][0]["servers"][1]["status"], "disabled");
  EXPECT_NE(registry_.render().find("postern_backend_admin_state{backend=\"imap-pool\",server=\"10."
                                    "0.0.2:143\",state=\"disabled\"} 1"),
            std::string::npos);
  EXPECT_EQ(call("POST", "/v1/backends/imap-pool/10.0.0.2:143/enable").status, 200);
  EXPECT_TRUE(b_->takesSessions());
}

TEST_F(AdminApi, AStateOutlivesThePoolThatHadTheServer) {
  call("POST", "/v1/backends/imap-pool/10.0.0.1:143/drain");
  a_.reset(); // the pool is rebuilt (SIGHUP): its servers go, then come back
  EXPECT_EQ(control_.find("imap-pool", "10.0.0.1:143"), nullptr);
  EXPECT_EQ(call("POST", "/v1/backends/imap-pool/10.0.0.1:143/enable").status, 404);
  auto again = control_.server("imap-pool", "10.0.0.1:143", 0,
                               registry_.server("imap-pool", "10.0.0.1:143", false));
  EXPECT_EQ(again->state.load(), ServerState::Drained);
}

TEST_F(AdminApi, ErrorsSayWhat) {
  Response pool = call("POST", "/v1/backends/nope/10.0.0.1:143/drain");
  EXPECT_EQ(pool.status, 404);
  EXPECT_EQ(body(pool)["error"], "no pool \"nope\"");
  Response server = call("POST", "/v1/backends/imap-pool/10.9.9.9:1/drain");
  EXPECT_EQ(server.status, 404);
  EXPECT_EQ(body(server)["error"], "pool \"imap-pool\" has no server \"10.9.9.9:1\"");
  EXPECT_EQ(call("POST", "/v1/backends/imap-pool/10.0.0.1:143/explode").status, 404);
  Response wrongMethod = call("GET", "/v1/backends/imap-pool/10.0.0.1:143/drain");
  EXPECT_EQ(wrongMethod.status, 405);
  EXPECT_EQ(wrongMethod.headers, "Allow: POST\r\n");
  EXPECT_EQ(call("DELETE", "/v1/backends").status, 405);
  EXPECT_EQ(call("GET", "/v2/backends").status, 404);
  EXPECT_EQ(call("POST", "/v1/sessions/kick").status, 400);
  EXPECT_EQ(a_->state.load(), ServerState::Enabled);
}

TEST_F(AdminApi, TheTokenIsRequiredOnceSet) {
  api_.setToken("secret");
  EXPECT_EQ(call("GET", "/v1/backends").status, 401);
  EXPECT_EQ(call("GET", "/").status, 401);
  EXPECT_EQ(call("GET", "/v1/backends", "Bearer secreT").status, 401);
  EXPECT_EQ(call("GET", "/v1/backends", "Bearer secret2").status, 401);
  EXPECT_EQ(call("GET", "/v1/backends", "Basic secret").status, 401);
  Response refused = call("POST", "/v1/backends/imap-pool/10.0.0.1:143/drain", "Bearer nope");
  EXPECT_EQ(refused.status, 401);
  EXPECT_NE(refused.headers.find("WWW-Authenticate: Bearer"), std::string::npos);
  EXPECT_EQ(a_->state.load(), ServerState::Enabled);
  EXPECT_EQ(call("GET", "/v1/backends", "Bearer secret").status, 200);
  EXPECT_EQ(call("GET", "/v1/backends", "bearer secret").status, 200);
  // A browser's Basic credentials with the token as the password ("admin:secret").
  EXPECT_EQ(call("GET", "/", "Basic YWRtaW46c2VjcmV0").status, 200);
  EXPECT_EQ(call("GET", "/", "Basic OnNlY3JldA==").status, 200);      // ":secret"
  EXPECT_EQ(call("GET", "/", "Basic YWRtaW46c2VjcmV1").status, 401);  // "admin:secreu"
  EXPECT_EQ(call("GET", "/", "Basic YWRtaW46c2VjcmV0=").status, 401); // bad padding
  EXPECT_EQ(call("GET", "/", "Basic c2VjcmV0").status, 401);          // no colon
}

TEST_F(AdminApi, SessionsAreFilteredAndKickedByUser) {
  int sessionA = 0;
  int sessionB = 0;
  auto alice = control_.open(0, "imap", "imap", "192.0.2.1:40000", &sessionA);
  auto bob = control_.open(0, "imap", "imap", "192.0.2.2:40001", &sessionB);
  control_.setUser(*alice, "Alice@Example.org");
  control_.setBackend(*alice, "10.0.0.1:143");
  alice->bytesIn = 10;
  alice->bytesOut = 2000;
  json all = body(call("GET", "/v1/sessions"))["sessions"];
  ASSERT_EQ(all.size(), 2u);
  EXPECT_TRUE(all[1]["user"].is_null());
  json mine = body(call("GET", "/v1/sessions?user=alice%40example.org"))["sessions"];
  ASSERT_EQ(mine.size(), 1u);
  EXPECT_EQ(mine[0]["client"], "192.0.2.1:40000");
  EXPECT_EQ(mine[0]["backend"], "10.0.0.1:143");
  EXPECT_EQ(mine[0]["bytes_out"], 2000);
  EXPECT_EQ(body(call("GET", "/v1/sessions?client=192.0.2.2"))["sessions"][0]["id"], bob->id);
  EXPECT_EQ(body(call("GET", "/v1/listeners"))["listeners"][0]["sessions"], 2);

  Response kicked = call("POST", "/v1/sessions/kick?user=ALICE@example.org");
  ASSERT_EQ(kicked.status, 200);
  EXPECT_EQ(body(kicked)["kicked"], 1);
  ASSERT_EQ(mailbox_.kicks.size(), 1u);
  EXPECT_EQ(mailbox_.kicks[0].record->session, &sessionA);
  EXPECT_EQ(mailbox_.kicks[0].by, "127.0.0.1:5555");
  // Nobody by that name: nothing posted. A closed session is no longer listed.
  EXPECT_EQ(body(call("POST", "/v1/sessions/kick?user=carol"))["kicked"], 0);
  control_.close(*alice);
  EXPECT_TRUE(alice->closed);
  EXPECT_EQ(body(call("GET", "/v1/sessions"))["sessions"].size(), 1u);
  control_.close(*bob);
}

TEST_F(AdminApi, TheStatusPageShowsTheStateEscaped) {
  call("POST", "/v1/backends/imap-pool/10.0.0.1:143/drain");
  control_.setCertificates({{"mail.<example>.org", "ecdsa", 4102444800.0}});
  Response page = call("GET", "/");
  ASSERT_EQ(page.status, 200);
  EXPECT_EQ(page.contentType, "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("<meta http-equiv=\"refresh\""), std::string::npos);
  EXPECT_NE(page.body.find("data-server=\"10.0.0.1:143\" data-status=\"drained\""),
            std::string::npos);
  EXPECT_NE(page.body.find("data-server=\"10.0.0.2:143\" data-status=\"up\""), std::string::npos);
  EXPECT_NE(page.body.find("mail.&lt;example&gt;.org"), std::string::npos);
  EXPECT_NE(page.body.find("2100-01-01T00:00:00Z"), std::string::npos);
  EXPECT_NE(page.body.find("127.0.0.1:1143"), std::string::npos);
  EXPECT_EQ(page.body.find("<script"), std::string::npos);
  EXPECT_EQ(page.body.find("http://"), std::string::npos);
}

} // namespace
} // namespace admin
