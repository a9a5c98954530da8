// The server: one libuv loop with its listeners, backend pools and live sessions; drain on signals.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/admin/admin_server.h"
#include "proxy/admin/control.h"
#include "proxy/backend/pool.h"
#include "proxy/net/listener.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/net/timer.h"
#include "proxy/session/session.h"
#include "tls/context.h"

#include <uv.h>

#include <atomic>
#include <deque>
#include <expected>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace proxy {

// What the worker threads share: the session count for max_connections, per-listener client
// limits (so per-IP limits hold across workers), and what the runtime API sees and changes.
struct Shared {
  std::atomic<std::size_t> sessions{0};
  admin::Control control;
  // Whether sessions are listed in `control` (for the API's session list and kicks): only when
  // the runtime API runs, which is decided at start ([admin] listen applies on restart). Without
  // it a session saves its record (~230 bytes) and a shared lock on opening and closing.
  bool sessionDirectory = false;
  std::mutex mutex;
  std::map<std::string, std::shared_ptr<session::ClientLimits>> clientLimits;
  std::map<std::string, std::shared_ptr<session::AuthThrottle>> authThrottles;

  std::shared_ptr<session::ClientLimits> limitsFor(const config::Listener& listener);
  // Login-mode failure counts of a listener, shared by the workers and kept across reloads.
  std::shared_ptr<session::AuthThrottle> throttleFor(const config::Listener& listener);
};

class Server final : private session::SessionOwner,
                     private net::TimerHandler,
                     private admin::Mailbox {
public:
  // `worker` numbers the loop (0 logs what all workers share).
  Server(const config::Config& config, metrics::Registry& registry, Shared& shared, int worker);
  ~Server();

  // Opens every listener; on failure, what could not be bound.
  std::expected<void, std::string> start();
  // Runs the loop until a drain (SIGTERM/SIGINT) has finished.
  void run();
  // The port each listener is bound to (port 0 in the config becomes a real one).
  std::map<std::string, int> boundPorts() const;
  // Whether any worker's loop still had open handles when it was closed (STYLE #9): a leak
  // the process reports by its exit status, so every test that stops postern checks it.
  static bool leakedHandles();

private:
  // One per configured listener: the socket and what its new sessions share. A reload gives an
  // entry a new context; sessions already running keep the one they started with.
  struct ListenerEntry final : net::Listener::Handler {
    Server* server = nullptr;
    net::Listener* socket = nullptr;
    std::shared_ptr<session::ListenerContext> context;
    void onConnection(net::Listener&) override { server->accept(*this); }
  };

  // Pools, TLS, listeners: built from `config` and swapped in whole, or not at all.
  std::expected<void, std::string> apply(const config::Config& config);
  std::shared_ptr<session::ListenerContext>
  makeContext(const config::Listener& listener,
              const std::map<std::string, std::shared_ptr<backend::Pool>>& pools, int port);

  void accept(ListenerEntry& entry);
  void reject(ListenerEntry& entry, metrics::RejectReason reason);
  void onSessionClosed(session::Session& session) override;
  void onTimer() override; // shutdown grace expired
  void beginDrain(const char* signalName);
  void reload();
  std::expected<void, std::string> loadTls(const config::Tls& tls);
  void publishCertificates();
  void stopLoop();
  static void onSignal(uv_signal_t* handle, int signal) noexcept;
  // SPEC §14: the runtime API (worker 0 serves it) and the kicks it sends to this worker.
  std::expected<void, std::string> startAdmin();
  void publishState();
  void post(std::vector<admin::Kick> kicks) override; // any thread
  void takeKicks();                                   // this loop
  static void onKicks(uv_async_t* handle) noexcept;
  static void onCheck(uv_check_t* handle) noexcept;

  config::Config config_;
  metrics::Registry& registry_;
  Shared& shared_;
  int worker_;
  uv_loop_t loop_{};
  net::LoopContext loopContext_;
  std::map<std::string, std::shared_ptr<backend::Pool>> pools_;
  std::vector<std::unique_ptr<ListenerEntry>> listeners_;
  std::unordered_map<session::Session*, std::unique_ptr<session::Session>> sessions_;
  std::vector<std::unique_ptr<session::Session>> finished_;
  uv_signal_t sigterm_{};
  uv_signal_t sigint_{};
  uv_signal_t sighup_{};
  uv_check_t reaper_{};
  net::Timer* graceTimer_ = nullptr;
  std::shared_ptr<tls::TicketKeys> ticketKeys_;
  std::shared_ptr<tls::ServerContext> tlsContext_; // what new TLS sessions use
  bool draining_ = false;
  bool stopped_ = false;
  std::unique_ptr<admin::AdminServer> admin_;
  config::SocketAddress adminListen_; // where admin_ listens (it moves only on restart)
  uv_async_t kickSignal_{};
  std::mutex kicksMutex_;
  std::vector<admin::Kick> kicks_;
};

} // namespace proxy
