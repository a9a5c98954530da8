// One way to a backend server, for sessions and health checks alike: connect, send the PROXY
// header, TLS on connect or after the protocol's STARTTLS, SMTP XCLIENT, and the first bytes of
// the greeting. It ends in ready (the stream is handed over) or failed (with the reason the
// pool and the metrics count). Like HAProxy's checks and streams sharing one connection layer.
#pragma once

#include "config/model.h"
#include "metrics/metrics.h"
#include "proxy/net/byte_stream.h"
#include "proxy/net/tcp_stream.h"
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/proxy_header.h"
#include "tls/context.h"
#include "tls/engine.h"

#include <memory>
#include <optional>
#include <string>

namespace backend {

// What a connection needs to know, fixed when it starts.
struct ConnectSpec {
  sockaddr_storage address{};
  std::string host; // as configured: the TLS server name to send and verify
  config::Protocol protocol = config::Protocol::Imap;
  config::TlsMode tls = config::TlsMode::None;
  tls::ClientContext* tlsContext = nullptr; // when tls is not none (the pool's; outlives this)
  config::ProxyProtocol proxyProtocol = config::ProxyProtocol::Off;
  // The PROXY header's addresses; left empty (AF_UNSPEC) for a connection with no client
  // behind it (a health check: v1 UNKNOWN, v2 LOCAL).
  sockaddr_storage client{};
  sockaddr_storage local{};
  // PROXY v2: the client's TLS, carried as TLVs (SPEC §13); none when the client has no TLS.
  std::optional<protocol::ProxyTls> clientTls;
  // SMTP: the XCLIENT command to send when the server offers XCLIENT ("" = none).
  std::string xclient;
};

class Connector final : private net::StreamHandler {
public:
  struct Ready {
    net::ByteStream* stream; // now the owner's: set its handler, close it when done
    const tls::Engine* tls;  // null without TLS
    // The greeting. When `greetingRead` is false these are the server's first bytes as they
    // came (a ready greeting, or the start of one); when true a dialogue before TLS or XCLIENT
    // read it, and this is what the client may be shown of it.
    std::string greeting;
    bool greetingRead = false;
    bool startTls = false;         // upgraded with the protocol's STARTTLS
    bool xclientForwarded = false; // the server took XCLIENT (and greeted anew)
  };
  struct Failure {
    metrics::BackendError reason;
    // For a backend STARTTLS that went wrong: how (refused, injection, handshake_failed).
    std::optional<metrics::StartTlsResult> startTls;
    std::string detail;
  };
  class Handler {
  public:
    virtual void onBackendReady(Ready ready) = 0;
    virtual void onBackendFailed(const Failure& failure) = 0;

  protected:
    ~Handler() = default;
  };

  Connector(uv_loop_t* loop, ConnectSpec spec, Handler& handler);
  // Closes the connection unless it was handed over.
  ~Connector();
  Connector(const Connector&) = delete;
  Connector& operator=(const Connector&) = delete;

  // Starts connecting; the handler hears exactly once, ready or failed (possibly at once).
  void start();
  // The TLS engine once a handshake started (for the server certificate's expiry).
  const tls::Engine* tls() const { return tls_; }

private:
  enum class Step { Connecting, Handshaking, StartTls, Xclient, Greeting, Done };

  void onConnected(int status) override;
  void onSecured() override;
  void onRead(std::span<const char> data) override;
  void onEnd() override;
  void onError(int status) override;
  void onDrained() override {}

  void startTlsHandshake();
  // After TLS (or with none): XCLIENT, else the greeting.
  void afterSecured();
  void startXclient(std::string greetingForClient);
  void stepStartTls(std::span<const char> data);
  void stepXclient(const protocol::BackendStartTls::Result& result);
  void ready(std::string greeting, bool greetingRead);
  void fail(metrics::BackendError reason, std::string detail,
            std::optional<metrics::StartTlsResult> startTls = std::nullopt);
  bool send(const std::string& bytes);

  uv_loop_t* loop_;
  ConnectSpec spec_;
  Handler& handler_;
  net::TcpStream* tcp_ = nullptr;
  net::ByteStream* stream_ = nullptr;
  const tls::Engine* tls_ = nullptr;
  Step step_ = Step::Connecting;
  std::unique_ptr<protocol::BackendStartTls> upgrade_;
  std::unique_ptr<protocol::SmtpXclient> xclient_;
  std::string plaintextGreeting_; // what the client may see of a greeting read before TLS
  bool upgraded_ = false;
};

} // namespace backend
