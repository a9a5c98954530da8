// The loader and validator: every kind of error, with its position, key path and message.
#include "config/load.h"
#include "tls/certificate_check.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace config {
namespace {

using namespace std::chrono_literals;

constexpr const char* kMinimal = R"(
[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:1143"
backend = "pool"

[[backend]]
name = "pool"
servers = ["127.0.0.1:143"]
)";

std::vector<std::string> errorsOf(std::string_view text) {
  auto loaded = loadString(text, "postern.toml");
  std::vector<std::string> out;
  if (loaded) {
    return out;
  }
  for (const Diagnostic& d : loaded.error()) {
    out.push_back(d.text());
  }
  return out;
}

#define EXPECT_ONLY_ERROR(text, expected)                                                          \
  do {                                                                                             \
    auto errors = errorsOf(text);                                                                  \
    ASSERT_EQ(errors.size(), 1u) << ::testing::PrintToString(errors);                              \
    EXPECT_EQ(errors.front(), expected);                                                           \
  } while (false)

TEST(LoadConfig, MinimalConfigGetsDefaults) {
  auto loaded = loadString(kMinimal, "postern.toml");
  ASSERT_TRUE(loaded.has_value()) << errorsOf(kMinimal).front();
  const Config& config = *loaded;
  EXPECT_EQ(config.global.workers, 1u);
  EXPECT_EQ(config.global.max_connections, 20000u);
  EXPECT_EQ(config.global.shutdown_grace, 30s);
  EXPECT_TRUE(config.metrics.enabled);
  EXPECT_EQ(config.metrics.listen.text(), "127.0.0.1:9464");
  ASSERT_EQ(config.listeners.size(), 1u);
  const Listener& listener = config.listeners[0];
  EXPECT_EQ(listener.tls, TlsMode::None);
  EXPECT_FALSE(listener.require_tls);
  EXPECT_EQ(listener.mode, Mode::Passthrough);
  EXPECT_TRUE(listener.allow_auth);
  EXPECT_EQ(listener.limits.idle_timeout, 30min);
  EXPECT_EQ(listener.limits.max_line_length, 8192u);
  ASSERT_EQ(config.backends.size(), 1u);
  EXPECT_EQ(config.backends[0].connect_timeout, 5s);
  EXPECT_EQ(config.backends[0].retries, 2u);
  EXPECT_EQ(config.backends[0].health.fall, 3u);
}

TEST(LoadConfig, ExampleConfigLoadsCleanly) {
  auto loaded = loadString(exampleConfig(), "example.toml");
  ASSERT_TRUE(loaded.has_value()) << ::testing::PrintToString(errorsOf(exampleConfig()));
  EXPECT_EQ(loaded->listeners.size(), 3u);
  EXPECT_EQ(loaded->backends.size(), 3u);
  EXPECT_TRUE(tls::checkConfig(*loaded).empty());
}

TEST(LoadConfig, ReadsEveryKey) {
  auto loaded = loadString(R"(
[global]
workers = 0
user = "root"
log_level = "debug"
log_format = "json"
max_connections = 10
shutdown_grace = "2s"
[metrics]
listen = ""
[limits]
max_line_length = 1024
preauth_timeout = "10s"
idle_timeout = "1h"
per_ip_max_connections = 7
per_ip_connect_rate = 3
auth_failures_before_delay = 2
auth_failure_window = "1m"
auth_max_delay = "5s"
auth_failures_before_block = 9
auth_block = "2m"
[[listener]]
name = "imap"
protocol = "imap"
listen = "[::1]:1143"
mode = "login"
allow_auth = false
backend = "pool"
accept_proxy_protocol = true
trusted_proxies = ["10.0.0.0/8", "::1"]
limits = { idle_timeout = "5m" }
[[backend]]
name = "pool"
servers = ["127.0.0.1:143", "imap.internal:143"]
balance = "user_hash"
tls = "starttls"
tls_verify = false
send_proxy_protocol = "v2"
connect_timeout = "1s"
retries = 0
dns_refresh = "10s"
health = { interval = "1s", timeout = "500ms", rise = 1, fall = 2 }
)",
                           "postern.toml");
  ASSERT_TRUE(loaded.has_value()) << loaded.error().front().text();
  const Config& c = *loaded;
  EXPECT_EQ(c.global.workers, 0u);
  EXPECT_EQ(c.global.log_level, LogLevel::Debug);
  EXPECT_EQ(c.global.log_format, LogFormat::Json);
  EXPECT_FALSE(c.metrics.enabled);
  EXPECT_EQ(c.limits.per_ip_max_connections, 7u);
  EXPECT_EQ(c.limits.auth_block, 2min);
  const Listener& l = c.listeners[0];
  EXPECT_TRUE(l.listen.ipv6);
  EXPECT_EQ(l.mode, Mode::Login);
  EXPECT_FALSE(l.allow_auth);
  EXPECT_TRUE(l.accept_proxy_protocol);
  ASSERT_EQ(l.trusted_proxies.size(), 2u);
  EXPECT_EQ(l.limits.idle_timeout, 5min);
  EXPECT_EQ(l.limits.max_line_length, 1024u) << "listener limits start from [limits]";
  const Backend& b = c.backends[0];
  EXPECT_EQ(b.servers.size(), 2u);
  EXPECT_EQ(b.balance, Balance::UserHash);
  EXPECT_EQ(b.tls, TlsMode::StartTls);
  EXPECT_FALSE(b.tls_verify);
  EXPECT_EQ(b.send_proxy_protocol, ProxyProtocol::V2);
  EXPECT_EQ(b.retries, 0u);
  EXPECT_EQ(b.health.timeout, 500ms);
}

TEST(LoadConfig, WrongEnumNamesFileLineColumnAndPath) {
  std::string text = std::string(kMinimal) + R"(
[[listener]]
name = "pop3"
protocol = "pop3"
listen = "127.0.0.1:1110"
backend = "pool"
tls = "startls"
)";
  EXPECT_ONLY_ERROR(text, "postern.toml:17:1: listener[1].tls: expected one of "
                          "none|starttls|implicit, got \"startls\"");
}

TEST(LoadConfig, UnknownKeysAreErrorsEverywhere) {
  std::string text = std::string("[global]\nworkerz = 2\n") + kMinimal + "colour = \"red\"\n";
  auto errors = errorsOf(text);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_EQ(errors[0], "postern.toml:2:1: global.workerz: unknown key");
  EXPECT_EQ(errors[1], "postern.toml:13:1: backend[0].colour: unknown key");
  EXPECT_ONLY_ERROR("[nonsense]\n" + std::string(kMinimal),
                    "postern.toml:1:2: nonsense: unknown key");
}

TEST(LoadConfig, WrongTypes) {
  EXPECT_ONLY_ERROR("[global]\nworkers = \"2\"\n" + std::string(kMinimal),
                    "postern.toml:2:1: global.workers: expected an integer, got a string");
  EXPECT_ONLY_ERROR("[global]\nuser = 5\n" + std::string(kMinimal),
                    "postern.toml:2:1: global.user: expected a string, got an integer");
  EXPECT_ONLY_ERROR("[tls]\nstrict_sni = \"yes\"\n" + std::string(kMinimal),
                    "postern.toml:2:1: tls.strict_sni: expected a boolean, got a string");
  EXPECT_ONLY_ERROR("global = 3\n" + std::string(kMinimal),
                    "postern.toml:1:1: global: expected a table, got an integer");
  EXPECT_ONLY_ERROR(std::string(kMinimal) + "health = 3\n",
                    "postern.toml:11:1: backend[0].health: expected a table, got an integer");
}

TEST(LoadConfig, OutOfRangeValues) {
  EXPECT_ONLY_ERROR("[global]\nworkers = 100000\n" + std::string(kMinimal),
                    "postern.toml:2:1: global.workers: expected an integer from 0 to 256, got "
                    "100000");
  EXPECT_ONLY_ERROR("[limits]\nmax_line_length = 10\n" + std::string(kMinimal),
                    "postern.toml:2:1: limits.max_line_length: expected an integer from 512 to "
                    "1048576, got 10");
  EXPECT_ONLY_ERROR("[global]\nshutdown_grace = \"2d\"\n" + std::string(kMinimal),
                    "postern.toml:2:1: global.shutdown_grace: expected a duration from 0s to 24h, "
                    "got \"2d\"");
}

TEST(LoadConfig, BadDurations) {
  EXPECT_ONLY_ERROR("[limits]\nidle_timeout = \"30\"\n" + std::string(kMinimal),
                    "postern.toml:2:1: limits.idle_timeout: expected a duration with a unit (ms, "
                    "s, m, h, d), got \"30\"");
}

TEST(LoadConfig, BadAddresses) {
  std::string text = kMinimal;
  text.replace(text.find("127.0.0.1:1143"), 14, "localhost:143");
  EXPECT_ONLY_ERROR(text, "postern.toml:5:1: listener[0].listen: expected an IP address and port "
                          "such as \"0.0.0.0:143\" or \"[::]:993\", got \"localhost:143\"");
  std::string servers = kMinimal;
  servers.replace(servers.find("[\"127.0.0.1:143\"]"), 17, "[\"a:1\", \"b\"]");
  EXPECT_ONLY_ERROR(servers,
                    "postern.toml:10:19: backend[0].servers[1]: expected \"host:port\", got \"b\"");
}

TEST(LoadConfig, MissingRequiredKeysPointAtTheirTable) {
  auto errors = errorsOf("[[listener]]\nname = \"x\"\n");
  ASSERT_EQ(errors.size(), 3u) << ::testing::PrintToString(errors);
  EXPECT_EQ(errors[0], "postern.toml:1:1: listener[0].protocol: missing required key");
  EXPECT_EQ(errors[1], "postern.toml:1:1: listener[0].listen: missing required key");
  EXPECT_EQ(errors[2], "postern.toml:1:1: listener[0].backend: missing required key");
}

TEST(LoadConfig, NoListenersIsAnError) {
  EXPECT_ONLY_ERROR("[global]\nworkers = 1\n",
                    "postern.toml:1:1: listener: at least one [[listener]] is needed");
}

TEST(LoadConfig, ListenerNamingAMissingBackend) {
  std::string text = kMinimal;
  text.replace(text.find("backend = \"pool\""), 16, "backend = \"poll\"");
  EXPECT_ONLY_ERROR(text,
                    "postern.toml:6:1: listener[0].backend: no [[backend]] is named \"poll\"");
}

TEST(LoadConfig, TwoListenersOnOneAddress) {
  std::string text = std::string(kMinimal) + R"(
[[listener]]
name = "imap2"
protocol = "imap"
listen = "0.0.0.0:1143"
backend = "pool"
)";
  EXPECT_ONLY_ERROR(text, "postern.toml:15:1: listener[1].listen: address 0.0.0.0:1143 is already "
                          "used by listener[0]");
}

TEST(LoadConfig, Ipv4AndIpv6WildcardsCoexist) {
  std::string text = std::string(kMinimal) + R"(
[[listener]]
name = "imap6"
protocol = "imap"
listen = "[::]:1143"
backend = "pool"
)";
  EXPECT_TRUE(errorsOf(text).empty());
}

TEST(LoadConfig, AdminIsOffUnlessListenIsSet) {
  auto loaded = loadString(kMinimal, "postern.toml");
  ASSERT_TRUE(loaded.has_value());
  EXPECT_FALSE(loaded->admin.enabled);
  std::string text = std::string("[admin]\nlisten = \"[::1]:9465\"\n") + kMinimal;
  loaded = loadString(text, "postern.toml");
  ASSERT_TRUE(loaded.has_value()) << ::testing::PrintToString(errorsOf(text));
  EXPECT_TRUE(loaded->admin.enabled);
  EXPECT_EQ(loaded->admin.listen.text(), "[::1]:9465");
  EXPECT_EQ(loaded->admin.token, "");
}

TEST(LoadConfig, AdminOffLoopbackNeedsAToken) {
  EXPECT_ONLY_ERROR(std::string("[admin]\nlisten = \"0.0.0.0:9465\"\n") + kMinimal,
                    "postern.toml:2:1: admin.listen: a non-loopback admin.listen needs a token "
                    "(token or token_file)");
  EXPECT_TRUE(
      errorsOf(std::string("[admin]\nlisten = \"0.0.0.0:9465\"\ntoken = \"t0k\"\n") + kMinimal)
          .empty());
  EXPECT_ONLY_ERROR(std::string("[admin]\nlisten = \"127.0.0.1:9465\"\ntoken = \"a b\"\n") +
                        kMinimal,
                    "postern.toml:3:1: admin.token: the token must be printable ASCII without "
                    "spaces");
  EXPECT_ONLY_ERROR(std::string("[admin]\nlisten = \"127.0.0.1:9464\"\n") + kMinimal,
                    "postern.toml:2:1: admin.listen: address 127.0.0.1:9464 is already used by "
                    "metrics.listen");
}

TEST(LoadConfig, AdminTokenFromAFile) {
  auto folder = std::filesystem::temp_directory_path() / "postern-admin-token-test";
  std::filesystem::create_directories(folder);
  std::ofstream(folder / "token") << "from-the-file\nsecond line ignored\n";
  std::ofstream(folder / "empty") << "\n";
  std::string file = (folder / "postern.toml").string();
  auto loaded = loadString(std::string("[admin]\nlisten = \"127.0.0.1:9465\"\ntoken_file = "
                                       "\"token\"\n") +
                               kMinimal,
                           file);
  ASSERT_TRUE(loaded.has_value());
  EXPECT_EQ(loaded->admin.token, "from-the-file");
  EXPECT_EQ(loaded->admin.token_file, (folder / "token").string());
  for (const char* name : {"empty", "missing"}) {
    auto refused = loadString(std::string("[admin]\nlisten = \"127.0.0.1:9465\"\ntoken_file = \"") +
                                  name + "\"\n" + kMinimal,
                              file);
    ASSERT_FALSE(refused.has_value()) << name;
    EXPECT_EQ(refused.error().front().path, "admin.token_file");
  }
  auto both =
      loadString(std::string("[admin]\ntoken = \"x\"\ntoken_file = \"token\"\n") + kMinimal, file);
  ASSERT_FALSE(both.has_value());
  EXPECT_EQ(both.error().front().message, "set either token or token_file, not both");
  std::filesystem::remove_all(folder);
}

TEST(LoadConfig, DuplicateNames) {
  std::string text = std::string(kMinimal) + R"(
[[listener]]
name = "imap"
protocol = "imap"
listen = "127.0.0.1:1144"
backend = "pool"
)";
  EXPECT_ONLY_ERROR(text, "postern.toml:13:1: listener[1].name: listener \"imap\" is already "
                          "defined as listener[0]");
}

TEST(LoadConfig, RequireTlsOnAPlaintextListener) {
  std::string text = std::string(kMinimal);
  text.insert(text.find("backend = \"pool\""), "require_tls = true\n");
  EXPECT_ONLY_ERROR(text, "postern.toml:6:1: listener[0].require_tls: require_tls = true needs tls "
                          "= \"starttls\" or \"implicit\"");
}

TEST(LoadConfig, RequireTlsDefaultsToTrueOnStarttls) {
  std::string text =
      "[tls]\ncertificates = [{cert = \"c\", key = \"k\"}]\n" + std::string(kMinimal);
  text.insert(text.find("backend = \"pool\""), "tls = \"starttls\"\n");
  auto loaded = loadString(text, "postern.toml");
  ASSERT_TRUE(loaded.has_value());
  EXPECT_TRUE(loaded->listeners[0].require_tls);
}

TEST(LoadConfig, TlsListenerWithoutCertificates) {
  std::string text = kMinimal;
  text.insert(text.find("backend = \"pool\""), "tls = \"implicit\"\n");
  EXPECT_ONLY_ERROR(text, "postern.toml: tls.certificates: TLS listeners need at least one "
                          "certificate in [tls] certificates");
}

TEST(LoadConfig, UserHashNeedsLoginMode) {
  std::string text = std::string(kMinimal) + "balance = \"user_hash\"\n";
  EXPECT_ONLY_ERROR(text, "postern.toml:6:1: listener[0].backend: backend \"pool\" balances by "
                          "user_hash, which needs mode = \"login\" (a passthrough listener never "
                          "learns the user)");
}

TEST(LoadConfig, ProxyProtocolNeedsTrustedProxies) {
  std::string text = kMinimal;
  text.insert(text.find("backend = \"pool\""), "accept_proxy_protocol = true\n");
  EXPECT_ONLY_ERROR(text, "postern.toml:6:1: listener[0].trusted_proxies: accept_proxy_protocol = "
                          "true needs trusted_proxies (the CIDRs allowed to send the header)");
}

TEST(LoadConfig, ProxyProtocolNeedsANonEmptyTrustedProxies) {
  std::string text = kMinimal;
  text.insert(text.find("backend = \"pool\""),
              "accept_proxy_protocol = true\ntrusted_proxies = []\n");
  EXPECT_ONLY_ERROR(text, "postern.toml:6:1: listener[0].trusted_proxies: accept_proxy_protocol = "
                          "true needs trusted_proxies (the CIDRs allowed to send the header)");
}

TEST(LoadConfig, HealthTimeoutLongerThanInterval) {
  std::string text = std::string(kMinimal) + "health = { interval = \"1s\", timeout = \"2s\" }\n";
  EXPECT_ONLY_ERROR(text, "postern.toml:11:29: backend[0].health.timeout: the health check timeout "
                          "must not exceed its interval");
}

TEST(LoadConfig, UnknownUser) {
  EXPECT_ONLY_ERROR("[global]\nuser = \"no-such-user-here\"\n" + std::string(kMinimal),
                    "postern.toml:2:1: global.user: no such user \"no-such-user-here\"");
}

TEST(LoadConfig, SyntaxErrorsNameTheirPosition) {
  auto errors = errorsOf("[global\nworkers = 1\n");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_TRUE(errors[0].starts_with("postern.toml:1:")) << errors[0];
  EXPECT_NE(errors[0].find("TOML syntax"), std::string::npos) << errors[0];
}

TEST(LoadConfig, EveryErrorIsReportedAtOnceInFileOrder) {
  auto errors = errorsOf(R"([global]
workers = -1
log_level = "loud"
[[listener]]
name = "a b"
protocol = "nntp"
listen = "1.2.3.4"
backend = "none"
)");
  ASSERT_EQ(errors.size(), 6u) << ::testing::PrintToString(errors);
  EXPECT_EQ(errors[0],
            "postern.toml:2:1: global.workers: expected an integer from 0 to 256, got -1");
  EXPECT_EQ(errors[1], "postern.toml:3:1: global.log_level: expected one of "
                       "error|warn|info|debug, got \"loud\"");
  EXPECT_EQ(errors[2], "postern.toml:5:1: listener[0].name: names use letters, digits, '-', '_' "
                       "and '.' (at most 64)");
  EXPECT_EQ(errors[3],
            "postern.toml:6:1: listener[0].protocol: expected one of pop3|imap|smtp|sieve, got "
            "\"nntp\"");
  EXPECT_EQ(errors[4], "postern.toml:7:1: listener[0].listen: expected \"host:port\", got "
                       "\"1.2.3.4\"");
  EXPECT_EQ(errors[5], "postern.toml:8:1: listener[0].backend: no [[backend]] is named \"none\"");
}

// Certificates are checked by the TLS layer but reported in the same form.
class CertificateCheck : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("postern-config-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    auto make = [&](const std::string& name) {
      std::string command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                            "-nodes -days 2 -subj /CN=" +
                            name + " -keyout " + (dir_ / (name + ".key")).string() + " -out " +
                            (dir_ / (name + ".pem")).string() + " 2>/dev/null";
      ASSERT_EQ(std::system(command.c_str()), 0);
    };
    make("a");
    make("b");
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> check(const std::string& certificates) {
    std::string text = "[tls]\ncertificates = [" + certificates + "]\n" + std::string(kMinimal);
    std::string file = (dir_ / "postern.toml").string();
    auto loaded = loadString(text, file);
    std::vector<std::string> out;
    if (!loaded) {
      for (auto& d : loaded.error()) {
        out.push_back(d.text());
      }
      return out;
    }
    for (auto& d : tls::checkConfig(*loaded)) {
      out.push_back(d.text());
    }
    return out;
  }

  std::filesystem::path dir_;
};

TEST_F(CertificateCheck, MatchingPairWithRelativePathsLoads) {
  EXPECT_TRUE(check("{ cert = \"a.pem\", key = \"a.key\" }").empty());
}

TEST_F(CertificateCheck, KeyThatDoesNotMatch) {
  auto errors = check("{ cert = \"a.pem\", key = \"b.key\" }");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find(":2:35: tls.certificates[0].key: key \""), std::string::npos)
      << errors[0];
  EXPECT_NE(errors[0].find("does not match certificate"), std::string::npos) << errors[0];
}

TEST_F(CertificateCheck, CertificateThatDoesNotLoad) {
  auto errors = check("{ cert = \"missing.pem\", key = \"a.key\" }");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find(":2:19: tls.certificates[0].cert: cannot load certificate"),
            std::string::npos)
      << errors[0];
}

TEST_F(CertificateCheck, UnreadableOcspFile) {
  auto errors = check("{ cert = \"a.pem\", key = \"a.key\", ocsp = \"nope.der\" }");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("tls.certificates[0].ocsp: cannot read"), std::string::npos)
      << errors[0];
}

} // namespace
} // namespace config
