// The configuration as plain data: what config/load.cpp produces and everything else reads.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace config {

using Duration = std::chrono::milliseconds;

// The protocols, from the one list of them (config/protocols.def).
enum class Protocol {
#define POSTERN_PROTOCOL(id, name, row) id,
#include "config/protocols.def"
#undef POSTERN_PROTOCOL
};
// The protocols by the names the config gives them. (What postern does with a protocol is its
// folder under proxy/protocol/ and the row that folder builds.)
inline constexpr std::pair<const char*, Protocol> kProtocolNames[] = {
#define POSTERN_PROTOCOL(id, name, row) {name, Protocol::id},
#include "config/protocols.def"
#undef POSTERN_PROTOCOL
};
enum class TlsMode { None, StartTls, Implicit };
enum class Mode { Passthrough, Login };
enum class Balance { RoundRobin, LeastConn, SourceHash, UserHash };
enum class ProxyProtocol { Off, V1, V2 };
enum class LogLevel { Error, Warn, Info, Debug };
enum class LogFormat { Logfmt, Json };

const char* toString(Protocol protocol);
const char* toString(TlsMode mode);

// A 1-based position in the configuration file; line 0 means "not from the file".
struct SourceLocation {
  std::uint32_t line = 0;
  std::uint32_t column = 0;
};

// An IP literal and port, as written in `listen` keys ("0.0.0.0:143", "[::1]:993").
struct SocketAddress {
  std::string host; // without brackets
  std::uint16_t port = 0;
  bool ipv6 = false;
  std::string text() const; // "host:port" or "[host]:port"
};

// A backend server as written in `servers`: a host name or an IP literal, and a port.
struct ServerAddress {
  std::string host;
  std::uint16_t port = 0;
  std::string text() const;
};

// A network in CIDR notation, kept as bytes so matching needs no parsing.
struct Cidr {
  bool ipv6 = false;
  std::uint8_t bytes[16] = {};
  std::uint8_t prefix = 0;
  std::string text;
};

struct Limits {
  std::uint32_t max_line_length = 8192;
  Duration preauth_timeout = std::chrono::seconds(60);
  Duration idle_timeout = std::chrono::minutes(30);
  std::uint32_t per_ip_max_connections = 100;
  std::uint32_t per_ip_connect_rate = 50;
  std::uint32_t auth_failures_before_delay = 5;
  Duration auth_failure_window = std::chrono::minutes(10);
  Duration auth_max_delay = std::chrono::seconds(30);
  std::uint32_t auth_failures_before_block = 50;
  Duration auth_block = std::chrono::minutes(10);
};

struct Global {
  std::uint32_t workers = 1;
  std::string user;
  LogLevel log_level = LogLevel::Info;
  LogFormat log_format = LogFormat::Logfmt;
  std::uint32_t max_connections = 20000;
  Duration shutdown_grace = std::chrono::seconds(30);
};

struct Metrics {
  bool enabled = true;
  SocketAddress listen{"127.0.0.1", 9464, false};
};

// SPEC §14: the runtime API and status page. Off while `listen` is empty.
struct Admin {
  bool enabled = false;
  SocketAddress listen{"127.0.0.1", 9465, false};
  // The bearer token every request must carry; empty means none (then `listen` must be a
  // loopback address). From `token` or read from `token_file` (its first line).
  std::string token;
  std::string token_file; // resolved against the config file's folder
};

struct Certificate {
  std::string cert; // resolved against the config file's folder
  std::string key;
  std::string ocsp;
};

struct Tls {
  std::vector<Certificate> certificates;
  bool strict_sni = false;
  std::string min_version = "TLSv1.2";
  std::string ciphers;
  std::string ciphersuites;
  bool session_tickets = true;
  std::string client_ca;
};

// SPEC §13: a route sends a listener's sessions to another pool, by the TLS server name the
// client sent (`sni`) or by the domain of the user name (`domain`, login mode). First match wins.
struct Route {
  enum class Kind { Sni, Domain };
  Kind kind = Kind::Sni;
  std::string pattern; // lower case, A-labels: "mail.example.com" or "*.example.com"
  std::string backend;
};

// Whether `name` (any case) matches a route's `pattern`: equal, or for "*.example.com" any name
// with one or more labels before ".example.com" (never "example.com" itself).
bool routeMatches(std::string_view pattern, std::string_view name);
// Whether every name `later` matches is matched by `earlier` already (`later` is unreachable).
bool routeCovers(std::string_view earlier, std::string_view later);

struct Listener {
  std::string name;
  Protocol protocol = Protocol::Imap;
  SocketAddress listen;
  TlsMode tls = TlsMode::None;
  bool require_tls = false;
  Mode mode = Mode::Passthrough;
  bool allow_auth = true;
  std::string backend;       // the pool when no route matches
  std::vector<Route> routes; // SPEC §13, in order
  bool accept_proxy_protocol = false;
  std::vector<Cidr> trusted_proxies;
  Limits limits; // [limits] with this listener's own `limits` table applied
};

struct HealthCheck {
  Duration interval = std::chrono::seconds(5);
  Duration timeout = std::chrono::seconds(2);
  std::uint32_t rise = 2;
  std::uint32_t fall = 3;
};

struct Backend {
  std::string name;
  std::vector<ServerAddress> servers;
  Balance balance = Balance::RoundRobin;
  TlsMode tls = TlsMode::None;
  bool tls_verify = true;
  std::string ca_file;
  ProxyProtocol send_proxy_protocol = ProxyProtocol::Off;
  bool smtp_xclient = false;
  Duration connect_timeout = std::chrono::seconds(5);
  std::uint32_t retries = 2;
  Duration dns_refresh = std::chrono::seconds(30);
  HealthCheck health;
};

struct Config {
  std::string file; // as given on the command line
  Global global;
  Metrics metrics;
  Admin admin;
  Limits limits;
  Tls tls;
  std::vector<Listener> listeners;
  std::vector<Backend> backends;

  // Where each key path ("listener[2].tls") was written, so later checks (certificates, for
  // instance) can point at the file like the loader does.
  std::map<std::string, SourceLocation> locations;

  const Backend* findBackend(const std::string& name) const;
};

// One problem found in a configuration file, printed as `file:line:column: path: message`.
struct Diagnostic {
  std::string file;
  SourceLocation location;
  std::string path;
  std::string message;
  std::string text() const;
};

} // namespace config
