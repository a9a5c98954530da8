// The interface sessions talk to: a byte stream that is plain TCP or TLS stacked on TCP.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <span>

namespace net {

// Reported by onError when the failure was TLS (handshake or record), not the socket.
inline constexpr int kTlsFailure = -200001;

// What a stream reports to its owner. Called from the loop thread only.
class StreamHandler {
public:
  virtual void onConnected(int status) = 0;            // outgoing TCP only; 0 or a uv error
  virtual void onSecured() = 0;                        // TLS handshake finished
  virtual void onRead(std::span<const char> data) = 0; // data is only valid during the call
  virtual void onEnd() = 0;                            // the other side finished sending
  virtual void onError(int status) = 0;                // the stream is dead (uv error or TLS)
  virtual void onDrained() = 0;                        // every queued write reached the kernel

protected:
  ~StreamHandler() = default;
};

class ByteStream {
public:
  // Bytes queued in user space beyond which the owner should stop reading the other side.
  static constexpr std::size_t kHighWater = 256 * 1024;

  virtual void setHandler(StreamHandler* handler) = 0;
  virtual int startReading() = 0;
  virtual void pauseReading() = 0;
  // Sends bytes; returns 0 or a uv error (the stream should then be closed).
  virtual int write(std::span<const char> data) = 0;
  virtual std::size_t pendingBytes() const = 0;
  // Half-close after the queued writes (TLS: close_notify first).
  virtual void shutdownWrite() = 0;
  // Closes now; the memory is reclaimed by the loop later. Idempotent.
  virtual void close() = 0;
  // Detaches the owner, sends what is queued, then closes.
  virtual void closeAfterFlush() = 0;
  virtual const sockaddr_storage& peer() const = 0;

protected:
  ~ByteStream() = default;
};

// Something stacked on a TCP stream (TLS) that must live exactly as long as it: the TCP stream
// frees it in its own close callback, never while one of its callbacks is on the stack.
class StreamLayer {
public:
  virtual ~StreamLayer() = default;
};

} // namespace net
