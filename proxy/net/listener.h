// A listening TCP socket (IPv4 or IPv6, SO_REUSEPORT so worker loops can share a port).
#pragma once

#include "config/model.h"

#include <uv.h>

#include <expected>
#include <string>

namespace net {

class Listener {
public:
  class Handler {
  public:
    virtual void onConnection(Listener& listener) = 0;

  protected:
    ~Handler() = default;
  };

  // Binds and listens; the port actually bound is `port()` (useful with port 0).
  // `shared`: SO_REUSEPORT, so every worker loop binds the same port. A port only one loop
  // serves (the runtime API) is bound exclusively: a second process cannot take half of it.
  static std::expected<Listener*, std::string>
  open(uv_loop_t* loop, const config::SocketAddress& address, Handler* handler, bool shared = true);

  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
  int port() const { return port_; }
  // A reload hands a kept socket to the listener entry that now owns it.
  void setHandler(Handler* handler) { handler_ = handler; }
  // Stops listening; the object is freed by the loop later. Idempotent.
  void close();

private:
  explicit Listener(Handler* handler) : handler_(handler) {}
  ~Listener() = default;
  static void onConnectionReady(uv_stream_t* server, int status) noexcept;

  uv_tcp_t tcp_{};
  Handler* handler_;
  int port_ = 0;
  bool closing_ = false;
};

} // namespace net
