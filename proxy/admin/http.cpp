// The runtime API's HTTP/1.1 codec: RFC 9112's request line and header fields, read strictly.
#include "proxy/admin/http.h"

#include "proxy/protocol/line_reader.h"

#include <algorithm>
#include <charconv>

namespace admin::http {

namespace {

bool isTokenChar(unsigned char c) {
  // RFC 9110 §5.6.2 tchar.
  if (c >= '0' && c <= '9') {
    return true;
  }
  if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') {
    return true;
  }
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  c = static_cast<char>(c | 0x20);
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  return -1;
}

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) {
    text.remove_prefix(1);
  }
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) {
    text.remove_suffix(1);
  }
  return text;
}

} // namespace

std::string Request::parameter(std::string_view name) const {
  for (const auto& [key, value] : query) {
    if (key == name) {
      return value;
    }
  }
  return "";
}

bool Request::hasParameter(std::string_view name) const {
  return std::any_of(query.begin(), query.end(),
                     [&](const auto& entry) { return entry.first == name; });
}

bool percentDecode(std::string_view text, std::string& out, bool plusIsSpace) {
  out.clear();
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      if (i + 2 >= text.size()) {
        return false;
      }
      int high = hexValue(text[i + 1]);
      int low = hexValue(text[i + 2]);
      if (high < 0 || low < 0 || (high == 0 && low == 0)) {
        return false;
      }
      out.push_back(static_cast<char>(high * 16 + low));
      i += 2;
    } else if (c == '+' && plusIsSpace) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return true;
}

std::string percentEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char c : text) {
    auto u = static_cast<unsigned char>(c);
    bool unreserved = (u >= '0' && u <= '9') || ((u | 0x20) >= 'a' && (u | 0x20) <= 'z') ||
                      c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(c);
    } else {
      out.push_back('%');
      out.push_back(kHex[u >> 4]);
      out.push_back(kHex[u & 15]);
    }
  }
  return out;
}

RequestReader::Status RequestReader::refuse(int status, std::string why) {
  status_ = Status::Refused;
  errorStatus_ = status;
  errorText_ = std::move(why);
  return status_;
}

RequestReader::Status RequestReader::feed(std::span<const char> data) {
  if (status_ != Status::Incomplete) {
    return status_; // one request per connection; what follows it is ignored
  }
  std::size_t room = kMaxHead - head_.size();
  std::size_t take = std::min(room, data.size());
  std::size_t searchFrom = head_.size() >= 3 ? head_.size() - 3 : 0;
  head_.append(data.data(), take);
  if (head_.find("\r\n\r\n", searchFrom) != std::string::npos) {
    return parse();
  }
  if (head_.size() >= kMaxHead) {
    return refuse(431, "the request head is larger than 8192 bytes");
  }
  return status_;
}

RequestReader::Status RequestReader::parse() {
  std::string_view head(head_);
  head = head.substr(0, head.find("\r\n\r\n") + 2);
  std::size_t lineEnd = head.find("\r\n");
  std::string_view line = head.substr(0, lineEnd);
  // request-line = method SP request-target SP HTTP-version (exactly one space each).
  std::size_t firstSpace = line.find(' ');
  std::size_t lastSpace = line.rfind(' ');
  if (firstSpace == std::string_view::npos || firstSpace == lastSpace || firstSpace == 0) {
    return refuse(400, "malformed request line");
  }
  std::string_view method = line.substr(0, firstSpace);
  std::string_view target = line.substr(firstSpace + 1, lastSpace - firstSpace - 1);
  std::string_view version = line.substr(lastSpace + 1);
  if (!std::all_of(method.begin(), method.end(),
                   [](char c) { return isTokenChar(static_cast<unsigned char>(c)); })) {
    return refuse(400, "malformed method");
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return refuse(version.starts_with("HTTP/") ? 505 : 400, "unsupported HTTP version");
  }
  if (target.empty() || target.front() != '/') {
    return refuse(400, "the request target must be an absolute path");
  }
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f) {
      return refuse(400, "malformed request target");
    }
  }
  request_.method = std::string(method);
  std::string_view rawPath = target.substr(0, target.find('?'));
  std::string_view rawQuery =
      target.size() > rawPath.size() ? target.substr(rawPath.size() + 1) : std::string_view();
  // Segments are decoded one by one, so an escaped '/' stays inside its segment.
  std::string decoded;
  std::string_view rest = rawPath.substr(1);
  while (!rest.empty()) {
    std::size_t slash = rest.find('/');
    std::string_view segment = rest.substr(0, slash);
    if (!percentDecode(segment, decoded, false)) {
      return refuse(400, "malformed escape in the path");
    }
    request_.segments.push_back(decoded);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  }
  if (!percentDecode(rawPath, request_.path, false)) {
    return refuse(400, "malformed escape in the path");
  }
  while (!rawQuery.empty()) {
    std::size_t amp = rawQuery.find('&');
    std::string_view pair = rawQuery.substr(0, amp);
    rawQuery = amp == std::string_view::npos ? std::string_view() : rawQuery.substr(amp + 1);
    if (pair.empty()) {
      continue;
    }
    std::size_t equals = pair.find('=');
    std::string key;
    std::string value;
    if (!percentDecode(pair.substr(0, equals), key, true) ||
        (equals != std::string_view::npos &&
         !percentDecode(pair.substr(equals + 1), value, true))) {
      return refuse(400, "malformed escape in the query");
    }
    request_.query.emplace_back(std::move(key), std::move(value));
  }

  bool sawHost = false;
  std::size_t at = lineEnd + 2;
  while (at < head.size()) {
    std::size_t end = head.find("\r\n", at);
    std::string_view field = head.substr(at, end - at);
    at = end + 2;
    std::size_t colon = field.find(':');
    if (colon == std::string_view::npos || colon == 0) {
      return refuse(400, "malformed header field");
    }
    std::string_view name = field.substr(0, colon);
    if (!std::all_of(name.begin(), name.end(),
                     [](char c) { return isTokenChar(static_cast<unsigned char>(c)); })) {
      return refuse(400, "malformed header field name"); // also a space before the colon
    }
    std::string_view value = trim(field.substr(colon + 1));
    for (char c : value) {
      auto u = static_cast<unsigned char>(c);
      if ((u < 0x20 && c != '\t') || u == 0x7f) {
        return refuse(400, "control character in a header field");
      }
    }
    if (protocol::equalsNoCase(name, "Authorization")) {
      if (!request_.authorization.empty()) {
        return refuse(400, "more than one Authorization field");
      }
      request_.authorization = std::string(value);
    } else if (protocol::equalsNoCase(name, "Host")) {
      if (sawHost) {
        return refuse(400, "more than one Host field");
      }
      sawHost = true;
    } else if (protocol::equalsNoCase(name, "Transfer-Encoding")) {
      return refuse(501, "request bodies are not accepted");
    } else if (protocol::equalsNoCase(name, "Content-Length")) {
      std::size_t length = 0;
      auto [ptr, error] = std::from_chars(value.data(), value.data() + value.size(), length);
      if (error != std::errc() || ptr != value.data() + value.size() || value.empty()) {
        return refuse(400, "malformed Content-Length");
      }
      if (length != 0) {
        return refuse(413, "request bodies are not accepted");
      }
    }
  }
  if (version == "HTTP/1.1" && !sawHost) {
    return refuse(400, "HTTP/1.1 requests need a Host field");
  }
  status_ = Status::Complete;
  return status_;
}

const char* reasonPhrase(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 400:
    return "Bad Request";
  case 401:
    return "Unauthorized";
  case 404:
    return "Not Found";
  case 405:
    return "Method Not Allowed";
  case 408:
    return "Request Timeout";
  case 413:
    return "Content Too Large";
  case 431:
    return "Request Header Fields Too Large";
  case 500:
    return "Internal Server Error";
  case 501:
    return "Not Implemented";
  case 505:
    return "HTTP Version Not Supported";
  default:
    return "Unknown";
  }
}

std::string response(int status, std::string_view contentType, std::string_view body,
                     std::string_view extraHeaders) {
  std::string out = "HTTP/1.1 " + std::to_string(status) + " " + reasonPhrase(status) + "\r\n";
  out += "Content-Type: ";
  out += contentType;
  out += "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  out += "Cache-Control: no-store\r\nConnection: close\r\n";
  out += extraHeaders;
  out += "\r\n";
  out += body;
  return out;
}

bool parseResponse(std::string_view text, int& status, std::string& body) {
  std::size_t headEnd = text.find("\r\n\r\n");
  if (!text.starts_with("HTTP/1.") || headEnd == std::string_view::npos || text.size() < 12) {
    return false;
  }
  auto [ptr, error] = std::from_chars(text.data() + 9, text.data() + 12, status);
  if (error != std::errc() || ptr != text.data() + 12) {
    return false;
  }
  body = std::string(text.substr(headEnd + 4));
  return true;
}

} // namespace admin::http
