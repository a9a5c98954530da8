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

// SPEC §5.1: the reply to a line POP3 servers split differently (see parseCommand).
inline constexpr std::string_view kSyntaxError = "-ERR Syntax error in command\r\n";

enum class CommandError { ControlByte, Ambiguous };
struct ParsedCommand {
  std::optional<Command> command;
  CommandError error = CommandError::ControlByte;
  explicit operator bool() const { return command.has_value(); }
  std::string_view reply() const {
    return error == CommandError::ControlByte ? kInvalidCharacters : kSyntaxError;
  }
};
// A command line as RFC 1939 writes it: the verb, then one SP before each argument. Servers
// split the rest differently: Dovecot's pop3-login ends the verb at the first SP only (so to
// it "AUTH  PLAIN" names no mechanism and gets the mechanism list, a "+OK" postern must not
// take for a login), others skip runs of spaces and tabs. A line that would read differently
// (leading space or tab, a tab in the verb, a space or tab right after the separating SP) is
// refused; so is a control byte.
inline ParsedCommand parseCommand(std::string_view line) {
  std::string_view text = chomp(line);
  if (hasControlByte(text)) {
    return {std::nullopt, CommandError::ControlByte};
  }
  std::size_t space = text.find(' ');
  std::string_view verb = text.substr(0, space);
  std::string_view arguments =
      space == std::string_view::npos ? std::string_view() : text.substr(space + 1);
  if (verb.empty() || verb.find('\t') != std::string_view::npos || arguments.starts_with(' ') ||
      arguments.starts_with('\t')) {
    return {std::nullopt, CommandError::Ambiguous};
  }
  return {Command{verb, arguments}, CommandError::ControlByte};
}
// The first argument as Dovecot reads it: up to the next SP, possibly empty.
inline std::string_view firstArgument(std::string_view arguments) {
  return arguments.substr(0, arguments.find(' '));
}

// Commands that claim something about the client's address (SPEC §5.1): Dovecot's XCLIENT and
// its older XOIP (which it reads as XCLIENT ADDR=...).
inline bool isAddressClaim(std::string_view verb) {
  return equalsNoCase(verb, "XCLIENT") || equalsNoCase(verb, "XOIP");
}

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
