// The metric catalogue (every name, help text and label of SPEC §6) and the prometheus-cpp glue.
#include "metrics/metrics.h"

#include <atomic>
#include <cstring>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <array>
#include <deque>
#include <mutex>

namespace metrics {

const char* toString(CloseReason reason) {
  static constexpr std::array<const char*, kCloseReasons> names = {
      "client_closed", "backend_closed",      "timeout",  "protocol_error",
      "tls_error",     "backend_unavailable", "shutdown", "kicked"};
  return names[static_cast<int>(reason)];
}

const char* toString(RejectReason reason) {
  static constexpr std::array<const char*, kRejectReasons> names = {
      "max_connections", "per_ip_limit", "rate_limit", "proxy_header", "draining"};
  return names[static_cast<int>(reason)];
}

const char* toString(BackendError reason) {
  static constexpr std::array<const char*, kBackendErrors> names = {"refused", "timeout", "tls",
                                                                    "greeting", "closed"};
  return names[static_cast<int>(reason)];
}

struct RouteMetrics::Series {
  prometheus::Counter* chosen = nullptr;
};

struct ListenerMetrics::Series {
  prometheus::Counter* accepted;
  prometheus::Gauge* active;
  std::array<prometheus::Counter*, kRejectReasons> rejected;
  std::array<prometheus::Counter*, kCloseReasons> closed;
  prometheus::Histogram* duration;
  prometheus::Counter* bytesToBackend;
  prometheus::Counter* bytesToClient;
  prometheus::Counter* handshakesOk12;
  prometheus::Counter* handshakesOk13;
  prometheus::Counter* handshakesFailed;
  prometheus::Histogram* handshakeDuration;
  prometheus::Counter* resumed;
  std::array<std::array<prometheus::Counter*, kStartTlsResults>, 2> startTls;
  // postern_auth_total by mechanism and result: resolved on first use (so a listener exports
  // only the series it has counted), then an array lookup per event.
  std::array<std::array<std::atomic<prometheus::Counter*>, 4>, kMechanismCount> auth{};
  std::string name;
};

struct BackendMetrics::Series {
  prometheus::Histogram* connectDuration;
};

struct ServerMetrics::Series {
  std::array<prometheus::Counter*, kBackendErrors> errors;
  prometheus::Gauge* certificateExpiry;
  prometheus::Counter* selected;
  prometheus::Gauge* active;
  prometheus::Gauge* up;
  prometheus::Gauge* drained;
  prometheus::Gauge* disabled;
  prometheus::Counter* checksOk;
  prometheus::Counter* checksFailed;
};

void ListenerMetrics::accepted() {
  series_->accepted->Increment();
  series_->active->Increment();
}

void ListenerMetrics::rejected(RejectReason reason) {
  series_->rejected[static_cast<int>(reason)]->Increment();
}

void ListenerMetrics::closed(CloseReason reason, double durationSeconds) {
  series_->active->Decrement();
  series_->closed[static_cast<int>(reason)]->Increment();
  series_->duration->Observe(durationSeconds);
}

void ListenerMetrics::bytesToBackend(std::uint64_t count) {
  series_->bytesToBackend->Increment(static_cast<double>(count));
}

void ListenerMetrics::bytesToClient(std::uint64_t count) {
  series_->bytesToClient->Increment(static_cast<double>(count));
}

void ListenerMetrics::tlsHandshakeOk(const std::string& version, double seconds, bool resumed) {
  (version == "TLSv1.3" ? series_->handshakesOk13 : series_->handshakesOk12)->Increment();
  series_->handshakeDuration->Observe(seconds);
  if (resumed) {
    series_->resumed->Increment();
  }
}

void ListenerMetrics::tlsHandshakeFailed(double seconds) {
  series_->handshakesFailed->Increment();
  series_->handshakeDuration->Observe(seconds);
}

void ListenerMetrics::startTls(StartTlsSide side, StartTlsResult result) {
  series_->startTls[static_cast<int>(side)][static_cast<int>(result)]->Increment();
}

void ListenerMetrics::auth(const char* mechanism, AuthResult result) {
  std::size_t index = kMechanismCount - 1; // "other"
  for (std::size_t i = 0; i < kMechanismCount; ++i) {
    if (std::strcmp(kMechanismLabels[i], mechanism) == 0) {
      index = i;
      break;
    }
  }
  std::atomic<prometheus::Counter*>& slot = series_->auth[index][static_cast<int>(result)];
  prometheus::Counter* counter = slot.load(std::memory_order_acquire);
  if (counter == nullptr) {
    counter = registry_->authCounter(series_->name, kMechanismLabels[index], result);
    slot.store(counter, std::memory_order_release);
  }
  counter->Increment();
}

void ServerMetrics::certificateExpiry(double secondsSinceEpoch) {
  if (series_->certificateExpiry != nullptr) {
    series_->certificateExpiry->Set(secondsSinceEpoch);
  }
}

void ServerMetrics::selected() { series_->selected->Increment(); }

void ServerMetrics::activeChange(int delta) { series_->active->Increment(delta); }

void ServerMetrics::up(bool isUp) { series_->up->Set(isUp ? 1 : 0); }

void ServerMetrics::adminState(bool drained, bool disabled) {
  series_->drained->Set(drained ? 1 : 0);
  series_->disabled->Set(disabled ? 1 : 0);
}

void ServerMetrics::healthCheck(bool ok) {
  (ok ? series_->checksOk : series_->checksFailed)->Increment();
}

void BackendMetrics::connectDuration(double seconds) { series_->connectDuration->Observe(seconds); }

void ServerMetrics::error(BackendError reason) {
  series_->errors[static_cast<int>(reason)]->Increment();
}

namespace {

const prometheus::Histogram::BucketBoundaries kSessionBuckets = {0.1, 0.5, 1,   5,    10,   30,
                                                                 60,  300, 900, 1800, 3600, 14400};
const prometheus::Histogram::BucketBoundaries kHandshakeBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
const prometheus::Histogram::BucketBoundaries kConnectBuckets = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};

} // namespace

struct Registry::Impl {
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::unique_ptr<prometheus::Exposer> exposer;

  // The catalogue: every family postern exports, in SPEC §6 order.
  prometheus::Family<prometheus::Gauge>& buildInfo =
      prometheus::BuildGauge()
          .Name("postern_build_info")
          .Help("Always 1; the version label says which postern is running.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& accepted =
      prometheus::BuildCounter()
          .Name("postern_connections_accepted_total")
          .Help("Client connections accepted (not counting those refused by a limit).")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& active = prometheus::BuildGauge()
                                                      .Name("postern_connections_active")
                                                      .Help("Client sessions open now.")
                                                      .Register(*registry);
  prometheus::Family<prometheus::Counter>& rejected =
      prometheus::BuildCounter()
          .Name("postern_connections_rejected_total")
          .Help("Client connections refused by a limit, by reason.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& closed = prometheus::BuildCounter()
                                                        .Name("postern_sessions_closed_total")
                                                        .Help("Client sessions ended, by reason.")
                                                        .Register(*registry);
  prometheus::Family<prometheus::Histogram>& duration =
      prometheus::BuildHistogram()
          .Name("postern_session_duration_seconds")
          .Help("Length of client sessions.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& bytes = prometheus::BuildCounter()
                                                       .Name("postern_bytes_total")
                                                       .Help("Bytes relayed, by direction.")
                                                       .Register(*registry);
  prometheus::Family<prometheus::Histogram>& connectDuration =
      prometheus::BuildHistogram()
          .Name("postern_backend_connect_duration_seconds")
          .Help("Time from starting a backend connection to its greeting.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& backendErrors =
      prometheus::BuildCounter()
          .Name("postern_backend_errors_total")
          .Help("Failed backend connections, by server and reason.")
          .Register(*registry);

  prometheus::Family<prometheus::Counter>& handshakes =
      prometheus::BuildCounter()
          .Name("postern_tls_handshakes_total")
          .Help("Client-side TLS handshakes, by result and protocol version.")
          .Register(*registry);
  prometheus::Family<prometheus::Histogram>& handshakeDuration =
      prometheus::BuildHistogram()
          .Name("postern_tls_handshake_duration_seconds")
          .Help("Time from accepting a TLS connection to the end of its handshake.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& resumed =
      prometheus::BuildCounter()
          .Name("postern_tls_resumed_total")
          .Help("Client-side TLS handshakes that resumed an earlier session.")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& certificateExpiry =
      prometheus::BuildGauge()
          .Name("postern_tls_certificate_expiry_timestamp_seconds")
          .Help("When each client-facing certificate expires (Unix time).")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& backendCertificateExpiry =
      prometheus::BuildGauge()
          .Name("postern_backend_certificate_expiry_timestamp_seconds")
          .Help("When each TLS backend server's certificate expires (Unix time), as last seen.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& backendSelected =
      prometheus::BuildCounter()
          .Name("postern_backend_selected_total")
          .Help("Times the balancer chose each server (retries included).")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& backendActive =
      prometheus::BuildGauge()
          .Name("postern_backend_connections_active")
          .Help("Sessions using each backend server now.")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& backendUp =
      prometheus::BuildGauge()
          .Name("postern_backend_up")
          .Help("1 while a backend server takes new sessions, 0 while health checks hold it down.")
          .Register(*registry);
  prometheus::Family<prometheus::Gauge>& backendAdminState =
      prometheus::BuildGauge()
          .Name("postern_backend_admin_state")
          .Help("1 for the state the runtime API put a server in (drained, disabled), else 0.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& healthChecks =
      prometheus::BuildCounter()
          .Name("postern_health_checks_total")
          .Help("Active health checks by server and result.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& configReloads =
      prometheus::BuildCounter()
          .Name("postern_config_reloads_total")
          .Help("Configuration and certificate reloads (SIGHUP), by result.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& startTls =
      prometheus::BuildCounter()
          .Name("postern_starttls_total")
          .Help("STARTTLS upgrades by side (client, backend) and result.")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& routes =
      prometheus::BuildCounter()
          .Name("postern_routes_total")
          .Help("Sessions a listener sent to a backend pool, by route (the pool's name; SPEC §13).")
          .Register(*registry);
  prometheus::Family<prometheus::Counter>& auth =
      prometheus::BuildCounter()
          .Name("postern_auth_total")
          .Help("Authentication attempts seen or refused by postern, by mechanism and result.")
          .Register(*registry);
  std::vector<prometheus::Gauge*> certificateGauges;

  // Series handles point into the families; the deques keep their own storage stable.
  std::mutex mutex;
  std::deque<ListenerMetrics::Series> listeners;
  std::deque<RouteMetrics::Series> routeSeries;
  std::deque<BackendMetrics::Series> backends;
  std::deque<ServerMetrics::Series> servers;
};

Registry::Registry(const std::string& version) : impl_(std::make_unique<Impl>()) {
  impl_->buildInfo.Add({{"version", version}}).Set(1);
}

Registry::~Registry() = default;

std::expected<int, std::string> Registry::startExposer(const std::string& hostPort) {
  try {
    impl_->exposer = std::make_unique<prometheus::Exposer>(hostPort, 2);
    impl_->exposer->RegisterCollectable(impl_->registry);
    auto ports = impl_->exposer->GetListeningPorts();
    return ports.empty() ? 0 : ports.front();
  } catch (const std::exception& error) {
    return std::unexpected(std::string(error.what()));
  }
}

void RouteMetrics::chosen() {
  if (series_ != nullptr) {
    series_->chosen->Increment();
  }
}

RouteMetrics Registry::route(const std::string& listener, const std::string& route) {
  std::lock_guard lock(impl_->mutex);
  RouteMetrics::Series& series = impl_->routeSeries.emplace_back();
  series.chosen = &impl_->routes.Add({{"listener", listener}, {"route", route}});
  RouteMetrics handle;
  handle.series_ = &series;
  return handle;
}

ListenerMetrics Registry::listener(const std::string& name, const std::string& protocol, int port,
                                   const std::string& tls) {
  std::lock_guard lock(impl_->mutex);
  prometheus::Labels labels = {
      {"listener", name}, {"protocol", protocol}, {"port", std::to_string(port)}, {"tls", tls}};
  ListenerMetrics::Series& series = impl_->listeners.emplace_back();
  series.accepted = &impl_->accepted.Add(labels);
  series.active = &impl_->active.Add(labels);
  for (int i = 0; i < kRejectReasons; ++i) {
    series.rejected[i] = &impl_->rejected.Add(
        {{"listener", name}, {"reason", toString(static_cast<RejectReason>(i))}});
  }
  for (int i = 0; i < kCloseReasons; ++i) {
    series.closed[i] =
        &impl_->closed.Add({{"listener", name}, {"reason", toString(static_cast<CloseReason>(i))}});
  }
  series.duration =
      &impl_->duration.Add({{"listener", name}, {"protocol", protocol}}, kSessionBuckets);
  series.bytesToBackend =
      &impl_->bytes.Add({{"listener", name}, {"direction", "client_to_backend"}});
  series.bytesToClient =
      &impl_->bytes.Add({{"listener", name}, {"direction", "backend_to_client"}});
  series.name = name;
  static constexpr const char* kSides[] = {"client", "backend"};
  static constexpr const char* kResults[] = {"ok", "refused", "injection_rejected",
                                             "handshake_failed"};
  for (int side = 0; side < 2; ++side) {
    for (int result = 0; result < kStartTlsResults; ++result) {
      series.startTls[side][result] = &impl_->startTls.Add(
          {{"listener", name}, {"side", kSides[side]}, {"result", kResults[result]}});
    }
  }
  if (tls != "none") {
    series.handshakesOk12 =
        &impl_->handshakes.Add({{"listener", name}, {"result", "ok"}, {"version", "TLSv1.2"}});
    series.handshakesOk13 =
        &impl_->handshakes.Add({{"listener", name}, {"result", "ok"}, {"version", "TLSv1.3"}});
    series.handshakesFailed =
        &impl_->handshakes.Add({{"listener", name}, {"result", "failed"}, {"version", "none"}});
    series.handshakeDuration =
        &impl_->handshakeDuration.Add({{"listener", name}}, kHandshakeBuckets);
    series.resumed = &impl_->resumed.Add({{"listener", name}});
  }
  ListenerMetrics handle;
  handle.series_ = &series;
  handle.registry_ = this;
  return handle;
}

prometheus::Counter* Registry::authCounter(const std::string& listener, const char* mechanism,
                                           AuthResult result) {
  static constexpr const char* kResults[] = {"ok", "failed", "refused_plaintext", "throttled"};
  // Family::Add returns the one series for these labels, whichever worker asks first.
  return &impl_->auth.Add({{"listener", listener},
                           {"mechanism", mechanism},
                           {"result", kResults[static_cast<int>(result)]}});
}

BackendMetrics Registry::backend(const std::string& name) {
  std::lock_guard lock(impl_->mutex);
  BackendMetrics::Series& series = impl_->backends.emplace_back();
  series.connectDuration = &impl_->connectDuration.Add({{"backend", name}}, kConnectBuckets);
  BackendMetrics handle;
  handle.series_ = &series;
  return handle;
}

ServerMetrics Registry::server(const std::string& backend, const std::string& server, bool tls) {
  std::lock_guard lock(impl_->mutex);
  ServerMetrics::Series& series = impl_->servers.emplace_back();
  for (int i = 0; i < kBackendErrors; ++i) {
    series.errors[i] =
        &impl_->backendErrors.Add({{"backend", backend},
                                   {"server", server},
                                   {"reason", toString(static_cast<BackendError>(i))}});
  }
  series.certificateExpiry =
      tls ? &impl_->backendCertificateExpiry.Add({{"backend", backend}, {"server", server}})
          : nullptr;
  series.selected = &impl_->backendSelected.Add({{"backend", backend}, {"server", server}});
  series.active = &impl_->backendActive.Add({{"backend", backend}, {"server", server}});
  series.up = &impl_->backendUp.Add({{"backend", backend}, {"server", server}});
  series.up->Set(1);
  series.drained = &impl_->backendAdminState.Add(
      {{"backend", backend}, {"server", server}, {"state", "drained"}});
  series.disabled = &impl_->backendAdminState.Add(
      {{"backend", backend}, {"server", server}, {"state", "disabled"}});
  series.checksOk =
      &impl_->healthChecks.Add({{"backend", backend}, {"server", server}, {"result", "ok"}});
  series.checksFailed =
      &impl_->healthChecks.Add({{"backend", backend}, {"server", server}, {"result", "failed"}});
  ServerMetrics handle;
  handle.series_ = &series;
  return handle;
}

void Registry::setCertificates(const std::vector<Certificate>& certificates) {
  std::lock_guard lock(impl_->mutex);
  for (prometheus::Gauge* gauge : impl_->certificateGauges) {
    impl_->certificateExpiry.Remove(gauge);
  }
  impl_->certificateGauges.clear();
  for (const Certificate& certificate : certificates) {
    prometheus::Gauge& gauge = impl_->certificateExpiry.Add(
        {{"certificate", certificate.subject}, {"key_type", certificate.keyType}});
    gauge.Set(certificate.notAfter);
    impl_->certificateGauges.push_back(&gauge);
  }
}

void Registry::configReload(bool ok) {
  impl_->configReloads.Add({{"result", ok ? "ok" : "failed"}}).Increment();
}

std::string Registry::render() const {
  prometheus::TextSerializer serializer;
  return serializer.Serialize(impl_->registry->Collect());
}

} // namespace metrics
