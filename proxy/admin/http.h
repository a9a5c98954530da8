// The runtime API's HTTP/1.1: a bounded request reader and the response text, as a pure codec
// (bytes in, a request or a refusal out; no sockets), so it is unit-tested and fuzzed.
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace admin::http {

struct Request {
  std::string method;                                     // "GET", "POST", ...
  std::string path;                                       // percent-decoded, without the query
  std::vector<std::pair<std::string, std::string>> query; // decoded, in order
  std::string authorization;                              // the header's value, as sent

  // The first value of query parameter `name`, or "" when absent.
  std::string parameter(std::string_view name) const;
  bool hasParameter(std::string_view name) const;
  // The path split at '/', each segment decoded ("/v1/backends/imap" -> v1, backends, imap).
  std::vector<std::string> segments;
};

// Reads one request. The head (request line and headers) is bounded by kMaxHead; a request
// with a body (Content-Length above 0, any Transfer-Encoding) is refused: the API takes its
// arguments in the path and query only. Every connection serves one request.
class RequestReader {
public:
  static constexpr std::size_t kMaxHead = 8192;
  enum class Status { Incomplete, Complete, Refused };

  Status feed(std::span<const char> data);
  Status status() const { return status_; }
  const Request& request() const { return request_; }
  // With Status::Refused: the HTTP status to answer (400, 413, 431, 501, 505) and why.
  int errorStatus() const { return errorStatus_; }
  const std::string& errorText() const { return errorText_; }

private:
  Status refuse(int status, std::string why);
  Status parse();

  std::string head_;
  Request request_;
  Status status_ = Status::Incomplete;
  int errorStatus_ = 0;
  std::string errorText_;
};

// Decodes %XX escapes (and '+' as a space when `plusIsSpace`); false for a broken escape or a
// decoded NUL.
bool percentDecode(std::string_view text, std::string& out, bool plusIsSpace);
// Encodes everything but unreserved characters (RFC 3986 §2.3), for URLs `postern ctl` builds.
std::string percentEncode(std::string_view text);

const char* reasonPhrase(int status);

// A whole response that closes the connection: status line, Content-Type, Content-Length,
// Cache-Control: no-store, `extraHeaders` (each ending CRLF), then the body.
std::string response(int status, std::string_view contentType, std::string_view body,
                     std::string_view extraHeaders = "");

// The client side, for `postern ctl`: splits a response into its status and body. False when
// the text is no complete HTTP/1.x response.
bool parseResponse(std::string_view text, int& status, std::string& body);

} // namespace admin::http
