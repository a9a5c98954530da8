// `postern ctl`: reads [admin] from the config, sends one request, prints a table.
#include "proxy/admin/ctl.h"

#include "config/load.h"
#include "proxy/admin/http.h"

#include <nlohmann/json.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>

namespace admin {

namespace {

using nlohmann::json;

constexpr std::string_view kCtlUsage = R"(usage: postern ctl [--config FILE] COMMAND
  backends                     pools and servers: status, health, sessions, errors
  drain POOL SERVER            no new sessions for SERVER; running ones go on
  disable POOL SERVER          down for balancing until enabled (health checks go on)
  enable POOL SERVER           back to taking sessions
  sessions [--user U] [--client IP]
                               live sessions
  kick USER                    close USER's sessions with the protocol's goodbye
  listeners                    listeners and their sessions
FILE defaults to /etc/postern/postern.toml; its [admin] table says where the API is.
Exit status: 0 done, 1 refused by postern or unreachable, 2 usage or configuration error.
)";

int usage(const std::string& why) {
  std::cerr << "postern ctl: " << why << "\n" << kCtlUsage;
  return 2;
}

// One HTTP exchange over a blocking socket (the command line has no loop to share).
struct Reply {
  int status = 0;
  json body;
};

std::optional<Reply> exchange(const config::Admin& admin, const std::string& method,
                              const std::string& target, std::string& error) {
  std::string host = admin.listen.host;
  if (host == "0.0.0.0") {
    host = "127.0.0.1";
  } else if (host == "::") {
    host = "::1";
  }
  sockaddr_storage address{};
  socklen_t length = 0;
  if (admin.listen.ipv6) {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&address);
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(admin.listen.port);
    inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr);
    length = sizeof(sockaddr_in6);
  } else {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&address);
    v4->sin_family = AF_INET;
    v4->sin_port = htons(admin.listen.port);
    inet_pton(AF_INET, host.c_str(), &v4->sin_addr);
    length = sizeof(sockaddr_in);
  }
  int fd = socket(address.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    error = std::strerror(errno);
    return std::nullopt;
  }
  timeval timeout{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
  if (connect(fd, reinterpret_cast<sockaddr*>(&address), length) != 0) {
    error = "cannot reach " + admin.listen.text() + ": " + std::strerror(errno);
    ::close(fd);
    return std::nullopt;
  }
  std::string request = method + " " + target + " HTTP/1.1\r\nHost: " + admin.listen.text() +
                        "\r\nUser-Agent: postern-ctl\r\nConnection: close\r\n";
  if (!admin.token.empty()) {
    request += "Authorization: Bearer " + admin.token + "\r\n";
  }
  request += "\r\n";
  std::size_t sent = 0;
  while (sent < request.size()) {
    ssize_t n = ::send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      error = std::string("cannot send the request: ") + std::strerror(errno);
      ::close(fd);
      return std::nullopt;
    }
    sent += static_cast<std::size_t>(n);
  }
  std::string text;
  char buffer[16384];
  while (text.size() < (16u << 20)) {
    ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      break;
    }
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  Reply reply;
  std::string body;
  if (!http::parseResponse(text, reply.status, body)) {
    error = "no HTTP answer from " + admin.listen.text();
    return std::nullopt;
  }
  reply.body = json::parse(body, nullptr, false);
  if (reply.body.is_discarded()) {
    error = "the answer is not JSON";
    return std::nullopt;
  }
  return reply;
}

// A member of an object, or null: an answer from another version (or another service) must
// not crash the command.
const json& field(const json& object, const char* name) {
  static const json kNull;
  if (!object.is_object()) {
    return kNull;
  }
  auto found = object.find(name);
  return found == object.end() ? kNull : *found;
}

// The members of an array, or none.
const json& items(const json& value) {
  static const json kEmpty = json::array();
  return value.is_array() ? value : kEmpty;
}

std::string text(const json& value) {
  if (value.is_string()) {
    return value.get<std::string>();
  }
  if (value.is_null()) {
    return "-";
  }
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

// Columns padded to their widest cell, two spaces apart.
void printTable(const std::vector<std::string>& header,
                const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::size_t> widths(header.size());
  for (std::size_t i = 0; i < header.size(); ++i) {
    widths[i] = header[i].size();
    for (const auto& row : rows) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  auto print = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) {
        line += std::string(widths[i] - row[i].size() + 2, ' ');
      }
    }
    std::cout << line << '\n';
  };
  print(header);
  for (const auto& row : rows) {
    print(row);
  }
}

int printBackends(const json& body) {
  std::vector<std::vector<std::string>> rows;
  for (const json& pool : items(field(body, "pools"))) {
    for (const json& server : items(field(pool, "servers"))) {
      rows.push_back({text(field(pool, "pool")), text(field(server, "server")),
                      text(field(server, "status")), text(field(server, "health")),
                      text(field(server, "state")), text(field(server, "sessions")),
                      text(field(server, "errors"))});
    }
  }
  printTable({"POOL", "SERVER", "STATUS", "HEALTH", "STATE", "SESSIONS", "ERRORS"}, rows);
  return 0;
}

int printSessions(const json& body) {
  std::vector<std::vector<std::string>> rows;
  for (const json& session : items(field(body, "sessions"))) {
    rows.push_back({text(field(session, "id")), text(field(session, "listener")),
                    text(field(session, "protocol")), text(field(session, "client")),
                    text(field(session, "user")), text(field(session, "backend")),
                    text(field(session, "since")), text(field(session, "bytes_in")),
                    text(field(session, "bytes_out"))});
  }
  printTable(
      {"ID", "LISTENER", "PROTOCOL", "CLIENT", "USER", "BACKEND", "SINCE", "BYTES_IN", "BYTES_OUT"},
      rows);
  return 0;
}

int printListeners(const json& body) {
  std::vector<std::vector<std::string>> rows;
  for (const json& listener : items(field(body, "listeners"))) {
    rows.push_back({text(field(listener, "name")), text(field(listener, "protocol")),
                    text(field(listener, "listen")), text(field(listener, "tls")),
                    text(field(listener, "mode")), text(field(listener, "backend")),
                    text(field(listener, "sessions"))});
  }
  printTable({"LISTENER", "PROTOCOL", "LISTEN", "TLS", "MODE", "BACKEND", "SESSIONS"}, rows);
  return 0;
}

int runCommand(const std::vector<std::string_view>& given) {
  std::vector<std::string_view> args = given;
  std::string configPath = "/etc/postern/postern.toml";
  if (args.size() >= 2 && args[0] == "--config") {
    configPath = std::string(args[1]);
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.empty()) {
    return usage("no command given");
  }
  std::string method = "GET";
  std::string target;
  std::string_view command = args[0];
  if (command == "backends" && args.size() == 1) {
    target = "/v1/backends";
  } else if (command == "listeners" && args.size() == 1) {
    target = "/v1/listeners";
  } else if ((command == "drain" || command == "enable" || command == "disable") &&
             args.size() == 3) {
    method = "POST";
    target = "/v1/backends/" + http::percentEncode(args[1]) + "/" + http::percentEncode(args[2]) +
             "/" + std::string(command);
  } else if (command == "kick" && args.size() == 2) {
    method = "POST";
    target = "/v1/sessions/kick?user=" + http::percentEncode(args[1]);
  } else if (command == "sessions") {
    std::string query;
    for (std::size_t i = 1; i < args.size(); i += 2) {
      if (i + 1 >= args.size() || (args[i] != "--user" && args[i] != "--client")) {
        return usage("sessions takes --user U and --client IP");
      }
      query += (query.empty() ? "?" : "&") + std::string(args[i].substr(2)) + "=" +
               http::percentEncode(args[i + 1]);
    }
    target = "/v1/sessions" + query;
  } else if (command == "-h" || command == "--help") {
    std::cout << kCtlUsage;
    return 0;
  } else {
    return usage("unknown command or wrong arguments: " + std::string(command));
  }

  auto loaded = config::loadFile(configPath);
  if (!loaded) {
    for (const config::Diagnostic& diagnostic : loaded.error()) {
      std::cerr << diagnostic.text() << '\n';
    }
    return 2;
  }
  if (!loaded->admin.enabled) {
    std::cerr << "postern ctl: " << configPath
              << " has no [admin] listen address; the runtime API is off\n";
    return 2;
  }
  std::string error;
  auto reply = exchange(loaded->admin, method, target, error);
  if (!reply) {
    std::cerr << "postern ctl: " << error << '\n';
    return 1;
  }
  if (reply->status != 200) {
    std::cerr << "postern ctl: " << reply->status << " " << http::reasonPhrase(reply->status)
              << ": "
              << (field(reply->body, "error").is_string() ? text(field(reply->body, "error"))
                                                          : "no reason given")
              << '\n';
    return 1;
  }
  const json& body = reply->body;
  if (command == "backends") {
    return printBackends(body);
  }
  if (command == "listeners") {
    return printListeners(body);
  }
  if (command == "sessions") {
    return printSessions(body);
  }
  if (command == "kick") {
    const json& kicked = field(body, "kicked");
    std::size_t count = kicked.is_number_unsigned() ? kicked.get<std::size_t>() : 0;
    std::cout << "kicked " << count << (count == 1 ? " session" : " sessions") << " of "
              << text(field(body, "user")) << '\n';
    return count == 0 ? 1 : 0;
  }
  const json& server = field(body, "server");
  std::cout << text(field(body, "pool")) << " " << text(field(server, "server")) << ": "
            << text(field(server, "state")) << " (status " << text(field(server, "status")) << ", "
            << text(field(server, "sessions")) << " sessions)\n";
  return 0;
}

} // namespace

int runCtl(const std::vector<std::string_view>& given) {
  try {
    return runCommand(given);
  } catch (const std::exception& error) { // (a JSON surprise; the answers are read defensively)
    std::cerr << "postern ctl: " << error.what() << '\n';
    return 1;
  }
}

} // namespace admin
