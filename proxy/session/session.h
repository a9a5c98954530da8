// One client session: connect a backend server, then relay bytes both ways until either side ends.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/backend/pool.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/net/timer.h"
#include "proxy/protocol/registry.h"

#include <cstdint>
#include <string>
#include <vector>

namespace session {

// What a session needs to know about the listener that accepted it; owned by the server and
// shared by that listener's sessions.
struct ListenerContext {
  config::Listener config;
  const protocol::ProtocolInfo* protocol = nullptr;
  backend::Pool* pool = nullptr;
  metrics::ListenerMetrics metrics;
  int port = 0;
};

class Session;

class SessionOwner {
public:
  // The session has ended (its metrics and log line are written); free it when convenient.
  virtual void onSessionClosed(Session& session) = 0;

protected:
  ~SessionOwner() = default;
};

class Session final : private net::TimerHandler {
public:
  enum class Phase { Connecting, Relaying, Closed };

  Session(SessionOwner& owner, ListenerContext& listener, uv_loop_t* loop);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Takes the pending connection from the listening socket and starts; false if accept failed.
  bool start(uv_stream_t* listening);

  // Ends the session: one metric, one access-log line, both connections closed. Idempotent.
  void close(metrics::CloseReason reason);
  // Ends the session at shutdown, with the protocol's goodbye where postern holds the dialogue.
  void shutdown();

  Phase phase() const { return phase_; }

private:
  // The two connections report through these, so the session knows which side spoke.
  struct ClientSide final : net::StreamHandler {
    Session& session;
    explicit ClientSide(Session& s) : session(s) {}
    void onConnected(int) override {}
    void onRead(std::span<const char> data) override { session.onClientRead(data); }
    void onEnd() override { session.onClientEnd(); }
    void onError(int status) override { session.onClientError(status); }
    void onDrained() override { session.onClientDrained(); }
  };
  struct BackendSide final : net::StreamHandler {
    Session& session;
    explicit BackendSide(Session& s) : session(s) {}
    void onConnected(int status) override { session.onBackendConnected(status); }
    void onRead(std::span<const char> data) override { session.onBackendRead(data); }
    void onEnd() override { session.onBackendEnd(); }
    void onError(int status) override { session.onBackendError(status); }
    void onDrained() override { session.onBackendDrained(); }
  };

  void connectBackend();
  void backendFailed(metrics::BackendError reason);
  void releaseBackend();

  void onClientRead(std::span<const char> data);
  void onClientEnd();
  void onClientError(int status);
  void onClientDrained();
  void onBackendConnected(int status);
  void onBackendRead(std::span<const char> data);
  void onBackendEnd();
  void onBackendError(int status);
  void onBackendDrained();
  void onTimer() override;

  void finishIfBothEnded(metrics::CloseReason reason);

  SessionOwner& owner_;
  ListenerContext& listener_;
  uv_loop_t* loop_;
  ClientSide clientSide_{*this};
  BackendSide backendSide_{*this};
  net::TcpStream* client_ = nullptr;
  net::TcpStream* backend_ = nullptr;
  net::Timer* timer_ = nullptr;
  backend::Server* server_ = nullptr;
  std::vector<const backend::Server*> tried_;
  Phase phase_ = Phase::Connecting;
  std::uint64_t startedAt_ = 0;        // loop clock, ms
  std::uint64_t connectStartedAt_ = 0; // loop clock, ms
  std::uint64_t lastActivity_ = 0;     // loop clock, ms
  std::uint64_t bytesIn_ = 0;          // client to backend
  std::uint64_t bytesOut_ = 0;         // backend to client
  bool clientEnded_ = false;
  bool backendEnded_ = false;
  std::string clientAddress_;
};

} // namespace session
