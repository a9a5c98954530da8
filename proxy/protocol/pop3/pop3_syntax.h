// POP3 syntax (RFC 1939, 2449 CAPA, 2595 STLS, 5034 AUTH) as every POP3 dialogue reads it: the
// passthrough filter, the login dialogue and its replay, backend STLS and the health probe.
// One reading of command lines, status lines, multi-line ends and capability lines (SPEC §5.1).
#pragma once

#include "proxy/protocol/syntax.h"

#include <string>
#include <string_view>
#include <vector>

namespace protocol::pop3 {

// SPEC §5.1: the reply to a command line holding a control byte (never relayed).
inline constexpr std::string_view kInvalidCharacters = "-ERR Invalid characters in command\r\n";
// SPEC §5.1: only postern tells a server who the client is (Dovecot's XCLIENT).
inline constexpr std::string_view kNotPermitted = "-ERR Command not permitted\r\n";
inline constexpr std::string_view kTooManyPipelined = "-ERR Too many pipelined commands\r\n";

// A command line split into verb and arguments; nullopt when it holds a control byte.
inline std::optional<Command> parseCommand(std::string_view line) { return parseCommandLine(line); }

// Commands that claim something about the client's address (SPEC §5.1).
inline bool isAddressClaim(std::string_view verb) { return equalsNoCase(verb, "XCLIENT"); }

// Commands whose +OK is followed by lines up to ".": LIST and UIDL without an argument, RETR,
// TOP, CAPA, and AUTH without a mechanism (the mechanism list).
bool isMultiLine(std::string_view verb, std::string_view arguments);

// Status lines: "+OK ..." and "-ERR ..." (a "+ " line is a SASL challenge, not +OK).
inline bool isOk(std::string_view line) { return line.starts_with("+OK"); }
inline bool isError(std::string_view line) { return line.starts_with("-ERR"); }
inline bool isChallenge(std::string_view line) {
  return line.starts_with("+ ") || chomp(line) == "+";
}
// The "." that ends a multi-line response.
inline bool isEnd(std::string_view line) { return chomp(line) == "."; }
// A multi-line response line without its dot-stuffing (RFC 1939 §3).
inline std::string_view unstuffed(std::string_view text) {
  return text.starts_with("..") ? text.substr(1) : text;
}

// The keyword of a CAPA line ("SASL PLAIN" -> "SASL").
inline std::string_view capabilityKeyword(std::string_view line) {
  return splitWord(chomp(line)).first;
}
// Capabilities a client is never shown from a server: STLS is postern's (it terminates TLS),
// XCLIENT is between postern and the server (SPEC §5.1).
inline bool isServersOwn(std::string_view keyword) {
  return equalsNoCase(keyword, "STLS") || equalsNoCase(keyword, "XCLIENT");
}
// Capabilities that offer authentication (hidden where it may not happen yet).
inline bool isAuthentication(std::string_view keyword) {
  return equalsNoCase(keyword, "SASL") || equalsNoCase(keyword, "USER");
}

} // namespace protocol::pop3
