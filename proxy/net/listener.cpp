// A listening TCP socket (IPv4 or IPv6, SO_REUSEPORT so worker loops can share a port).
#include "proxy/net/listener.h"

#include "proxy/log.h"

#include <netinet/in.h>
#include <sys/socket.h>

namespace net {

std::expected<Listener*, std::string> Listener::open(uv_loop_t* loop,
                                                     const config::SocketAddress& address,
                                                     Handler* handler, bool shared) {
  sockaddr_storage storage{};
  int status = address.ipv6 ? uv_ip6_addr(address.host.c_str(), address.port,
                                          reinterpret_cast<sockaddr_in6*>(&storage))
                            : uv_ip4_addr(address.host.c_str(), address.port,
                                          reinterpret_cast<sockaddr_in*>(&storage));
  if (status != 0) {
    return std::unexpected(std::string("bad address: ") + uv_strerror(status));
  }
  auto* listener = new Listener(handler);
  listener->tcp_.data = listener;
  uv_tcp_init_ex(loop, &listener->tcp_, address.ipv6 ? AF_INET6 : AF_INET);
  auto fail = [&](int code) -> std::expected<Listener*, std::string> {
    listener->close();
    return std::unexpected(std::string(uv_strerror(code)));
  };
  uv_os_fd_t fd;
  uv_fileno(reinterpret_cast<uv_handle_t*>(&listener->tcp_), &fd);
  int one = 1;
  if (shared && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
    return fail(uv_translate_sys_error(errno));
  }
  unsigned flags = address.ipv6 ? UV_TCP_IPV6ONLY : 0;
  if ((status = uv_tcp_bind(&listener->tcp_, reinterpret_cast<sockaddr*>(&storage), flags)) != 0) {
    return fail(status);
  }
  if ((status = uv_listen(listener->stream(), SOMAXCONN, onConnectionReady)) != 0) {
    return fail(status);
  }
  sockaddr_storage bound{};
  int length = sizeof bound;
  uv_tcp_getsockname(&listener->tcp_, reinterpret_cast<sockaddr*>(&bound), &length);
  listener->port_ = bound.ss_family == AF_INET6
                        ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                        : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  return listener;
}

void Listener::onConnectionReady(uv_stream_t* server, int status) noexcept {
  auto* listener = static_cast<Listener*>(server->data);
  if (listener->closing_) {
    return;
  }
  if (status != 0) {
    logging::warn("accept failed", {{"error", uv_strerror(status)}});
    return;
  }
  listener->handler_->onConnection(*listener);
}

void Listener::close() {
  if (closing_) {
    return;
  }
  closing_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_),
           [](uv_handle_t* handle) noexcept { delete static_cast<Listener*>(handle->data); });
}

} // namespace net
