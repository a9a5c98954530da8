// ManageSieve syntax (RFC 5804 §4) as every ManageSieve dialogue reads it: the passthrough
// filter, the login dialogue and its replay, backend STARTTLS and the health probe. One reading
// of command lines, strings and literals, responses (OK/NO/BYE with a code in parentheses) and
// capability lists (SPEC §5.1, §12).
#pragma once

#include "proxy/protocol/strings.h"
#include "proxy/protocol/syntax.h"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace protocol::sieve {

// A command line (CRLF removed): the command name, then its arguments after one SP. A line
// that starts with a space, or parts name and arguments otherwise, is no command here.
struct CommandLine {
  std::string_view verb;
  std::string_view arguments;
};
enum class CommandError { ControlByte, Malformed };
struct ParsedCommand {
  std::optional<CommandLine> command;
  CommandError error = CommandError::ControlByte;
  explicit operator bool() const { return command.has_value(); }
};
ParsedCommand parseCommandLine(std::string_view line);

// The words of one line segment (no CRLF): atoms and quoted strings (unescaped). A literal at
// the end ("{n+}", or "{n}" which only a server may send) is reported in `literal`; the caller
// reads its bytes as the next word.
enum class Tokenised { Complete, Literal, Bad };
Tokenised tokenise(std::string_view text, std::vector<std::string>& words, Literal& literal);

// Before authentication, arguments as managesieve-login takes them without dispute: strings
// only (quoted, or one literal announced at the end), each byte printable ASCII. Adds the
// arguments of `segment` to `count` (a literal counts once announced); false for anything else
// (an atom, a bad escape, a byte a server could refuse mid-line and then skip the rest of the
// line, reading a literal's bytes as commands).
bool stringArguments(std::string_view segment, std::size_t& count);
// Whether a literal's bytes are ones such arguments may hold (printable ASCII).
bool literalBytesAllowed(std::string_view bytes);

// A response line "OK|NO|BYE [SP "(" code ")"] [SP string]" (CRLF removed).
struct Response {
  std::string_view status; // OK, NO or BYE, as sent
  std::string_view code;   // inside the parentheses (quoted strings in it kept as they are)
  std::string_view text;   // after the code: a quoted string, a literal "{n}" or nothing
};
std::optional<Response> parseResponse(std::string_view text);
// Whether `text` is a response line (ends a command's answer): it starts with OK, NO or BYE,
// whatever follows (a code may hold a literal and continue on the next line).
bool isResponse(std::string_view text);

// One line of a capability list: a quoted name and an optional quoted value
// ("\"SASL\" \"PLAIN LOGIN\""). nullopt for any other line.
struct Capability {
  std::string name;
  std::optional<std::string> value;
};
std::optional<Capability> parseCapability(std::string_view text);
// The line (CRLF included) for a capability.
std::string capabilityLine(std::string_view name, std::optional<std::string_view> value = {});
// The words of a capability value ("PLAIN LOGIN" -> PLAIN, LOGIN).
std::vector<std::string> valueWords(const Capability& capability);

// A response with a quoted text ("NO \"...\"\r\n"), the text quoted as the grammar wants.
std::string reply(std::string_view status, std::string_view text, std::string_view code = {});

// Said by postern (SPEC §5.1); the session ends after the BYE ones.
inline constexpr std::string_view kInvalidCharacters = "NO \"Invalid characters in command\"\r\n";
inline constexpr std::string_view kInvalidCharactersBye =
    "BYE \"Invalid characters in command\"\r\n"; // within a command already partly relayed
inline constexpr std::string_view kLineTooLong = "BYE \"Line too long\"\r\n";
inline constexpr std::string_view kLiteralTooLarge = "BYE \"Literal too large\"\r\n";
inline constexpr std::string_view kInvalidLiteral = "BYE \"Invalid literal\"\r\n";
inline constexpr std::string_view kTooManyPipelined = "BYE \"Too many pipelined commands\"\r\n";

} // namespace protocol::sieve
