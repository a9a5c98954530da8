// A scripted server on the test's own libuv loop (loopback, port 0), standing in for a mail
// server where a test needs a fault a real one will not produce, or none at all.
#pragma once

#include <uv.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>

namespace testing_support {

// 127.0.0.1:port (0: any free port).
inline sockaddr_in loopback(std::uint16_t port = 0) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  return address;
}

// Binds `listener` (initialised on its loop) to a free loopback port and listens; the port.
inline std::uint16_t listenOnLoopback(uv_tcp_t* listener, int backlog,
                                      uv_connection_cb onConnection,
                                      sockaddr_storage* bound = nullptr) {
  sockaddr_in address = loopback();
  uv_tcp_bind(listener, reinterpret_cast<sockaddr*>(&address), 0);
  sockaddr_storage local{};
  int length = sizeof local;
  uv_tcp_getsockname(listener, reinterpret_cast<sockaddr*>(&local), &length);
  uv_listen(reinterpret_cast<uv_stream_t*>(listener), backlog, onConnection);
  if (bound != nullptr) {
    *bound = local;
  }
  return ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port);
}

// A server that greets, then answers each complete line it knows with its reply (a reply of
// "<close>" closes the connection instead). It records every byte it received.
class ScriptedServer {
public:
  ScriptedServer(uv_loop_t* loop, std::string greeting, std::map<std::string, std::string> replies)
      : greeting_(std::move(greeting)), replies_(std::move(replies)) {
    uv_tcp_init(loop, &listener_);
    listener_.data = this;
    listenOnLoopback(&listener_, 8, onConnection, &address_);
  }
  ~ScriptedServer() { close(); }

  void close() {
    if (!closed_) {
      closed_ = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&listener_), nullptr);
      if (connected_) {
        closeClient();
      }
    }
  }
  const sockaddr_storage& address() const { return address_; }
  const std::string& received() const { return received_; }
  // The connected peer has closed or reset its side.
  bool peerEnded() const { return peerEnded_; }

private:
  static void onConnection(uv_stream_t* server, int status) noexcept {
    auto* self = static_cast<ScriptedServer*>(server->data);
    if (status != 0 || self->connected_) {
      return;
    }
    uv_tcp_init(server->loop, &self->client_);
    self->client_.data = self;
    if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&self->client_)) != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&self->client_), nullptr);
      return;
    }
    self->connected_ = true;
    if (self->greeting_ == "<close>") {
      self->closeClient();
      return;
    }
    self->send(self->greeting_);
    uv_read_start(reinterpret_cast<uv_stream_t*>(&self->client_), onAlloc, onRead);
  }
  static void onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buffer) noexcept {
    auto* self = static_cast<ScriptedServer*>(handle->data);
    *buffer = uv_buf_init(self->buffer_, sizeof self->buffer_);
  }
  static void onRead(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept {
    auto* self = static_cast<ScriptedServer*>(stream->data);
    if (nread <= 0) {
      if (nread < 0) {
        self->peerEnded_ = true;
        self->closeClient();
      }
      return;
    }
    self->received_.append(buffer->base, static_cast<std::size_t>(nread));
    self->pending_.append(buffer->base, static_cast<std::size_t>(nread));
    std::size_t newline;
    while ((newline = self->pending_.find('\n')) != std::string::npos) {
      std::string line = self->pending_.substr(0, newline + 1);
      self->pending_.erase(0, newline + 1);
      auto reply = self->replies_.find(line);
      if (reply == self->replies_.end()) {
        continue;
      }
      if (reply->second == "<close>") {
        self->closeClient();
        return;
      }
      constexpr std::string_view kThenClose = "<then-close>";
      if (std::string_view(reply->second).ends_with(kThenClose)) {
        self->send(reply->second.substr(0, reply->second.size() - kThenClose.size()));
        self->shutdownThenClose();
        return;
      }
      self->send(reply->second);
    }
  }
  void send(const std::string& bytes) {
    if (bytes.empty()) {
      return;
    }
    auto* request = new uv_write_t;
    auto* copy = new std::string(bytes);
    request->data = copy;
    uv_buf_t buffer = uv_buf_init(copy->data(), static_cast<unsigned>(copy->size()));
    uv_write(request, reinterpret_cast<uv_stream_t*>(&client_), &buffer, 1,
             [](uv_write_t* done, int) {
               delete static_cast<std::string*>(done->data);
               delete done;
             });
  }
  // FIN after what was written, then the close.
  void shutdownThenClose() {
    auto* request = new uv_shutdown_t;
    request->data = this;
    uv_shutdown(request, reinterpret_cast<uv_stream_t*>(&client_), [](uv_shutdown_t* done, int) {
      static_cast<ScriptedServer*>(done->data)->closeClient();
      delete done;
    });
  }
  void closeClient() {
    if (connected_ && uv_is_closing(reinterpret_cast<uv_handle_t*>(&client_)) == 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&client_), nullptr);
    }
  }

  std::string greeting_;
  std::map<std::string, std::string> replies_;
  uv_tcp_t listener_{};
  uv_tcp_t client_{};
  sockaddr_storage address_{};
  bool connected_ = false;
  bool closed_ = false;
  bool peerEnded_ = false;
  std::string received_;
  std::string pending_;
  char buffer_[4096];
};

} // namespace testing_support
