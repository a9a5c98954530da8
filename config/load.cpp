// The TOML loader: the only toml++ user. Walks the schema of SPEC §3, checking type and range of
// every key, and collects every problem instead of stopping at the first.
#include "config/load.h"
#include "config/parse.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <span>
#include <sstream>
#include <utility>

namespace config {

namespace {

SourceLocation locationOf(const toml::source_region& region) {
  return {static_cast<std::uint32_t>(region.begin.line),
          static_cast<std::uint32_t>(region.begin.column)};
}

const char* typeName(const toml::node& node) {
  switch (node.type()) {
  case toml::node_type::string:
    return "a string";
  case toml::node_type::integer:
    return "an integer";
  case toml::node_type::floating_point:
    return "a float";
  case toml::node_type::boolean:
    return "a boolean";
  case toml::node_type::array:
    return "an array";
  case toml::node_type::table:
    return "a table";
  default:
    return "a date or time";
  }
}

// Shared state of one load: the config being filled, where it came from, and what went wrong.
struct Loader {
  Config& config;
  std::filesystem::path folder;
  std::vector<Diagnostic>& diagnostics;

  void error(SourceLocation location, const std::string& path, std::string message) {
    diagnostics.push_back({config.file, location, path, std::move(message)});
  }

  std::string resolvePath(const std::string& path) const {
    if (path.empty() || std::filesystem::path(path).is_absolute()) {
      return path;
    }
    return (folder / path).lexically_normal().string();
  }
};

// Reads the keys of one table; whatever it was not asked for is an unknown key.
class TableReader {
public:
  TableReader(Loader& loader, const toml::table& table, std::string prefix)
      : loader_(loader), table_(table), prefix_(std::move(prefix)) {}

  std::string path(std::string_view key) const {
    return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key);
  }

  SourceLocation keyLocation(std::string_view key) const {
    for (auto&& [name, node] : table_) {
      if (name.str() == key) {
        return locationOf(name.source());
      }
    }
    return locationOf(table_.source());
  }

  // The node under `key`, or nullptr; remembers the key as known and records its position.
  const toml::node* get(std::string_view key) {
    known_.insert(std::string(key));
    const toml::node* node = table_.get(key);
    if (node != nullptr) {
      loader_.config.locations[path(key)] = keyLocation(key);
    }
    return node;
  }

  bool has(std::string_view key) const { return table_.contains(key); }

  void typeError(std::string_view key, const toml::node& node, const std::string& expected) {
    loader_.error(keyLocation(key), path(key),
                  std::string("expected ") + expected + ", got " + typeName(node));
  }

  void missing(std::string_view key) {
    loader_.error(locationOf(table_.source()), path(key), "missing required key");
  }

  bool string(std::string_view key, std::string& out, bool required = false) {
    const toml::node* node = get(key);
    if (node == nullptr) {
      if (required) {
        missing(key);
      }
      return false;
    }
    if (!node->is_string()) {
      typeError(key, *node, "a string");
      return false;
    }
    out = node->as_string()->get();
    return true;
  }

  bool boolean(std::string_view key, bool& out) {
    const toml::node* node = get(key);
    if (node == nullptr) {
      return false;
    }
    if (!node->is_boolean()) {
      typeError(key, *node, "a boolean");
      return false;
    }
    out = node->as_boolean()->get();
    return true;
  }

  bool integer(std::string_view key, std::uint32_t& out, std::int64_t min, std::int64_t max) {
    const toml::node* node = get(key);
    if (node == nullptr) {
      return false;
    }
    if (!node->is_integer()) {
      typeError(key, *node, "an integer");
      return false;
    }
    std::int64_t value = node->as_integer()->get();
    if (value < min || value > max) {
      loader_.error(keyLocation(key), path(key),
                    "expected an integer from " + std::to_string(min) + " to " +
                        std::to_string(max) + ", got " + std::to_string(value));
      return false;
    }
    out = static_cast<std::uint32_t>(value);
    return true;
  }

  bool duration(std::string_view key, Duration& out, Duration min, Duration max) {
    std::string text;
    if (!string(key, text)) {
      return false;
    }
    auto parsed = parseDuration(text);
    if (!parsed) {
      loader_.error(keyLocation(key), path(key), parsed.error());
      return false;
    }
    if (*parsed < min || *parsed > max) {
      loader_.error(keyLocation(key), path(key),
                    "expected a duration from " + formatDuration(min) + " to " +
                        formatDuration(max) + ", got \"" + text + "\"");
      return false;
    }
    out = *parsed;
    return true;
  }

  template <typename Enum>
  bool choice(std::string_view key, Enum& out,
              std::initializer_list<std::pair<const char*, Enum>> choices) {
    return choice(key, out, std::span<const std::pair<const char*, Enum>>(choices));
  }

  template <typename Enum>
  bool choice(std::string_view key, Enum& out,
              std::span<const std::pair<const char*, Enum>> choices) {
    std::string text;
    if (!string(key, text)) {
      return false;
    }
    std::string names;
    for (auto& [name, value] : choices) {
      if (text == name) {
        out = value;
        return true;
      }
      names += names.empty() ? name : std::string("|") + name;
    }
    loader_.error(keyLocation(key), path(key),
                  "expected one of " + names + ", got \"" + text + "\"");
    return false;
  }

  // An array of strings; each element comes back with its position for element-level errors.
  std::vector<std::pair<std::string, SourceLocation>> strings(std::string_view key) {
    std::vector<std::pair<std::string, SourceLocation>> out;
    const toml::node* node = get(key);
    if (node == nullptr) {
      return out;
    }
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      typeError(key, *node, "an array of strings");
      return out;
    }
    for (std::size_t i = 0; i < array->size(); ++i) {
      const toml::node& element = *array->get(i);
      std::string elementPath = path(key) + "[" + std::to_string(i) + "]";
      if (!element.is_string()) {
        loader_.error(locationOf(element.source()), elementPath,
                      std::string("expected a string, got ") + typeName(element));
        continue;
      }
      loader_.config.locations[elementPath] = locationOf(element.source());
      out.emplace_back(element.as_string()->get(), locationOf(element.source()));
    }
    return out;
  }

  const toml::table* table(std::string_view key) {
    const toml::node* node = get(key);
    if (node == nullptr) {
      return nullptr;
    }
    if (!node->is_table()) {
      typeError(key, *node, "a table");
      return nullptr;
    }
    return node->as_table();
  }

  // Every key nobody asked for is an error: a typo must not silently fall back to a default.
  void finish() {
    for (auto&& [name, node] : table_) {
      if (!known_.contains(std::string(name.str()))) {
        loader_.error(locationOf(name.source()), path(name.str()), "unknown key");
      }
    }
  }

private:
  Loader& loader_;
  const toml::table& table_;
  std::string prefix_;
  std::set<std::string> known_;
};

const std::initializer_list<std::pair<const char*, TlsMode>> kTlsModes = {
    {"none", TlsMode::None}, {"starttls", TlsMode::StartTls}, {"implicit", TlsMode::Implicit}};

void readLimits(TableReader& reader, Limits& limits) {
  using namespace std::chrono_literals;
  reader.integer("max_line_length", limits.max_line_length, 512, 1 << 20);
  reader.duration("preauth_timeout", limits.preauth_timeout, 1s, 24h);
  reader.duration("idle_timeout", limits.idle_timeout, 1s, 168h);
  reader.integer("per_ip_max_connections", limits.per_ip_max_connections, 1, 1'000'000);
  reader.integer("per_ip_connect_rate", limits.per_ip_connect_rate, 1, 1'000'000);
  reader.integer("auth_failures_before_delay", limits.auth_failures_before_delay, 1, 100'000);
  reader.duration("auth_failure_window", limits.auth_failure_window, 1s, 168h);
  reader.duration("auth_max_delay", limits.auth_max_delay, 0ms, 1h);
  reader.integer("auth_failures_before_block", limits.auth_failures_before_block, 1, 1'000'000);
  reader.duration("auth_block", limits.auth_block, 1s, 168h);
  reader.finish();
}

void readGlobal(Loader& loader, const toml::table& table) {
  using namespace std::chrono_literals;
  TableReader reader(loader, table, "global");
  Global& global = loader.config.global;
  reader.integer("workers", global.workers, 0, 256);
  reader.string("user", global.user);
  reader.choice("log_level", global.log_level,
                {{"error", LogLevel::Error},
                 {"warn", LogLevel::Warn},
                 {"info", LogLevel::Info},
                 {"debug", LogLevel::Debug}});
  reader.choice("log_format", global.log_format,
                {{"logfmt", LogFormat::Logfmt}, {"json", LogFormat::Json}});
  reader.integer("max_connections", global.max_connections, 1, 1'000'000);
  reader.duration("shutdown_grace", global.shutdown_grace, 0ms, 24h);
  reader.finish();
}

void readMetrics(Loader& loader, const toml::table& table) {
  TableReader reader(loader, table, "metrics");
  std::string listen;
  if (reader.string("listen", listen)) {
    if (listen.empty()) {
      loader.config.metrics.enabled = false;
    } else if (auto address = parseSocketAddress(listen)) {
      loader.config.metrics.listen = *address;
    } else {
      loader.error(reader.keyLocation("listen"), "metrics.listen", address.error());
    }
  }
  reader.finish();
}

void readAdmin(Loader& loader, const toml::table& table) {
  TableReader reader(loader, table, "admin");
  Admin& admin = loader.config.admin;
  std::string listen;
  if (reader.string("listen", listen) && !listen.empty()) {
    if (auto address = parseSocketAddress(listen)) {
      admin.enabled = true;
      admin.listen = *address;
    } else {
      loader.error(reader.keyLocation("listen"), "admin.listen", address.error());
    }
  }
  reader.string("token", admin.token);
  if (reader.string("token_file", admin.token_file) && !admin.token_file.empty()) {
    if (!admin.token.empty()) {
      loader.error(reader.keyLocation("token_file"), "admin.token_file",
                   "set either token or token_file, not both");
    } else {
      admin.token_file = loader.resolvePath(admin.token_file);
      std::ifstream in(admin.token_file);
      std::getline(in, admin.token);
      if (!in && admin.token.empty()) {
        loader.error(reader.keyLocation("token_file"), "admin.token_file",
                     "cannot read \"" + admin.token_file + "\"");
      } else if (admin.token.empty()) {
        loader.error(reader.keyLocation("token_file"), "admin.token_file",
                     "\"" + admin.token_file + "\" starts with an empty line");
      }
    }
  }
  auto printable = [](unsigned char c) { return c > 0x20 && c < 0x7f; };
  if (!std::all_of(admin.token.begin(), admin.token.end(), printable)) {
    loader.error(reader.keyLocation(admin.token_file.empty() ? "token" : "token_file"),
                 "admin.token", "the token must be printable ASCII without spaces");
  }
  reader.finish();
}

void readTls(Loader& loader, const toml::table& table) {
  TableReader reader(loader, table, "tls");
  Tls& tls = loader.config.tls;
  if (const toml::node* node = reader.get("certificates")) {
    const toml::array* array = node->as_array();
    if (array == nullptr) {
      reader.typeError("certificates", *node, "an array of tables");
    } else {
      for (std::size_t i = 0; i < array->size(); ++i) {
        const toml::node& element = *array->get(i);
        std::string prefix = "tls.certificates[" + std::to_string(i) + "]";
        loader.config.locations[prefix] = locationOf(element.source());
        if (!element.is_table()) {
          loader.error(locationOf(element.source()), prefix,
                       std::string("expected a table {cert, key, ocsp}, got ") + typeName(element));
          continue;
        }
        TableReader entry(loader, *element.as_table(), prefix);
        Certificate certificate;
        entry.string("cert", certificate.cert, true);
        entry.string("key", certificate.key, true);
        entry.string("ocsp", certificate.ocsp);
        entry.finish();
        certificate.cert = loader.resolvePath(certificate.cert);
        certificate.key = loader.resolvePath(certificate.key);
        certificate.ocsp = loader.resolvePath(certificate.ocsp);
        tls.certificates.push_back(std::move(certificate));
      }
    }
  }
  reader.boolean("strict_sni", tls.strict_sni);
  std::string minVersion;
  if (reader.string("min_version", minVersion)) {
    if (minVersion == "TLSv1.2" || minVersion == "TLSv1.3") {
      tls.min_version = minVersion;
    } else {
      loader.error(reader.keyLocation("min_version"), "tls.min_version",
                   "expected one of TLSv1.2|TLSv1.3, got \"" + minVersion + "\"");
    }
  }
  reader.string("ciphers", tls.ciphers);
  reader.string("ciphersuites", tls.ciphersuites);
  reader.boolean("session_tickets", tls.session_tickets);
  if (reader.string("client_ca", tls.client_ca)) {
    tls.client_ca = loader.resolvePath(tls.client_ca);
  }
  reader.finish();
}

void readBackend(Loader& loader, const toml::table& table, const std::string& prefix) {
  using namespace std::chrono_literals;
  TableReader reader(loader, table, prefix);
  Backend backend;
  reader.string("name", backend.name, true);
  if (reader.has("servers")) {
    auto servers = reader.strings("servers");
    for (std::size_t i = 0; i < servers.size(); ++i) {
      auto& [text, location] = servers[i];
      if (auto address = parseServerAddress(text)) {
        backend.servers.push_back(*address);
      } else {
        loader.error(location, prefix + ".servers[" + std::to_string(i) + "]", address.error());
      }
    }
    if (servers.empty() && reader.get("servers")->is_array()) {
      loader.error(reader.keyLocation("servers"), prefix + ".servers",
                   "a backend needs at least one server");
    }
  } else {
    reader.missing("servers");
  }
  reader.choice("balance", backend.balance,
                {{"round_robin", Balance::RoundRobin},
                 {"least_conn", Balance::LeastConn},
                 {"source_hash", Balance::SourceHash},
                 {"user_hash", Balance::UserHash}});
  reader.choice("tls", backend.tls, kTlsModes);
  reader.boolean("tls_verify", backend.tls_verify);
  if (reader.string("ca_file", backend.ca_file)) {
    backend.ca_file = loader.resolvePath(backend.ca_file);
  }
  reader.choice(
      "send_proxy_protocol", backend.send_proxy_protocol,
      {{"off", ProxyProtocol::Off}, {"v1", ProxyProtocol::V1}, {"v2", ProxyProtocol::V2}});
  reader.boolean("smtp_xclient", backend.smtp_xclient);
  reader.duration("connect_timeout", backend.connect_timeout, 100ms, 10min);
  reader.integer("retries", backend.retries, 0, 32);
  reader.duration("dns_refresh", backend.dns_refresh, 1s, 24h);
  if (const toml::table* health = reader.table("health")) {
    TableReader check(loader, *health, prefix + ".health");
    check.duration("interval", backend.health.interval, 100ms, 1h);
    check.duration("timeout", backend.health.timeout, 100ms, 1h);
    check.integer("rise", backend.health.rise, 1, 100);
    check.integer("fall", backend.health.fall, 1, 100);
    check.finish();
  }
  reader.finish();
  loader.config.backends.push_back(std::move(backend));
}

// A route's name as the config writes it: lower case, A-labels (IDN in "xn--" form), optionally
// "*." in front; an error message when it is no such name.
std::expected<std::string, std::string> routePattern(std::string_view text) {
  std::string pattern;
  for (char c : text) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      return std::unexpected("write an internationalised name in its A-label form (xn--...)");
    }
    pattern.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
  }
  if (pattern.ends_with('.')) {
    pattern.pop_back();
  }
  std::string_view name = pattern;
  if (name.starts_with("*.")) {
    name.remove_prefix(2);
  }
  bool valid = !name.empty() && name.size() <= 253;
  std::size_t label = 0;
  for (char c : name) {
    if (c == '.') {
      valid = valid && label > 0;
      label = 0;
      continue;
    }
    valid = valid && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
    ++label;
  }
  if (!valid || label == 0 || label > 63) {
    return std::unexpected("expected a host or domain name, or \"*.\" and one");
  }
  return pattern;
}

// `routes = [{ sni = "...", backend = "..." }, { domain = "...", backend = "..." }]`.
void readRoutes(Loader& loader, TableReader& reader, const std::string& prefix,
                std::vector<Route>& routes) {
  const toml::node* node = reader.get("routes");
  if (node == nullptr) {
    return;
  }
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    reader.typeError("routes", *node, "an array of tables");
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    std::string path = prefix + ".routes[" + std::to_string(i) + "]";
    const toml::table* table = (*array)[i].as_table();
    if (table == nullptr) {
      loader.error(locationOf((*array)[i].source()), path,
                   "expected a table { sni = \"...\", backend = \"...\" }");
      continue;
    }
    TableReader routeReader(loader, *table, path);
    Route route;
    std::string sni;
    std::string domain;
    bool hasSni = routeReader.string("sni", sni);
    bool hasDomain = routeReader.string("domain", domain);
    routeReader.string("backend", route.backend, true);
    if (hasSni == hasDomain) {
      loader.error(locationOf(table->source()), path,
                   "a route matches either `sni` or `domain` (exactly one of them)");
    } else {
      route.kind = hasSni ? Route::Kind::Sni : Route::Kind::Domain;
      const char* key = hasSni ? "sni" : "domain";
      if (auto pattern = routePattern(hasSni ? sni : domain)) {
        route.pattern = std::move(*pattern);
      } else {
        loader.error(routeReader.keyLocation(key), path + "." + key, pattern.error());
      }
    }
    routeReader.finish();
    routes.push_back(std::move(route));
  }
}

void readListener(Loader& loader, const toml::table& table, const std::string& prefix) {
  TableReader reader(loader, table, prefix);
  Listener listener;
  listener.limits = loader.config.limits;
  reader.string("name", listener.name, true);
  if (!reader.has("protocol")) {
    reader.missing("protocol");
  }
  reader.choice("protocol", listener.protocol,
                std::span<const std::pair<const char*, Protocol>>(kProtocolNames));
  std::string listen;
  if (reader.string("listen", listen, true)) {
    if (auto address = parseSocketAddress(listen)) {
      listener.listen = *address;
    } else {
      loader.error(reader.keyLocation("listen"), prefix + ".listen", address.error());
    }
  }
  reader.choice("tls", listener.tls, kTlsModes);
  listener.require_tls = listener.tls == TlsMode::StartTls;
  if (reader.boolean("require_tls", listener.require_tls) && listener.require_tls &&
      listener.tls == TlsMode::None) {
    loader.error(reader.keyLocation("require_tls"), prefix + ".require_tls",
                 "require_tls = true needs tls = \"starttls\" or \"implicit\"");
  }
  reader.choice("mode", listener.mode,
                {{"passthrough", Mode::Passthrough}, {"login", Mode::Login}});
  reader.boolean("allow_auth", listener.allow_auth);
  reader.string("backend", listener.backend, true);
  readRoutes(loader, reader, prefix, listener.routes);
  reader.boolean("accept_proxy_protocol", listener.accept_proxy_protocol);
  auto proxies = reader.strings("trusted_proxies");
  for (std::size_t i = 0; i < proxies.size(); ++i) {
    if (auto cidr = parseCidr(proxies[i].first)) {
      listener.trusted_proxies.push_back(*cidr);
    } else {
      loader.error(proxies[i].second, prefix + ".trusted_proxies[" + std::to_string(i) + "]",
                   cidr.error());
    }
  }
  // SPEC §3: the list is required, and an empty one would trust nobody (every header refused)
  // or, read carelessly, everybody; both are configuration mistakes.
  if (listener.accept_proxy_protocol && proxies.empty()) {
    loader.error(reader.keyLocation("accept_proxy_protocol"), prefix + ".trusted_proxies",
                 "accept_proxy_protocol = true needs trusted_proxies (the CIDRs allowed to send "
                 "the header)");
  }
  if (const toml::table* limits = reader.table("limits")) {
    TableReader limitsReader(loader, *limits, prefix + ".limits");
    readLimits(limitsReader, listener.limits);
  }
  reader.finish();
  loader.config.listeners.push_back(std::move(listener));
}

// `[[listener]]` and `[[backend]]`: arrays of tables, each element read by `read`.
template <typename Read>
void readArrayOfTables(Loader& loader, TableReader& root, std::string_view key, Read read) {
  const toml::node* node = root.get(key);
  if (node == nullptr) {
    return;
  }
  const toml::array* array = node->as_array();
  if (array == nullptr) {
    root.typeError(key, *node, "an array of tables ([[" + std::string(key) + "]])");
    return;
  }
  for (std::size_t i = 0; i < array->size(); ++i) {
    const toml::node& element = *array->get(i);
    std::string prefix = std::string(key) + "[" + std::to_string(i) + "]";
    loader.config.locations[prefix] = locationOf(element.source());
    if (!element.is_table()) {
      loader.error(locationOf(element.source()), prefix,
                   std::string("expected a table, got ") + typeName(element));
      continue;
    }
    read(loader, *element.as_table(), prefix);
  }
}

std::expected<Config, std::vector<Diagnostic>> loadTable(const toml::table& root,
                                                         const std::string& file) {
  Config config;
  config.file = file;
  std::vector<Diagnostic> diagnostics;
  Loader loader{config, std::filesystem::path(file).parent_path(), diagnostics};
  TableReader reader(loader, root, "");

  if (const toml::table* table = reader.table("global")) {
    readGlobal(loader, *table);
  }
  if (const toml::table* table = reader.table("metrics")) {
    readMetrics(loader, *table);
  }
  if (const toml::table* table = reader.table("admin")) {
    readAdmin(loader, *table);
  }
  if (const toml::table* table = reader.table("limits")) {
    TableReader limits(loader, *table, "limits");
    readLimits(limits, config.limits);
  }
  if (const toml::table* table = reader.table("tls")) {
    readTls(loader, *table);
  }
  readArrayOfTables(loader, reader, "backend", readBackend);
  readArrayOfTables(loader, reader, "listener", readListener);
  reader.finish();

  if (config.listeners.empty() && !reader.has("listener")) {
    loader.error({1, 1}, "listener", "at least one [[listener]] is needed");
  }
  validate(config, diagnostics);
  if (!diagnostics.empty()) {
    std::stable_sort(diagnostics.begin(), diagnostics.end(), [](auto& a, auto& b) {
      return std::pair(a.location.line, a.location.column) <
             std::pair(b.location.line, b.location.column);
    });
    return std::unexpected(std::move(diagnostics));
  }
  return config;
}

Diagnostic parseErrorDiagnostic(const toml::parse_error& error, const std::string& file) {
  return {file, locationOf(error.source()), "", "TOML syntax: " + std::string(error.description())};
}

} // namespace

std::expected<Config, std::vector<Diagnostic>> loadString(std::string_view text,
                                                          const std::string& file) {
  try {
    toml::table root = toml::parse(text, file);
    return loadTable(root, file);
  } catch (const toml::parse_error& error) {
    return std::unexpected(std::vector<Diagnostic>{parseErrorDiagnostic(error, file)});
  }
}

std::expected<Config, std::vector<Diagnostic>> loadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::unexpected(std::vector<Diagnostic>{
        {path, {}, "", "cannot read the file: " + std::string(std::strerror(errno))}});
  }
  std::ostringstream text;
  text << in.rdbuf();
  return loadString(text.str(), path);
}

} // namespace config
