// Active health checks of one backend server: every `interval`, a connection in the pool's TLS
// mode runs the protocol's polite probe within `timeout`; `rise`/`fall` consecutive results
// (passive failures of real sessions included) flip the server up or down.
#pragma once

#include "config/model.h"
#include "proxy/backend/connector.h"
#include "proxy/net/byte_stream.h"
#include "proxy/net/timer.h"
#include "proxy/protocol/health_probe.h"

#include <memory>
#include <string>

namespace backend {

class Pool;
struct Server;

class HealthChecker final : private net::StreamHandler,
                            private net::TimerHandler,
                            private Connector::Handler {
public:
  HealthChecker(uv_loop_t* loop, Pool& pool, Server& server, config::Protocol protocol);
  ~HealthChecker();
  HealthChecker(const HealthChecker&) = delete;
  HealthChecker& operator=(const HealthChecker&) = delete;

  void start();
  // Closes the timer and any check under way; the loop frees them afterwards.
  void stop();

private:
  void begin();
  void finish(bool ok, const std::string& reason);
  void send(const std::string& bytes);
  void apply(const protocol::HealthProbe::Result& result);

  // The connection (PROXY header, TLS, STARTTLS) is the session's own: backend::Connector.
  void onBackendReady(Connector::Ready ready) override;
  void onBackendFailed(const Connector::Failure& failure) override;
  void onConnected(int) override {}
  void onSecured() override {}
  void onRead(std::span<const char> data) override;
  void onEnd() override;
  void onError(int status) override;
  void onDrained() override {}
  void onTimer() override;

  uv_loop_t* loop_;
  Pool& pool_;
  Server& server_;
  config::Protocol protocol_;
  net::Timer* timer_ = nullptr;
  std::unique_ptr<Connector> connector_; // until the server is ready
  net::ByteStream* stream_ = nullptr;    // then the connection the probe talks over
  std::unique_ptr<protocol::HealthProbe> probe_;
  bool checking_ = false;
};

} // namespace backend
