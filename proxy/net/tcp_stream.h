// A TCP connection on the libuv loop: reads into the loop's shared buffer, writes without copying
// when the socket takes the bytes at once, and frees itself in its close callback.
#pragma once

#include <uv.h>

#include <cstddef>
#include <span>
#include <string>

namespace net {

// What a stream reports to its owner. Called from the loop thread only.
class StreamHandler {
public:
  virtual void onConnected(int status) = 0;            // outgoing streams only; 0 or a uv error
  virtual void onRead(std::span<const char> data) = 0; // data is only valid during the call
  virtual void onEnd() = 0;                            // the other side finished sending
  virtual void onError(int status) = 0;                // read or write failed; the stream is dead
  virtual void onDrained() = 0;                        // every queued write has reached the kernel

protected:
  ~StreamHandler() = default;
};

// The loop-wide state streams share: one read buffer, because a read callback consumes its bytes
// before the next read starts. Idle sessions therefore hold no read buffer at all.
struct LoopContext {
  static constexpr std::size_t kReadBufferSize = 64 * 1024;
  char readBuffer[kReadBufferSize];
  bool readBufferInUse = false;
};

LoopContext& loopContext(uv_loop_t* loop);
void attachLoopContext(uv_loop_t* loop, LoopContext* context);

std::string formatAddress(const sockaddr_storage& address);

class TcpStream {
public:
  // Bytes queued in user space beyond which the owner should stop reading the other side.
  static constexpr std::size_t kHighWater = 256 * 1024;

  // Accepts a pending connection from `server`; nullptr when that fails.
  static TcpStream* accept(uv_stream_t* server, StreamHandler* handler);
  // Starts a connection; the handler hears onConnected. nullptr (and `status`) when it cannot start.
  static TcpStream* connect(uv_loop_t* loop, const sockaddr* address, StreamHandler* handler,
                            int& status);

  int startReading();
  void pauseReading();
  bool reading() const { return reading_; }

  // Sends bytes; what the socket does not take at once is copied and queued. Returns 0 or a uv
  // error (the stream should then be closed).
  int write(std::span<const char> data);
  std::size_t pendingBytes() const { return pendingBytes_; }

  // Half-close: FIN after the queued writes.
  void shutdownWrite();

  // Closes now; queued writes are dropped. The object is freed by the loop later. Idempotent.
  void close();
  // Detaches the owner, sends what is queued, then closes. For last words ("* BYE ...").
  void closeAfterFlush();

  const sockaddr_storage& peer() const { return peer_; }
  const sockaddr_storage& local() const { return local_; }

private:
  explicit TcpStream(StreamHandler* handler) : handler_(handler) {}
  ~TcpStream() = default;

  static void onAlloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buffer) noexcept;
  static void onReadDone(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept;
  static void onWriteDone(uv_write_t* request, int status) noexcept;
  static void onShutdownDone(uv_shutdown_t* request, int status) noexcept;
  static void onConnectDone(uv_connect_t* request, int status) noexcept;
  static void onClosed(uv_handle_t* handle) noexcept;
  void fillAddresses();

  uv_tcp_t tcp_{};
  uv_connect_t connectRequest_{};
  uv_shutdown_t shutdownRequest_{};
  StreamHandler* handler_;
  sockaddr_storage peer_{};
  sockaddr_storage local_{};
  std::size_t pendingBytes_ = 0;
  bool reading_ = false;
  bool shutdown_ = false;
  bool shutdownDone_ = false;
  bool closing_ = false;
  bool closeWhenFlushed_ = false;
};

} // namespace net
