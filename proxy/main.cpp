// postern's command line: run, check a config, print the example, print the version.
#include "config/load.h"
#include "metrics/metrics.h"
#include "proxy/admin/ctl.h"
#include "proxy/log.h"
#include "proxy/protocol/registry.h"
#include "proxy/server.h"
#include "tls/certificate_check.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr std::string_view kUsage = R"(usage:
  postern --config FILE          run (foreground; logs to stderr)
  postern --check-config FILE    validate and exit 0, or print every error and exit 1
  postern --print-example-config print a complete, commented example config
  postern ctl [--config FILE] COMMAND
                                 the runtime API of a running postern (`postern ctl --help`)
  postern --version
)";

// Loads and checks a config; prints every problem to stderr.
std::expected<config::Config, int> loadChecked(const std::string& path) {
  auto loaded = config::loadFile(path);
  std::vector<config::Diagnostic> diagnostics;
  if (!loaded) {
    diagnostics = std::move(loaded.error());
  } else {
    diagnostics = tls::checkConfig(*loaded);
  }
  if (diagnostics.empty()) {
    return std::move(*loaded);
  }
  for (const config::Diagnostic& diagnostic : diagnostics) {
    std::cerr << diagnostic.text() << '\n';
  }
  std::cerr << path << ": " << diagnostics.size()
            << (diagnostics.size() == 1 ? " error" : " errors") << '\n';
  return std::unexpected(1);
}

// Drops root for `user` once the sockets are bound and the keys read (SPEC §9). Returns an
// error text, or "" on success.
std::string dropPrivileges(const std::string& user) {
  if (user.empty()) {
    return "";
  }
  struct passwd* account = getpwnam(user.c_str());
  if (account == nullptr) {
    return "no such user \"" + user + "\"";
  }
  if (initgroups(account->pw_name, account->pw_gid) != 0 || setgid(account->pw_gid) != 0 ||
      setuid(account->pw_uid) != 0) {
    return std::string("cannot become \"") + user + "\": " + std::strerror(errno);
  }
  if (account->pw_uid != 0 && setuid(0) == 0) {
    return "privileges could be regained after dropping them";
  }
  return "";
}

std::string hostName() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') {
    return "postern";
  }
  return name;
}

int run(const std::string& path) {
  auto loaded = loadChecked(path);
  if (!loaded) {
    return loaded.error();
  }
  const config::Config& config = *loaded;
  logging::configure(config.global.log_level, config.global.log_format);
  protocol::initialiseRegistry(hostName());
  std::signal(SIGPIPE, SIG_IGN);

  metrics::Registry registry(POSTERN_VERSION);
  if (config.metrics.enabled) {
    auto port = registry.startExposer(config.metrics.listen.text());
    if (!port) {
      logging::error("cannot serve metrics",
                     {{"address", config.metrics.listen.text()}, {"error", port.error()}});
      return 1;
    }
    config::SocketAddress bound = config.metrics.listen;
    bound.port = static_cast<std::uint16_t>(*port);
    logging::info("metrics listening", {{"address", bound.text()}, {"path", "/metrics"}});
  }

  // SPEC §9: `workers` loops, each its own thread, sharing the listening ports (SO_REUSEPORT).
  unsigned workers = config.global.workers != 0 ? config.global.workers
                                                : std::max(1u, std::thread::hardware_concurrency());
  proxy::Shared shared;
  shared.sessionDirectory = config.admin.enabled;
  std::vector<std::unique_ptr<proxy::Server>> servers;
  config::Config workerConfig = config;
  for (unsigned i = 0; i < workers; ++i) {
    servers.push_back(
        std::make_unique<proxy::Server>(workerConfig, registry, shared, static_cast<int>(i)));
    if (auto started = servers.back()->start(); !started) {
      logging::error("cannot start", {{"error", started.error()}});
      return 1;
    }
    if (i == 0) {
      // Port 0 picks a port once; the other workers bind that same port.
      auto ports = servers.front()->boundPorts();
      for (config::Listener& listener : workerConfig.listeners) {
        listener.listen.port = static_cast<std::uint16_t>(ports[listener.name]);
      }
    }
  }
  proxy::Server& server = *servers.front();
  if (std::string error = dropPrivileges(config.global.user); !error.empty()) {
    logging::error("cannot drop privileges", {{"error", error}});
    return 1;
  }
  logging::info("started", {{"version", POSTERN_VERSION},
                            {"config", path},
                            {"workers", std::to_string(workers)},
                            {"user", config.global.user.empty() ? "-" : config.global.user}});
  std::vector<std::thread> threads;
  for (unsigned i = 1; i < workers; ++i) {
    threads.emplace_back([worker = servers[i].get()] { worker->run(); });
  }
  server.run();
  for (std::thread& thread : threads) {
    thread.join();
  }
  servers.clear(); // each loop is closed here, and checked for handles left open
  if (proxy::Server::leakedHandles()) {
    return 70; // EX_SOFTWARE: a handle outlived its owner (STYLE #9)
  }
  logging::info("stopped");
  return 0;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string_view> args(argv + 1, argv + argc);
  if (!args.empty() && args[0] == "ctl") {
    return admin::runCtl({args.begin() + 1, args.end()});
  }
  if (args.size() == 1 && args[0] == "--version") {
    std::cout << "postern " << POSTERN_VERSION << '\n';
    return 0;
  }
  if (args.size() == 1 && args[0] == "--print-example-config") {
    std::cout << config::exampleConfig();
    return 0;
  }
  if (args.size() == 1 && (args[0] == "--help" || args[0] == "-h")) {
    std::cout << kUsage;
    return 0;
  }
  if (args.size() == 2 && args[0] == "--check-config") {
    auto loaded = loadChecked(std::string(args[1]));
    if (!loaded) {
      return loaded.error();
    }
    std::cout << args[1] << ": OK (" << loaded->listeners.size() << " listeners, "
              << loaded->backends.size() << " backends)\n";
    return 0;
  }
  if (args.size() == 2 && args[0] == "--config") {
    return run(std::string(args[1]));
  }
  if (args.empty()) {
    std::cerr << "postern: no configuration given. Start from the example:\n"
                 "  postern --print-example-config > postern.toml\n"
                 "  postern --check-config postern.toml\n"
                 "  postern --config postern.toml\n";
    return 2;
  }
  std::cerr << "postern: unrecognised arguments\n" << kUsage;
  return 2;
}
