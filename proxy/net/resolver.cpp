// Asynchronous name resolution on the loop's thread pool (uv_getaddrinfo), cancellable.
#include "proxy/net/resolver.h"

#include <netdb.h>

#include <algorithm>
#include <cstring>

namespace net {

namespace {

std::vector<sockaddr_storage> collect(const addrinfo* result) {
  std::vector<sockaddr_storage> out;
  for (const addrinfo* entry = result; entry != nullptr; entry = entry->ai_next) {
    if (entry->ai_family != AF_INET && entry->ai_family != AF_INET6) {
      continue;
    }
    sockaddr_storage address{};
    std::memcpy(&address, entry->ai_addr, entry->ai_addrlen);
    // getaddrinfo repeats an address once per socket type unless told; keep each once.
    bool seen = std::any_of(out.begin(), out.end(), [&](const sockaddr_storage& other) {
      return std::memcmp(&other, &address, sizeof address) == 0;
    });
    if (!seen) {
      out.push_back(address);
    }
  }
  return out;
}

addrinfo hints() {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  return hints;
}

} // namespace

Resolution* Resolution::start(uv_loop_t* loop, const std::string& host, std::uint16_t port,
                              Done done) {
  auto* resolution = new Resolution();
  resolution->done_ = std::move(done);
  resolution->request_.data = resolution;
  addrinfo request = hints();
  std::string service = std::to_string(port);
  if (uv_getaddrinfo(loop, &resolution->request_, onResolved, host.c_str(), service.c_str(),
                     &request) != 0) {
    delete resolution; // "the callback will never be called"
    return nullptr;
  }
  return resolution;
}

void Resolution::cancel() {
  cancelled_ = true;
  done_ = nullptr;
  uv_cancel(reinterpret_cast<uv_req_t*>(&request_));
}

void Resolution::onResolved(uv_getaddrinfo_t* request, int status, addrinfo* result) noexcept {
  auto* resolution = static_cast<Resolution*>(request->data);
  std::vector<sockaddr_storage> addresses;
  if (status == 0) {
    addresses = collect(result);
  }
  uv_freeaddrinfo(result);
  if (!resolution->cancelled_ && resolution->done_) {
    Done done = std::move(resolution->done_);
    delete resolution;
    done(status, std::move(addresses));
    return;
  }
  delete resolution;
}

std::vector<sockaddr_storage> resolveNow(const std::string& host, std::uint16_t port,
                                         std::string& error) {
  addrinfo request = hints();
  addrinfo* result = nullptr;
  std::string service = std::to_string(port);
  int status = getaddrinfo(host.c_str(), service.c_str(), &request, &result);
  if (status != 0) {
    error = gai_strerror(status);
    return {};
  }
  std::vector<sockaddr_storage> out = collect(result);
  freeaddrinfo(result);
  return out;
}

} // namespace net
