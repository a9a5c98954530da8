// SMTP syntax (RFC 5321, 3207, 4954, 2920) as every SMTP dialogue reads it: the passthrough
// filter (before and after authentication), the login dialogue and its replay, backend
// STARTTLS and XCLIENT, and the health probe. One reading of command lines, reply lines and
// their ends, and EHLO keywords (SPEC §5.1).
#pragma once

#include "proxy/protocol/syntax.h"

#include <cstddef>
#include <string_view>

namespace protocol::smtp {

// SPEC §5.1: the reply to a command line holding a control byte (never relayed).
inline constexpr std::string_view kInvalidCharacters =
    "500 5.5.2 Error: invalid characters in command\r\n";
// SPEC §5.1: only postern tells a server who the client is.
inline constexpr std::string_view kNotPermitted = "550 5.7.1 Error: not permitted\r\n";
inline constexpr std::string_view kTooManyPipelined =
    "421 4.7.0 Error: too many pipelined commands\r\n";
inline constexpr std::string_view kLineTooLong = "500 5.5.2 Error: line too long\r\n";

// SPEC §5.1: after authentication the pre-authentication max_line_length no longer applies;
// lines up to this many bytes (CRLF included) are relayed.
inline constexpr std::size_t kMaxAuthenticatedLine = 64 * 1024;

// A command line split into verb and arguments (on SP and HTAB, as Postfix splits it once
// control bytes are refused); nullopt when it holds a control byte.
inline std::optional<Command> parseCommand(std::string_view line) { return parseCommandLine(line); }

// XCLIENT and XFORWARD claim the client's address and name (SPEC §5.1).
inline bool isAddressClaim(std::string_view verb) {
  return equalsNoCase(verb, "XCLIENT") || equalsNoCase(verb, "XFORWARD");
}

// One line of a reply: "250-..." goes on, "250 ..." or a bare "250" ends it.
struct ReplyLine {
  std::string_view code; // the first three bytes (fewer when the line is shorter)
  bool last;
  std::string_view text; // after the code and its separator, CRLF removed
};
inline ReplyLine parseReply(std::string_view line) {
  std::string_view text = chomp(line);
  return {text.substr(0, 3), text.size() < 4 || text[3] != '-',
          text.size() > 4 ? text.substr(4) : std::string_view()};
}

// The keyword of an EHLO reply line ("250-AUTH PLAIN LOGIN" -> "AUTH").
inline std::string_view extensionKeyword(std::string_view line) {
  return splitWord(parseReply(line).text).first;
}
// Extensions a client is never shown from a server: STARTTLS is postern's; XCLIENT and XFORWARD
// are between postern and the server; CHUNKING and BINARYMIME would hide commands inside BDAT
// chunks, which postern does not parse.
inline bool isServersOwn(std::string_view keyword) {
  return equalsNoCase(keyword, "STARTTLS") || equalsNoCase(keyword, "XCLIENT") ||
         equalsNoCase(keyword, "XFORWARD") || equalsNoCase(keyword, "CHUNKING") ||
         equalsNoCase(keyword, "BINARYMIME");
}
// "AUTH PLAIN ..." and the old "AUTH=PLAIN ..." form.
inline bool isAuthentication(std::string_view keyword) {
  return equalsNoCase(keyword, "AUTH") || startsWithNoCase(keyword, "AUTH=");
}

} // namespace protocol::smtp
