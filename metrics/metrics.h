// What the proxy calls to count things; names and labels (SPEC §6) live in metrics.cpp's catalogue.
#pragma once

#include "metrics/labels.h"

#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <vector>

namespace prometheus {
class Counter;
} // namespace prometheus

namespace metrics {

enum class CloseReason {
  ClientClosed,
  BackendClosed,
  Timeout,
  ProtocolError,
  TlsError,
  BackendUnavailable,
  Shutdown,
  Kicked, // closed through the runtime API (SPEC §14)
};
inline constexpr int kCloseReasons = 8;

enum class RejectReason { MaxConnections, PerIpLimit, RateLimit, ProxyHeader, Draining };
inline constexpr int kRejectReasons = 5;

enum class StartTlsSide { Client, Backend };
enum class StartTlsResult { Ok, Refused, InjectionRejected, HandshakeFailed };
inline constexpr int kStartTlsResults = 4;

enum class AuthResult { Ok, Failed, RefusedPlaintext, Throttled };

enum class BackendError { Refused, Timeout, Tls, Greeting, Closed };
inline constexpr int kBackendErrors = 5;

const char* toString(CloseReason reason);
const char* toString(RejectReason reason);
const char* toString(BackendError reason);

class Registry;

// Per-listener series, resolved once so the data path does no label lookups.
class ListenerMetrics {
public:
  void accepted();
  void rejected(RejectReason reason);
  void closed(CloseReason reason, double durationSeconds);
  void bytesToBackend(std::uint64_t count);
  void bytesToClient(std::uint64_t count);
  // A finished client-side handshake: `version` as OpenSSL names it ("TLSv1.3").
  void tlsHandshakeOk(const std::string& version, double seconds, bool resumed);
  void tlsHandshakeFailed(double seconds);
  void startTls(StartTlsSide side, StartTlsResult result);
  // `mechanism` comes from a fixed set of labels (protocol::mechanismLabel).
  void auth(const char* mechanism, AuthResult result);

private:
  friend class Registry;
  struct Series;
  Series* series_ = nullptr;
  Registry* registry_ = nullptr;
};

// postern_routes_total{listener, route}: the sessions a listener sent to one pool (SPEC §13).
class RouteMetrics {
public:
  void chosen();

private:
  friend class Registry;
  struct Series;
  Series* series_ = nullptr;
};

// Per-backend-pool and per-server series.
class BackendMetrics {
public:
  void connectDuration(double seconds);

private:
  friend class Registry;
  struct Series;
  Series* series_ = nullptr;
};

class ServerMetrics {
public:
  void error(BackendError reason);
  void certificateExpiry(double secondsSinceEpoch);
  void selected();
  // One more (+1) or one fewer (-1) session on the server; workers add up.
  void activeChange(int delta);
  void up(bool isUp);
  void healthCheck(bool ok);
  // SPEC §14: what the runtime API set: postern_backend_admin_state{state="drained"|"disabled"}
  // is 1 for the state the server is in, 0 for the other (both 0 when enabled).
  void adminState(bool drained, bool disabled);

private:
  friend class Registry;
  struct Series;
  Series* series_ = nullptr;
};

// Owns every series and the HTTP exposer. Thread-safe: workers may share one registry.
class Registry {
public:
  explicit Registry(const std::string& version);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Serves /metrics on host:port (port 0 picks one). Returns the bound port.
  std::expected<int, std::string> startExposer(const std::string& hostPort);

  ListenerMetrics listener(const std::string& name, const std::string& protocol, int port,
                           const std::string& tls);
  // The series for sessions `listener` routes to the pool `route`.
  RouteMetrics route(const std::string& listener, const std::string& route);
  BackendMetrics backend(const std::string& name);
  // `tls`: the server is reached over TLS, so its certificate expiry is exported.
  ServerMetrics server(const std::string& backend, const std::string& server, bool tls);

  // The client-facing certificates now loaded; replaces the previous set (after a reload).
  struct Certificate {
    std::string subject;
    std::string keyType;
    double notAfter;
  };
  void setCertificates(const std::vector<Certificate>& certificates);
  void configReload(bool ok);

  // The postern_auth_total series of one listener, mechanism and result (resolved once).
  prometheus::Counter* authCounter(const std::string& listener, const char* mechanism,
                                   AuthResult result);

  // The text exposition, as /metrics serves it (for tests and diagnostics).
  std::string render() const;

private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

} // namespace metrics
