// The runtime API's listener: HTTP/1.1 on its own address, one request per connection, served
// from worker 0's loop (SPEC §14). The requests are few and small; none waits on another loop.
#pragma once

#include "config/model.h"
#include "proxy/admin/api.h"
#include "proxy/net/listener.h"

#include <uv.h>

#include <expected>
#include <memory>
#include <string>
#include <vector>

namespace admin {

class Connection;

class AdminServer final : private net::Listener::Handler {
public:
  static constexpr std::size_t kMaxConnections = 64;
  static constexpr std::chrono::seconds kRequestTimeout{10};

  AdminServer(uv_loop_t* loop, Control& control, std::string token);
  ~AdminServer();

  // Binds `address`; returns the bound port.
  std::expected<int, std::string> start(const config::SocketAddress& address);
  void setToken(std::string token) { api_.setToken(std::move(token)); }
  // Stops listening and closes open connections.
  void stop();

private:
  friend class Connection;
  void onConnection(net::Listener& listener) override;
  void finished(Connection* connection);

  uv_loop_t* loop_;
  Api api_;
  net::Listener* listener_ = nullptr;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Connection>> finished_;
};

} // namespace admin
