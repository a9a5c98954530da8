// Asynchronous name resolution on the loop's thread pool (uv_getaddrinfo), cancellable.
#pragma once

#include <uv.h>

#include <functional>
#include <string>
#include <vector>

#include <sys/socket.h>

namespace net {

class Resolution {
public:
  using Done = std::function<void(int status, std::vector<sockaddr_storage> addresses)>;

  // Resolves `host` for TCP `port`; `done` runs once on the loop thread unless cancel() came
  // first. Returns nullptr (and calls nothing) when the lookup cannot start.
  static Resolution* start(uv_loop_t* loop, const std::string& host, std::uint16_t port, Done done);
  // The callback will not run; the request frees itself when libuv lets go of it.
  void cancel();

private:
  Resolution() = default;
  static void onResolved(uv_getaddrinfo_t* request, int status, addrinfo* result) noexcept;

  uv_getaddrinfo_t request_{};
  Done done_;
  bool cancelled_ = false;
};

// Blocking resolution for start-up, before the loop runs.
std::vector<sockaddr_storage> resolveNow(const std::string& host, std::uint16_t port,
                                         std::string& error);

} // namespace net
