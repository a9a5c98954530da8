// Cross-checks between sections: references, duplicate addresses, TLS needs, files that must exist.
#include "config/load.h"

#include <pwd.h>
#include <unistd.h>

#include <map>
#include <set>

namespace config {

const char* toString(Protocol protocol) {
  for (const auto& [name, value] : kProtocolNames) {
    if (value == protocol) {
      return name;
    }
  }
  return "?";
}

const char* toString(TlsMode mode) {
  switch (mode) {
  case TlsMode::None:
    return "none";
  case TlsMode::StartTls:
    return "starttls";
  case TlsMode::Implicit:
    return "implicit";
  }
  return "?";
}

const Backend* Config::findBackend(const std::string& name) const {
  for (const Backend& backend : backends) {
    if (backend.name == name) {
      return &backend;
    }
  }
  return nullptr;
}

std::string Diagnostic::text() const {
  std::string out = file;
  if (location.line != 0) {
    out += ":" + std::to_string(location.line) + ":" + std::to_string(location.column);
  }
  out += ": ";
  if (!path.empty()) {
    out += path + ": ";
  }
  return out + message;
}

Diagnostic diagnosticAt(const Config& config, const std::string& path, std::string message) {
  std::string anchor = path;
  while (!anchor.empty()) {
    if (auto found = config.locations.find(anchor); found != config.locations.end()) {
      return {config.file, found->second, path, std::move(message)};
    }
    auto cut = anchor.find_last_of(".[");
    anchor = cut == std::string::npos ? "" : anchor.substr(0, cut);
  }
  return {config.file, {}, path, std::move(message)};
}

namespace {

bool isWildcard(const SocketAddress& address) {
  return address.host == "0.0.0.0" || address.host == "::";
}

bool isLoopback(const SocketAddress& address) {
  return address.ipv6 ? address.host == "::1" : address.host.starts_with("127.");
}

// Two listening sockets that cannot both be bound: the same address, or a wildcard and any
// address of the same family on the same port. ([::] is bound IPv6-only, so it does not clash
// with 0.0.0.0.)
bool clash(const SocketAddress& a, const SocketAddress& b) {
  if (a.port == 0 || b.port == 0 || a.port != b.port || a.ipv6 != b.ipv6) {
    return false;
  }
  return a.host == b.host || isWildcard(a) || isWildcard(b);
}

bool isSafeName(const std::string& name) {
  if (name.empty() || name.size() > 64) {
    return false;
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) {
      return false;
    }
  }
  return true;
}

void checkReadable(const Config& config, const std::string& file, const std::string& path,
                   std::vector<Diagnostic>& diagnostics) {
  if (!file.empty() && access(file.c_str(), R_OK) != 0) {
    diagnostics.push_back(diagnosticAt(config, path, "cannot read \"" + file + "\""));
  }
}

} // namespace

// SPEC §13: routes that can never match, or that match what an earlier one took, are mistakes.
template <typename Error, typename CheckPool>
void checkRoutes(const Listener& listener, const std::string& prefix, Error& error,
                 CheckPool& checkPool) {
  for (std::size_t i = 0; i < listener.routes.size(); ++i) {
    const Route& route = listener.routes[i];
    std::string path = prefix + ".routes[" + std::to_string(i) + "]";
    if (route.pattern.empty()) {
      continue; // already reported
    }
    bool sni = route.kind == Route::Kind::Sni;
    const char* key = sni ? ".sni" : ".domain";
    if (sni && listener.tls == TlsMode::None) {
      error(path + key, "an sni route needs TLS on the listener (tls = \"implicit\" or "
                        "\"starttls\"): without it no client sends a server name");
      continue;
    }
    if (sni && listener.tls == TlsMode::StartTls && listener.mode != Mode::Login) {
      error(path + key, "an sni route on a STARTTLS listener needs mode = \"login\": in "
                        "passthrough the backend is connected before the client starts TLS "
                        "and names the server");
      continue;
    }
    if (!sni && listener.mode != Mode::Login) {
      error(path + key, "a domain route needs mode = \"login\" (a passthrough listener never "
                        "learns the user)");
      continue;
    }
    for (std::size_t j = 0; j < i; ++j) {
      const Route& earlier = listener.routes[j];
      if (earlier.kind != route.kind || earlier.pattern.empty() ||
          !routeCovers(earlier.pattern, route.pattern)) {
        continue;
      }
      error(path + key,
            earlier.pattern == route.pattern
                ? "\"" + route.pattern + "\" is routed already by routes[" + std::to_string(j) + "]"
                : "unreachable: every name it matches goes to routes[" + std::to_string(j) +
                      "] (\"" + earlier.pattern + "\") first");
      break;
    }
    if (!route.backend.empty()) {
      checkPool(path + ".backend", route.backend);
    }
  }
}

void validate(const Config& config, std::vector<Diagnostic>& diagnostics) {
  auto error = [&](const std::string& path, std::string message) {
    diagnostics.push_back(diagnosticAt(config, path, std::move(message)));
  };

  std::map<std::string, std::size_t> backendIndex;
  for (std::size_t i = 0; i < config.backends.size(); ++i) {
    const Backend& backend = config.backends[i];
    std::string prefix = "backend[" + std::to_string(i) + "]";
    if (backend.name.empty()) {
      continue; // already reported as missing
    }
    if (!isSafeName(backend.name)) {
      error(prefix + ".name", "names use letters, digits, '-', '_' and '.' (at most 64)");
    }
    if (!backendIndex.emplace(backend.name, i).second) {
      error(prefix + ".name", "backend \"" + backend.name + "\" is already defined as backend[" +
                                  std::to_string(backendIndex[backend.name]) + "]");
    }
    if (backend.health.timeout > backend.health.interval) {
      error(prefix + ".health.timeout", "the health check timeout must not exceed its interval");
    }
    checkReadable(config, backend.ca_file, prefix + ".ca_file", diagnostics);
  }

  std::map<std::string, std::size_t> listenerIndex;
  bool anyTlsListener = false;
  for (std::size_t i = 0; i < config.listeners.size(); ++i) {
    const Listener& listener = config.listeners[i];
    std::string prefix = "listener[" + std::to_string(i) + "]";
    if (!listener.name.empty()) {
      if (!isSafeName(listener.name)) {
        error(prefix + ".name", "names use letters, digits, '-', '_' and '.' (at most 64)");
      }
      if (!listenerIndex.emplace(listener.name, i).second) {
        error(prefix + ".name", "listener \"" + listener.name +
                                    "\" is already defined as listener[" +
                                    std::to_string(listenerIndex[listener.name]) + "]");
      }
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (clash(listener.listen, config.listeners[j].listen)) {
        error(prefix + ".listen", "address " + listener.listen.text() +
                                      " is already used by listener[" + std::to_string(j) + "]");
      }
    }
    if (config.metrics.enabled && clash(listener.listen, config.metrics.listen)) {
      error(prefix + ".listen",
            "address " + listener.listen.text() + " is already used by metrics.listen");
    }
    if (config.admin.enabled && clash(listener.listen, config.admin.listen)) {
      error(prefix + ".listen",
            "address " + listener.listen.text() + " is already used by admin.listen");
    }
    anyTlsListener = anyTlsListener || listener.tls != TlsMode::None;
    if (listener.backend.empty()) {
      continue; // already reported as missing
    }
    // The default pool and every route's pool must exist and suit the listener.
    auto checkPool = [&](const std::string& path, const std::string& name) {
      const Backend* backend = config.findBackend(name);
      if (backend == nullptr) {
        error(path, "no [[backend]] is named \"" + name + "\"");
        return;
      }
      if (backend->balance == Balance::UserHash && listener.mode != Mode::Login) {
        error(path, "backend \"" + backend->name +
                        "\" balances by user_hash, which needs mode = \"login\" "
                        "(a passthrough listener never learns the user)");
      }
      if (backend->smtp_xclient && listener.protocol != Protocol::Smtp) {
        error(path, "backend \"" + backend->name +
                        "\" sets smtp_xclient, but this listener speaks " +
                        toString(listener.protocol));
      }
    };
    checkPool(prefix + ".backend", listener.backend);
    checkRoutes(listener, prefix, error, checkPool);
  }

  if (anyTlsListener && config.tls.certificates.empty()) {
    error("tls.certificates", "TLS listeners need at least one certificate in [tls] certificates");
  }
  for (std::size_t i = 0; i < config.tls.certificates.size(); ++i) {
    checkReadable(config, config.tls.certificates[i].ocsp,
                  "tls.certificates[" + std::to_string(i) + "].ocsp", diagnostics);
  }

  // SPEC §14: without a token the runtime API answers anyone who reaches it, so only loopback.
  if (config.admin.enabled && config.admin.token.empty() && !isLoopback(config.admin.listen)) {
    error("admin.listen", "a non-loopback admin.listen needs a token (token or token_file)");
  }
  if (config.admin.enabled && config.metrics.enabled &&
      clash(config.admin.listen, config.metrics.listen)) {
    error("admin.listen",
          "address " + config.admin.listen.text() + " is already used by metrics.listen");
  }

  if (!config.global.user.empty() && getpwnam(config.global.user.c_str()) == nullptr) {
    error("global.user", "no such user \"" + config.global.user + "\"");
  }
}

} // namespace config
