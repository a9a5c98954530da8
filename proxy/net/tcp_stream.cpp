// A TCP connection on the libuv loop: reads into the loop's shared buffer, writes without copying
// when the socket takes the bytes at once, and frees itself in its close callback.
#include "proxy/net/tcp_stream.h"

#include <arpa/inet.h>
#include <sys/socket.h>

#include <cstring>
#include <new>

namespace net {

namespace {

// A queued write and its bytes in one allocation.
struct WriteRequest {
  uv_write_t request;
  std::size_t size;
  char* bytes() { return reinterpret_cast<char*>(this + 1); }

  static WriteRequest* create(std::span<const char> data) {
    void* memory = ::operator new(sizeof(WriteRequest) + data.size());
    auto* write = new (memory) WriteRequest{};
    write->size = data.size();
    std::memcpy(write->bytes(), data.data(), data.size());
    return write;
  }
  static void destroy(WriteRequest* write) {
    write->~WriteRequest();
    ::operator delete(write);
  }
};

} // namespace

LoopContext& loopContext(uv_loop_t* loop) { return *static_cast<LoopContext*>(loop->data); }

void attachLoopContext(uv_loop_t* loop, LoopContext* context) { loop->data = context; }

std::string formatIp(const sockaddr_storage& address) {
  char host[INET6_ADDRSTRLEN] = "";
  if (address.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
  } else if (address.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
  }
  return host;
}

unsigned portOf(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  }
  if (address.ss_family == AF_INET6) {
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  }
  return 0;
}

std::string formatAddress(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) {
    return formatIp(address) + ":" + std::to_string(portOf(address));
  }
  if (address.ss_family == AF_INET6) {
    return "[" + formatIp(address) + "]:" + std::to_string(portOf(address));
  }
  return "-";
}

TcpStream* TcpStream::accept(uv_stream_t* server, StreamHandler* handler) {
  auto* stream = new TcpStream(handler);
  uv_tcp_init(server->loop, &stream->tcp_);
  stream->tcp_.data = stream;
  if (uv_accept(server, reinterpret_cast<uv_stream_t*>(&stream->tcp_)) != 0) {
    stream->handler_ = nullptr;
    stream->close();
    return nullptr;
  }
  // Mail dialogues are small request/response exchanges: Nagle would stall them.
  uv_tcp_nodelay(&stream->tcp_, 1);
  stream->fillAddresses();
  return stream;
}

TcpStream* TcpStream::connect(uv_loop_t* loop, const sockaddr* address, StreamHandler* handler,
                              int& status) {
  auto* stream = new TcpStream(handler);
  uv_tcp_init(loop, &stream->tcp_);
  stream->tcp_.data = stream;
  stream->largeReads_ = true;
  auto* request = new uv_connect_t;
  request->data = stream;
  status = uv_tcp_connect(request, &stream->tcp_, address, onConnectDone);
  if (status != 0) {
    delete request;
    stream->handler_ = nullptr;
    stream->close();
    return nullptr;
  }
  std::memcpy(&stream->peer_, address,
              address->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  // Every backend connection is read as soon as it is up (a server speaks first). Asking now
  // registers the socket once for both events; asking in onConnected would make libuv drop
  // it from epoll and add it again (EEXIST, then MOD). libuv reports no read before the
  // connect's own callback.
  stream->startReading();
  return stream;
}

void TcpStream::fillAddresses() {
  int length = sizeof peer_;
  uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&peer_), &length);
}

sockaddr_storage TcpStream::local() const {
  sockaddr_storage local{};
  int length = sizeof local;
  uv_tcp_getsockname(&tcp_, reinterpret_cast<sockaddr*>(&local), &length);
  return local;
}

void TcpStream::onConnectDone(uv_connect_t* request, int status) noexcept {
  // libuv calls this before the close callback, even for a stream closed meanwhile
  // (UV_ECANCELED): the stream is still there.
  auto* stream = static_cast<TcpStream*>(request->data);
  delete request;
  if (stream->closing_ || stream->handler_ == nullptr) {
    return;
  }
  if (status == 0) {
    // The peer is the address connected to (set by connect()); the local address of a backend
    // connection is never asked for, so neither costs a system call.
    uv_tcp_nodelay(&stream->tcp_, 1);
  }
  stream->handler_->onConnected(status);
}

int TcpStream::startReading() {
  if (reading_ || closing_) {
    return 0;
  }
  int status = uv_read_start(reinterpret_cast<uv_stream_t*>(&tcp_), onAlloc, onReadDone);
  reading_ = status == 0;
  return status;
}

void TcpStream::pauseReading() {
  if (reading_ && !closing_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&tcp_));
  }
  reading_ = false;
}

void TcpStream::onAlloc(uv_handle_t* handle, std::size_t, uv_buf_t* buffer) noexcept {
  LoopContext& context = loopContext(handle->loop);
  if (context.readBufferInUse) {
    // Cannot happen with libuv's single-threaded callbacks; refuse rather than share.
    *buffer = uv_buf_init(nullptr, 0);
    return;
  }
  context.readBufferInUse = true;
  const auto* stream = static_cast<const TcpStream*>(handle->data);
  *buffer = uv_buf_init(context.readBuffer, stream->largeReads_ ? LoopContext::kReadBufferSize
                                                                : LoopContext::kClientReadSize);
}

void TcpStream::onReadDone(uv_stream_t* handle, ssize_t nread, const uv_buf_t* buffer) noexcept {
  auto* stream = static_cast<TcpStream*>(handle->data);
  LoopContext& context = loopContext(handle->loop);
  if (buffer->base == context.readBuffer) {
    context.readBufferInUse = false;
  }
  // "nread might be 0, which does not indicate an error or EOF."
  if (nread == 0 || stream->handler_ == nullptr || stream->closing_) {
    return;
  }
  if (nread == UV_EOF) {
    stream->peerEnded_ = true;
    stream->pauseReading();
    stream->handler_->onEnd();
    return;
  }
  if (nread < 0) {
    stream->pauseReading();
    stream->handler_->onError(static_cast<int>(nread));
    return;
  }
  stream->handler_->onRead(std::span<const char>(buffer->base, static_cast<std::size_t>(nread)));
}

int TcpStream::write(std::span<const char> data) {
  if (closing_ || shutdown_) {
    return UV_EPIPE;
  }
  if (data.empty()) {
    return 0;
  }
  auto* handle = reinterpret_cast<uv_stream_t*>(&tcp_);
  if (pendingBytes_ == 0) {
    uv_buf_t buffer =
        uv_buf_init(const_cast<char*>(data.data()), static_cast<unsigned>(data.size()));
    int written = uv_try_write(handle, &buffer, 1);
    if (written == static_cast<int>(data.size())) {
      return 0;
    }
    if (written < 0 && written != UV_EAGAIN) {
      return written;
    }
    if (written > 0) {
      data = data.subspan(static_cast<std::size_t>(written));
    }
  }
  WriteRequest* request = WriteRequest::create(data);
  request->request.data = this;
  uv_buf_t buffer = uv_buf_init(request->bytes(), static_cast<unsigned>(request->size));
  int status = uv_write(&request->request, handle, &buffer, 1, onWriteDone);
  if (status != 0) {
    WriteRequest::destroy(request);
    return status;
  }
  pendingBytes_ += request->size;
  return 0;
}

void TcpStream::onWriteDone(uv_write_t* request, int status) noexcept {
  auto* write = reinterpret_cast<WriteRequest*>(request);
  auto* stream = static_cast<TcpStream*>(request->data);
  stream->pendingBytes_ -= write->size;
  WriteRequest::destroy(write);
  if (stream->handler_ == nullptr || stream->closing_) {
    return;
  }
  if (status != 0) {
    stream->handler_->onError(status);
    return;
  }
  if (stream->pendingBytes_ == 0) {
    stream->handler_->onDrained();
  }
}

void TcpStream::shutdownWrite() {
  if (shutdown_ || closing_) {
    return;
  }
  shutdown_ = true;
  uv_os_fd_t fd = -1;
  if (pendingBytes_ == 0 && uv_fileno(reinterpret_cast<uv_handle_t*>(&tcp_), &fd) == 0) {
    // Nothing queued: the FIN goes now. libuv's own shutdown would wait for a writable event
    // first, which costs two epoll_ctl calls and a loop iteration for the same result.
    ::shutdown(fd, SHUT_WR);
    shutdownDone_ = true;
    if (closeWhenFlushed_) {
      close();
    }
    return;
  }
  auto* request = new uv_shutdown_t;
  request->data = this;
  if (uv_shutdown(request, reinterpret_cast<uv_stream_t*>(&tcp_), onShutdownDone) != 0) {
    delete request;
    if (closeWhenFlushed_) {
      close();
    }
  }
}

void TcpStream::onShutdownDone(uv_shutdown_t* request, int) noexcept {
  // Called before the close callback (UV_ECANCELED for a stream closed meanwhile).
  auto* stream = static_cast<TcpStream*>(request->data);
  delete request;
  stream->shutdownDone_ = true;
  if (stream->closeWhenFlushed_) {
    stream->close();
  }
}

void TcpStream::closeAfterFlush() {
  handler_ = nullptr;
  if (closing_) {
    return;
  }
  pauseReading();
  closeWhenFlushed_ = true;
  if (shutdownDone_ || pendingBytes_ > 0 || peerEnded_) {
    // Either nothing is left to flush; or the other side is not reading what it was sent
    // already, and waiting for it would let a client hold the descriptor; or the other side has
    // ended, and the close's own FIN follows what the kernel holds (a shutdown first would
    // only cost a system call, failing with ENOTCONN once the peer has gone).
    close();
    return;
  }
  if (shutdown_) {
    // A shutdown is already under way; its callback closes the stream.
    return;
  }
  shutdownWrite();
}

void TcpStream::close() {
  handler_ = nullptr;
  if (closing_) {
    return;
  }
  closing_ = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&tcp_), onClosed);
}

void TcpStream::onClosed(uv_handle_t* handle) noexcept {
  delete static_cast<TcpStream*>(handle->data);
}

} // namespace net
