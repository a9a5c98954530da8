// The runtime API (SPEC §14): one HTTP request in, one response out, against the shared
// Control. No sockets here (admin_server.cpp carries the bytes), so every route is unit-tested.
#pragma once

#include "proxy/admin/control.h"
#include "proxy/admin/http.h"

#include <string>

namespace admin {

struct Response {
  int status = 200;
  std::string contentType = "application/json";
  std::string body;
  std::string headers; // extra header fields, each ending CRLF

  std::string text() const { return http::response(status, contentType, body, headers); }
};

class Api {
public:
  // `token`: what `Authorization: Bearer` must carry; empty accepts every request (the
  // listener is then loopback-only, which the config checker enforces).
  Api(Control& control, std::string token) : control_(control), token_(std::move(token)) {}
  void setToken(std::string token) { token_ = std::move(token); }

  // `remote`: the client's ip:port, logged with every change it asks for.
  Response handle(const http::Request& request, const std::string& remote);

private:
  Response backends() const;
  Response serverAction(const http::Request& request, const std::string& remote);
  Response sessions(const http::Request& request) const;
  Response kick(const http::Request& request, const std::string& remote);
  Response listeners() const;
  Response statusPage() const;

  Control& control_;
  std::string token_;
};

// A JSON error body: {"error": "..."}.
Response errorResponse(int status, const std::string& message);

} // namespace admin
