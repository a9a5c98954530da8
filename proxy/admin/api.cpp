// The runtime API's routes and JSON (nlohmann/json, from Debian: the API writes JSON and
// `postern ctl` reads it, and a kept library beats writing both halves ourselves).
#include "proxy/admin/api.h"

#include "proxy/log.h"
#include "proxy/protocol/line_reader.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <ctime>
#include <optional>

namespace admin {

namespace {

using nlohmann::json;

std::string dump(const json& value) {
  // Replacing bad UTF-8 (a user name as a client sent it) instead of throwing.
  return value.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}

Response jsonResponse(const json& value, int status = 200) {
  Response response;
  response.status = status;
  response.body = dump(value);
  return response;
}

std::string rfc3339(std::chrono::system_clock::time_point time) {
  std::time_t seconds = std::chrono::system_clock::to_time_t(time);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

// Compares without stopping at the first difference, so timing tells nothing of the token
// beyond its length.
bool sameSecret(std::string_view given, std::string_view token) {
  if (given.size() != token.size()) {
    return false;
  }
  unsigned char difference = 0;
  for (std::size_t i = 0; i < given.size(); ++i) {
    difference |= static_cast<unsigned char>(given[i] ^ token[i]);
  }
  return difference == 0;
}

// RFC 4648 base64 (padding required), for Basic credentials; nullopt when malformed.
std::optional<std::string> decodeBase64(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') {
      return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
      return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
      return c - '0' + 52;
    }
    return c == '+' ? 62 : c == '/' ? 63 : -1;
  };
  if (text.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  for (std::size_t i = 0; i < text.size(); i += 4) {
    int padding = (text[i + 3] == '=' ? 1 : 0) + (text[i + 2] == '=' ? 1 : 0);
    if (padding > 0 && i + 4 != text.size()) {
      return std::nullopt;
    }
    std::uint32_t group = 0;
    for (std::size_t j = 0; j < 4; ++j) {
      int v = j >= 4 - static_cast<std::size_t>(padding) ? 0 : value(text[i + j]);
      if (v < 0) {
        return std::nullopt;
      }
      group = group << 6 | static_cast<std::uint32_t>(v);
    }
    out.push_back(static_cast<char>(group >> 16));
    if (padding < 2) {
      out.push_back(static_cast<char>(group >> 8 & 0xff));
    }
    if (padding < 1) {
      out.push_back(static_cast<char>(group & 0xff));
    }
  }
  return out;
}

// The token from `Authorization: Bearer TOKEN`, or from Basic credentials whose password is the
// token (so a browser can open the status page: it prompts for Basic and cannot send Bearer).
std::optional<std::string> presentedToken(std::string_view authorization) {
  if (protocol::startsWithNoCase(authorization, "bearer ")) {
    return std::string(authorization.substr(7));
  }
  if (protocol::startsWithNoCase(authorization, "basic ")) {
    auto credentials = decodeBase64(authorization.substr(6));
    if (credentials && credentials->find(':') != std::string::npos) {
      return credentials->substr(credentials->find(':') + 1);
    }
  }
  return std::nullopt;
}

// What a server's row says in one word: the API's state first, then the health checks.
std::string condition(const ServerControl& server) {
  ServerState state = server.state.load();
  if (state != ServerState::Enabled) {
    return toString(state);
  }
  return server.up.load() ? "up" : "down";
}

json serverJson(const ServerControl& server) {
  return {{"server", server.server},
          {"state", toString(server.state.load())},
          {"health", server.up.load() ? "up" : "down"},
          {"status", condition(server)},
          {"sessions", server.active.load()},
          {"errors", server.errors.load()}};
}

const char* balanceName(config::Balance balance) {
  switch (balance) {
  case config::Balance::RoundRobin:
    return "round_robin";
  case config::Balance::LeastConn:
    return "least_conn";
  case config::Balance::SourceHash:
    return "source_hash";
  case config::Balance::UserHash:
    return "user_hash";
  }
  return "?";
}

std::string escapeHtml(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
    case '&':
      out += "&amp;";
      break;
    case '<':
      out += "&lt;";
      break;
    case '>':
      out += "&gt;";
      break;
    case '"':
      out += "&quot;";
      break;
    case '\'':
      out += "&#39;";
      break;
    default:
      out.push_back(c);
    }
  }
  return out;
}

} // namespace

Response errorResponse(int status, const std::string& message) {
  return jsonResponse({{"error", message}}, status);
}

Response Api::handle(const http::Request& request, const std::string& remote) {
  if (!token_.empty()) {
    std::optional<std::string> given = presentedToken(request.authorization);
    if (!given || !sameSecret(*given, token_)) {
      logging::warn("admin request refused", {{"client", remote},
                                              {"path", request.path},
                                              {"reason", given ? "wrong token" : "no token"}});
      Response refused = errorResponse(401, "a valid bearer token is required");
      refused.headers = "WWW-Authenticate: Bearer realm=\"postern\"\r\n"
                        "WWW-Authenticate: Basic realm=\"postern\", charset=\"UTF-8\"\r\n";
      return refused;
    }
  }
  const std::vector<std::string>& path = request.segments;
  bool get = request.method == "GET";
  bool post = request.method == "POST";
  auto only = [&](bool allowed, const char* methods, auto route) -> Response {
    if (!allowed) {
      Response wrong = errorResponse(405, std::string("use ") + methods);
      wrong.headers = std::string("Allow: ") + methods + "\r\n";
      return wrong;
    }
    return route();
  };
  if (path.empty()) {
    return only(get, "GET", [&] { return statusPage(); });
  }
  if (path.size() >= 2 && path[0] == "v1") {
    if (path[1] == "backends" && path.size() == 2) {
      return only(get, "GET", [&] { return backends(); });
    }
    if (path[1] == "backends" && path.size() == 5) {
      return only(post, "POST", [&] { return serverAction(request, remote); });
    }
    if (path[1] == "sessions" && path.size() == 2) {
      return only(get, "GET", [&] { return sessions(request); });
    }
    if (path[1] == "sessions" && path.size() == 3 && path[2] == "kick") {
      return only(post, "POST", [&] { return kick(request, remote); });
    }
    if (path[1] == "listeners" && path.size() == 2) {
      return only(get, "GET", [&] { return listeners(); });
    }
  }
  return errorResponse(404, "no such resource: " + request.path);
}

Response Api::backends() const {
  Snapshot snapshot = control_.snapshot();
  std::vector<std::shared_ptr<ServerControl>> servers = control_.servers();
  json pools = json::array();
  if (snapshot.config != nullptr) {
    for (const config::Backend& backend : snapshot.config->backends) {
      json list = json::array();
      for (const auto& server : servers) {
        if (server->pool == backend.name) {
          list.push_back(serverJson(*server));
        }
      }
      pools.push_back({{"pool", backend.name},
                       {"balance", balanceName(backend.balance)},
                       {"tls", config::toString(backend.tls)},
                       {"servers", std::move(list)}});
    }
  }
  return jsonResponse({{"pools", std::move(pools)}});
}

Response Api::serverAction(const http::Request& request, const std::string& remote) {
  const std::string& pool = request.segments[2];
  const std::string& name = request.segments[3];
  const std::string& action = request.segments[4];
  ServerState state;
  if (action == "drain") {
    state = ServerState::Drained;
  } else if (action == "disable") {
    state = ServerState::Disabled;
  } else if (action == "enable") {
    state = ServerState::Enabled;
  } else {
    return errorResponse(404, "no such action \"" + action + "\" (drain, disable, enable)");
  }
  ServerState before = ServerState::Enabled;
  std::shared_ptr<ServerControl> server = control_.setState(pool, name, state, before);
  if (server == nullptr) {
    Snapshot snapshot = control_.snapshot();
    bool poolKnown = snapshot.config != nullptr && snapshot.config->findBackend(pool) != nullptr;
    return errorResponse(404, poolKnown ? "pool \"" + pool + "\" has no server \"" + name + "\""
                                        : "no pool \"" + pool + "\"");
  }
  logging::info("backend server state set", {{"backend", pool},
                                             {"server", name},
                                             {"state", toString(state)},
                                             {"was", toString(before)},
                                             {"by", remote}});
  return jsonResponse({{"pool", pool}, {"server", serverJson(*server)}});
}

Response Api::sessions(const http::Request& request) const {
  json list = json::array();
  for (const SessionView& session :
       control_.sessions(request.parameter("user"), request.parameter("client"))) {
    list.push_back({{"id", session.id},
                    {"listener", session.listener},
                    {"protocol", session.protocol},
                    {"client", session.client},
                    {"user", session.user.empty() ? json(nullptr) : json(session.user)},
                    {"backend", session.backend.empty() ? json(nullptr) : json(session.backend)},
                    {"since", rfc3339(session.since)},
                    {"bytes_in", session.bytesIn},
                    {"bytes_out", session.bytesOut}});
  }
  return jsonResponse({{"sessions", std::move(list)}});
}

Response Api::kick(const http::Request& request, const std::string& remote) {
  std::string user = request.parameter("user");
  if (user.empty()) {
    return errorResponse(400, "say whose sessions: ?user=NAME");
  }
  std::size_t count = control_.kick(user, remote);
  logging::info("sessions kicked",
                {{"user", user}, {"sessions", std::to_string(count)}, {"by", remote}});
  return jsonResponse({{"user", user}, {"kicked", count}});
}

Response Api::listeners() const {
  Snapshot snapshot = control_.snapshot();
  std::map<std::string, std::size_t> active = control_.sessionsPerListener();
  json list = json::array();
  if (snapshot.config != nullptr) {
    for (const config::Listener& listener : snapshot.config->listeners) {
      config::SocketAddress bound = listener.listen;
      if (auto port = snapshot.ports.find(listener.name); port != snapshot.ports.end()) {
        bound.port = static_cast<std::uint16_t>(port->second);
      }
      list.push_back({{"name", listener.name},
                      {"protocol", config::toString(listener.protocol)},
                      {"listen", bound.text()},
                      {"tls", config::toString(listener.tls)},
                      {"mode", listener.mode == config::Mode::Login ? "login" : "passthrough"},
                      {"backend", listener.backend},
                      {"routes", listener.routes.size()},
                      {"sessions", active[listener.name]}});
    }
  }
  return jsonResponse({{"listeners", std::move(list)}});
}

Response Api::statusPage() const {
  Snapshot snapshot = control_.snapshot();
  std::vector<std::shared_ptr<ServerControl>> servers = control_.servers();
  std::map<std::string, std::size_t> active = control_.sessionsPerListener();
  auto now = std::chrono::system_clock::now();
  std::string page = R"(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>postern status</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;min-width:40em}th,td{padding:.25em .8em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f3f3f3}td.n{text-align:right}.muted{color:#777}
.up{color:#17602a;font-weight:600}.down{color:#b00020;font-weight:600}
.drained,.disabled{color:#8a5a00;font-weight:600}.soon{color:#b00020;font-weight:600}
</style></head><body>
)";
  page += "<h1>postern</h1><p class=\"muted\">" + std::string("version ") + POSTERN_VERSION +
          " &middot; up since " + rfc3339(snapshot.started) + " &middot; page generated " +
          rfc3339(now) + " (refreshes every 5 s)</p>\n";

  page += "<h2>Listeners</h2>\n<table id=\"listeners\"><tr><th>Listener</th><th>Protocol</th>"
          "<th>Address</th><th>TLS</th><th>Mode</th><th>Backend</th><th>Sessions</th></tr>\n";
  if (snapshot.config != nullptr) {
    for (const config::Listener& listener : snapshot.config->listeners) {
      config::SocketAddress bound = listener.listen;
      if (auto port = snapshot.ports.find(listener.name); port != snapshot.ports.end()) {
        bound.port = static_cast<std::uint16_t>(port->second);
      }
      page += "<tr data-listener=\"" + escapeHtml(listener.name) + "\"><td>" +
              escapeHtml(listener.name) + "</td><td>" + config::toString(listener.protocol) +
              "</td><td>" + escapeHtml(bound.text()) + "</td><td>" +
              config::toString(listener.tls) + "</td><td>" +
              (listener.mode == config::Mode::Login ? "login" : "passthrough") + "</td><td>" +
              escapeHtml(listener.backend) + "</td><td class=\"n\">" +
              std::to_string(active[listener.name]) + "</td></tr>\n";
    }
  }
  page += "</table>\n";

  page += "<h2>Backends</h2>\n<table id=\"servers\"><tr><th>Pool</th><th>Server</th>"
          "<th>Status</th><th>Health</th><th>Sessions</th><th>Errors</th></tr>\n";
  for (const auto& server : servers) {
    std::string status = condition(*server);
    page += "<tr data-pool=\"" + escapeHtml(server->pool) + "\" data-server=\"" +
            escapeHtml(server->server) + "\" data-status=\"" + status + "\"><td>" +
            escapeHtml(server->pool) + "</td><td>" + escapeHtml(server->server) +
            "</td><td class=\"" + status + "\">" + status + "</td><td class=\"" +
            (server->up.load() ? "up\">up" : "down\">down") + "</td><td class=\"n\">" +
            std::to_string(server->active.load()) + "</td><td class=\"n\">" +
            std::to_string(server->errors.load()) + "</td></tr>\n";
  }
  page += "</table>\n";

  page += "<h2>Certificates</h2>\n<table id=\"certificates\"><tr><th>Subject</th><th>Key</th>"
          "<th>Expires</th><th>Days left</th></tr>\n";
  for (const Snapshot::Certificate& certificate : snapshot.certificates) {
    auto notAfter = std::chrono::system_clock::time_point(
        std::chrono::seconds(static_cast<std::int64_t>(certificate.notAfter)));
    auto days = std::chrono::duration_cast<std::chrono::hours>(notAfter - now).count() / 24;
    page += "<tr><td>" + escapeHtml(certificate.subject) + "</td><td>" +
            escapeHtml(certificate.keyType) + "</td><td>" + rfc3339(notAfter) +
            "</td><td class=\"n" + (days < 14 ? " soon" : "") + "\">" + std::to_string(days) +
            "</td></tr>\n";
  }
  if (snapshot.certificates.empty()) {
    page += "<tr><td colspan=\"4\" class=\"muted\">no client-facing certificates</td></tr>\n";
  }
  page += "</table>\n</body></html>\n";
  Response response;
  response.contentType = "text/html; charset=utf-8";
  response.body = std::move(page);
  return response;
}

} // namespace admin
