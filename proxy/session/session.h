// One client session: TLS at accept when the listener says so, connect a backend server (over
// TLS when the pool says so), then relay bytes both ways until either side ends.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/admin/control.h"
#include "proxy/backend/connector.h"
#include "proxy/backend/pool.h"
#include "proxy/net/byte_stream.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/net/timer.h"
#include "proxy/protocol/filter.h"
#include "proxy/protocol/registry.h"
#include "proxy/session/auth_throttle.h"
#include "proxy/session/client_limits.h"
#include "tls/context.h"
#include "tls/engine.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace session {

// What a session needs to know about the listener that accepted it; owned by the server and
// shared by that listener's sessions.
struct ListenerContext {
  config::Listener config;
  const protocol::ProtocolInfo* protocol = nullptr;
  std::shared_ptr<backend::Pool> pool; // `backend`: when no route matches
  // SPEC §13: the routes in order, each with its pool and its postern_routes_total series.
  struct RouteTarget {
    config::Route route;
    std::shared_ptr<backend::Pool> pool;
    metrics::RouteMetrics metrics;
  };
  std::vector<RouteTarget> routes;
  metrics::RouteMetrics defaultRoute;
  metrics::ListenerMetrics metrics;
  int port = 0;
  // The client-facing TLS context new sessions use (replaced on reload; running sessions keep
  // theirs). Null on plaintext listeners.
  std::shared_ptr<tls::ServerContext>* tls = nullptr;
  // per_ip_max_connections and per_ip_connect_rate of this listener, shared by the workers.
  std::shared_ptr<ClientLimits> clientLimits;
  // Login mode: authentication failures per client address (shared by the workers).
  std::shared_ptr<AuthThrottle> authThrottle;
  // SPEC §14: where live sessions are listed for the runtime API (null: not listed), and the
  // worker whose loop runs them (kicks are carried there).
  admin::Control* control = nullptr;
  int worker = 0;
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
  // Login mode adds Login: postern holds the dialogue with no backend; Connecting then covers
  // the backend's connect, TLS, XCLIENT and the replayed authentication.
  enum class Phase { ProxyHeader, Handshaking, Login, Connecting, Relaying, Closed };

  // The session keeps the listener's context (and so its pool) it started with, whatever a
  // reload changes afterwards.
  Session(SessionOwner& owner, std::shared_ptr<ListenerContext> listener, uv_loop_t* loop);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Takes the pending connection from the listening socket and starts; false if accept failed.
  bool start(uv_stream_t* listening);

  // Ends the session: one metric, one access-log line, both connections closed. Idempotent.
  void close(metrics::CloseReason reason);
  // Ends the session at shutdown, with the protocol's goodbye where postern holds the dialogue.
  void shutdown();
  // Ends the session for the runtime API (close reason `kicked`), with the protocol's goodbye
  // where postern holds the dialogue or the server's last bytes ended a line. `by`: who asked.
  void kick(const std::string& by);

  Phase phase() const { return static_cast<Phase>(state_.index()); }

private:
  // The two connections report through these, so the session knows which side spoke.
  struct ClientSide final : net::StreamHandler {
    Session& session;
    explicit ClientSide(Session& s) : session(s) {}
    void onConnected(int) override {}
    void onSecured() override { session.onClientSecured(); }
    void onRead(std::span<const char> data) override { session.onClientRead(data); }
    void onEnd() override { session.onClientEnd(); }
    void onError(int status) override { session.onClientError(status); }
    void onDrained() override { session.onClientDrained(); }
  };
  struct BackendSide final : net::StreamHandler, backend::Connector::Handler {
    Session& session;
    explicit BackendSide(Session& s) : session(s) {}
    void onConnected(int) override {}
    void onSecured() override {}
    void onRead(std::span<const char> data) override { session.onBackendRead(data); }
    void onEnd() override { session.onBackendEnd(); }
    void onError(int status) override { session.onBackendError(status); }
    void onDrained() override { session.onBackendDrained(); }
    void onBackendReady(backend::Connector::Ready ready) override {
      session.onBackendReady(std::move(ready));
    }
    void onBackendFailed(const backend::Connector::Failure& failure) override {
      session.onBackendFailed(failure);
    }
  };

  // The connection is a session now: counted, then TLS or the backend.
  void begin();
  void readProxyHeader(std::span<const char> data);
  void startTls(net::TcpStream* tcp);
  // SPEC §13: picks the pool (pool_) by the first route that matches what is known now (the
  // TLS server name; in login mode the user's domain), else the listener's backend.
  void route();
  void connectBackend();
  void backendFailed(metrics::BackendError reason, const std::string& detail = "");
  void releaseBackend();

  void onClientSecured();
  void onClientRead(std::span<const char> data);
  void onClientEnd();
  void onClientError(int status);
  void onClientDrained();
  // The connector reached the server (PROXY header, TLS, STARTTLS, XCLIENT done) or failed.
  void onBackendReady(backend::Connector::Ready ready);
  void onBackendFailed(const backend::Connector::Failure& failure);
  void onBackendRead(std::span<const char> data);
  void onBackendEnd();
  void onBackendError(int status);
  void onBackendDrained();
  void onTimer() override;

  void handshakeFailed(const std::string& why);
  // Arms the timer for whichever comes first: the idle timeout or the pre-authentication one.
  void armTimer();
  // Authentication (or, for SMTP, TLS or an accepted MAIL) ends the pre-authentication limits.
  void preauthOver();
  // The backend greeted (or finished its STARTTLS): the session relays from now on. False when
  // the session ended meanwhile.
  bool becomeReady();
  void relayFromBackend(std::span<const char> data);
  std::string xclientCommandForClient() const;
  // Carries out what the protocol filter decided.
  void apply(protocol::Output& out);
  // STARTTLS go-ahead given: the client's TCP stream continues as TLS.
  void upgradeClient();
  void finishIfBothEnded(metrics::CloseReason reason);
  // Counts what a protocol dialogue reports.
  void countEvents(const std::vector<protocol::EventRecord>& events);

  // Login mode (SPEC §5): postern greets and reads credentials, then routes by user.
  bool loginMode() const { return listener_.config.mode == config::Mode::Login; }
  // What the listener allows, for the protocol dialogues.
  protocol::Policy listenerPolicy() const;
  void startLogin();
  void applyLogin();
  void credentialsCaptured(protocol::Credentials credentials, std::string helo);
  void routeLogin();
  // The backend greeted (or finished STARTTLS/XCLIENT): replay the credentials there.
  void startReplay(bool greeted);
  void replayStep(protocol::LoginReplay::Result result);
  void loginAccepted(std::string verdict);
  void loginRejected(std::string verdict);
  void loginUnavailable(metrics::BackendError reason, const std::string& detail);
  std::string throttleUser() const;

  // What exists only in one phase (the alternatives in Phase's order).
  struct AwaitingProxyHeader {
    std::string received; // the header so far (SPEC §8 bounds it)
  };
  struct Handshaking {};
  struct InLogin {};
  struct Connecting {
    // Connects the chosen server (PROXY header, TLS, STARTTLS, XCLIENT, greeting); null once
    // the server is ready (login mode then replays the credentials, still Connecting).
    std::unique_ptr<backend::Connector> connector;
    std::uint64_t startedAt = 0; // loop clock, ms
  };
  struct Relaying {
    bool clientEnded = false; // the client finished sending (its FIN was passed on)
    bool backendEnded = false;
  };
  struct Closed {};
  using State =
      std::variant<AwaitingProxyHeader, Handshaking, InLogin, Connecting, Relaying, Closed>;
  template <typename Next> Next& enter() { return state_.emplace<Next>(); }
  template <typename Current> Current* in() { return std::get_if<Current>(&state_); }

  SessionOwner& owner_;
  std::shared_ptr<ListenerContext> listenerRef_;
  ListenerContext& listener_;
  uv_loop_t* loop_;
  ClientSide clientSide_{*this};
  BackendSide backendSide_{*this};
  net::ByteStream* client_ = nullptr;
  net::ByteStream* backend_ = nullptr;
  net::TcpStream* clientTcp_ = nullptr; // the TCP under client_ (STARTTLS wraps it)
  // Reads the dialogue until nothing is left to rewrite; null once the session only relays.
  std::unique_ptr<protocol::Filter> filter_;
  protocol::Output output_;
  bool clientUpgrading_ = false; // STARTTLS handshake under way
  std::uint64_t upgradeStartedAt_ = 0;
  const tls::Engine* clientTls_ = nullptr; // for the access log; owned by the client stream
  const tls::Engine* backendTls_ = nullptr;
  std::shared_ptr<tls::ServerContext> tlsContext_; // keeps the context this session started with
  net::Timer* timer_ = nullptr;
  backend::Pool* pool_ = nullptr; // the routed pool (owned by the listener's context)
  backend::Server* server_ = nullptr;
  std::vector<const backend::Server*> tried_;
  State state_{std::in_place_type<Connecting>};
  std::uint64_t startedAt_ = 0;    // loop clock, ms
  std::uint64_t lastActivity_ = 0; // loop clock, ms
  std::uint64_t bytesIn_ = 0;      // client to backend
  std::uint64_t bytesOut_ = 0;     // backend to client
  std::string clientAddress_;
  sockaddr_storage clientPeer_{};  // the real client (from a trusted PROXY header, if any)
  sockaddr_storage clientLocal_{}; // the address it connected to
  std::string earlyClient_;        // client bytes that came with the PROXY header
  bool accepted_ = false;          // counted as accepted (not refused before that)
  metrics::RejectReason rejectReason_ = metrics::RejectReason::ProxyHeader;
  std::string limitKey_; // the client address the per-IP limits count, once admitted
  bool preauthDone_ = false;
  std::string tlsVersion_;
  std::string tlsCipher_;
  // Login mode only (a passthrough session does not carry it).
  struct LoginState {
    std::unique_ptr<protocol::LoginDialogue> dialogue;
    protocol::LoginOutput output;
    std::unique_ptr<protocol::LoginReplay> replay;
    std::optional<protocol::Credentials> credentials; // until the verdict (retries need them)
    std::string clientHelo;
    std::string throttleAddress; // the client address the throttle counts (IPv6: its /64)
    const char* mechanism = "none";
    bool delaying = false;     // a throttled attempt waits on the timer
    int throttledAttempts = 0; // attempts refused by the throttle; at the limit, closed
  };
  std::unique_ptr<LoginState> login_;
  std::string user_; // for the access log and user_hash
  // SPEC §14: this session as the runtime API lists it (null when not listed).
  std::shared_ptr<admin::SessionRecord> record_;
  char lastToClient_ = '\n'; // the last byte relayed from the backend (a line ended there?)
  static constexpr int kMaxThrottledAttempts = 3;
};

} // namespace session
