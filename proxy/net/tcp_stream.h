// A TCP connection on the libuv loop: reads into the loop's shared buffer, writes without copying
// when the socket takes the bytes at once, and frees itself in its close callback.
#pragma once

#include "proxy/net/byte_stream.h"

#include <uv.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

namespace net {

// The loop-wide state streams share: one read buffer, because a read callback consumes its bytes
// before the next read starts. Idle sessions therefore hold no read buffer at all.
struct LoopContext {
  // A backend connection is read up to 256 KiB at a time: a download then costs a quarter of
  // the reads, wake-ups and TLS writes it would at 64 KiB (issue 18). A client connection is
  // read 64 KiB at a time, which bounds what one paused client can make postern hold.
  static constexpr std::size_t kReadBufferSize = 256 * 1024;
  static constexpr std::size_t kClientReadSize = 64 * 1024;
  char readBuffer[kReadBufferSize];
  bool readBufferInUse = false;
  // Ciphertext produced by a TLS engine call, sent to that stream's socket right after the call
  // (and before any plaintext is handed on), so it is empty between calls.
  std::string tlsOutput;
};

LoopContext& loopContext(uv_loop_t* loop);
void attachLoopContext(uv_loop_t* loop, LoopContext* context);

// "192.0.2.7:40000" / "[2001:db8::7]:40000" for logs; "-" for an address that is none.
std::string formatAddress(const sockaddr_storage& address);
// The IP alone, without brackets or port ("2001:db8::7"); empty for an address that is none.
std::string formatIp(const sockaddr_storage& address);
// The port as a number; 0 for an address that is none.
unsigned portOf(const sockaddr_storage& address);
// Whether the OS gave an IPv4 or IPv6 address (getpeername fails for a connection reset
// before its accept completed).
inline bool isInternetAddress(const sockaddr_storage& address) {
  return address.ss_family == AF_INET || address.ss_family == AF_INET6;
}

class TcpStream final : public ByteStream {
public:
  // Accepts a pending connection from `server`; nullptr when that fails.
  static TcpStream* accept(uv_stream_t* server, StreamHandler* handler);
  // Starts a connection, already reading (bytes arrive after onConnected); the handler hears
  // onConnected. nullptr (and `status`) when it cannot start.
  static TcpStream* connect(uv_loop_t* loop, const sockaddr* address, StreamHandler* handler,
                            int& status);

  void setHandler(StreamHandler* handler) override { handler_ = handler; }
  int startReading() override;
  void pauseReading() override;
  bool reading() const { return reading_; }

  // Sends bytes; what the socket does not take at once is copied and queued.
  int write(std::span<const char> data) override;
  std::size_t pendingBytes() const override { return pendingBytes_; }

  // Half-close: FIN after the queued writes.
  void shutdownWrite() override;

  // Closes now; queued writes are dropped. The object is freed by the loop later. Idempotent.
  void close() override;
  // Detaches the owner, sends what is queued, then closes. For last words ("* BYE ...").
  void closeAfterFlush() override;

  const sockaddr_storage& peer() const override { return peer_; }
  // The address the peer connected to (asked of the kernel when wanted: only a client's is).
  sockaddr_storage local() const;
  uv_loop_t* loop() const { return tcp_.loop; }

  // The peer will send nothing more (a layer above saw it say so: TLS close_notify); its FIN,
  // read here, says the same. closeAfterFlush() then closes without a shutdown first.
  void notePeerEnded() { peerEnded_ = true; }

  // Stacks a layer (TLS) on this stream; it is freed together with the stream.
  void adopt(std::unique_ptr<StreamLayer> layer) { layer_ = std::move(layer); }

private:
  explicit TcpStream(StreamHandler* handler) : handler_(handler) {}
  ~TcpStream() = default;
  std::unique_ptr<StreamLayer> layer_;

  static void onAlloc(uv_handle_t* handle, std::size_t suggested, uv_buf_t* buffer) noexcept;
  static void onReadDone(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buffer) noexcept;
  static void onWriteDone(uv_write_t* request, int status) noexcept;
  static void onShutdownDone(uv_shutdown_t* request, int status) noexcept;
  static void onConnectDone(uv_connect_t* request, int status) noexcept;
  static void onClosed(uv_handle_t* handle) noexcept;
  void fillAddresses();

  uv_tcp_t tcp_{};
  // The connect and shutdown requests are allocated when made (each stream makes at most one
  // of each, and an idle session none): 176 bytes less per stream that sit in memory.
  StreamHandler* handler_;
  sockaddr_storage peer_{};
  std::size_t pendingBytes_ = 0;
  bool reading_ = false;
  bool shutdown_ = false;
  bool shutdownDone_ = false;
  bool closing_ = false;
  bool closeWhenFlushed_ = false;
  bool peerEnded_ = false;  // its FIN was read
  bool largeReads_ = false; // a backend connection (see LoopContext)
};

} // namespace net
