// IMAP syntax (RFC 9051 §9, RFC 7888 literals, RFC 2971 ID) as every IMAP dialogue reads it:
// the passthrough filter, the login dialogue and its replay, backend STARTTLS and the health
// probe. One reading of tags, command names, literals, quoted strings, status responses,
// response codes and capability lists (SPEC §5.1).
#pragma once

#include "proxy/protocol/strings.h"
#include "proxy/protocol/syntax.h"

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace protocol::imap {

// RFC 9051 §9: a tag is ASTRING-CHARs except "+" (so never "*" or "+", which would read as an
// untagged or continuation line when the server's answer comes back), and here neither "]"
// nor longer than kMaxTag: what every server behind postern takes (Dovecot allows at most
// 100 bytes), and a bound on what 1,000 pipelined commands keep in memory.
inline constexpr std::size_t kMaxTag = 64;
bool validTag(std::string_view tag);

// "tag SP command-name [SP arguments]", one SP each as the grammar says.
struct CommandLine {
  std::string_view tag;
  std::string_view verb;
  std::string_view arguments;
};
enum class CommandError {
  ControlByte, // SPEC §5.1: a control byte anywhere in the line
  BadTag,      // no tag, or one the grammar does not allow
  NoVerb,      // a tag and nothing after it (or not one SP between them)
};
// (Not std::expected: the fuzz build's clang 14 cannot use libstdc++'s <expected>.)
struct ParsedCommand {
  std::optional<CommandLine> command;
  CommandError error = CommandError::ControlByte; // when there is no command
  explicit operator bool() const { return command.has_value(); }
};
// `line` with or without its CRLF.
ParsedCommand parseCommandLine(std::string_view line);
// The reply to a command line that parseCommandLine refused.
std::string commandError(std::string_view line, CommandError error);

// Literals ("{12}", "{12+}") and quoted strings are read as every IMAP-family protocol reads
// them (proxy/protocol/strings.h).
using protocol::Literal;
using protocol::literalAtEnd;
using protocol::Quoted;
using protocol::quoted;
using protocol::readQuoted;

// Said before closing a session whose literal postern will not take (SPEC §5.1).
inline constexpr std::string_view kLiteralTooLarge = "* BYE Literal too large\r\n";
inline constexpr std::string_view kInvalidLiteral = "* BYE Invalid literal\r\n";
inline constexpr std::string_view kTooManyPipelined = "* BYE Too many pipelined commands\r\n";
inline constexpr std::string_view kInvalidCharacters =
    "* BYE Invalid characters in command\r\n"; // within a command already partly relayed

// Reads the arguments of one line segment (no CRLF) into `words`: atoms, quoted strings
// (unescaped), and parentheses as words of their own. A "{n}" / "{n+}" at the end announces a
// literal (reported in `literal`; the caller reads its bytes as the next word).
enum class Tokenised { Complete, Literal, Bad };
Tokenised tokenise(std::string_view text, std::vector<std::string>& words, Literal& literal);

// A status response "tag SP status SP [code] text" (untagged: tag "*").
struct Status {
  std::string_view tag;
  std::string_view status; // OK, NO, BAD, BYE, PREAUTH (as sent)
  std::string_view code;   // inside the brackets, when the text starts with a response code
  std::string_view text;   // after the code
};
// `line` with or without its CRLF; nullopt when it is no status response.
std::optional<Status> parseStatus(std::string_view line);
// A tagged reply to `tag` (any status); its status word, or empty.
std::string_view taggedStatus(std::string_view line, std::string_view tag);

// Where a response carries a capability list: "* CAPABILITY a b" (the atoms after the word) or
// a status response whose code is "[CAPABILITY a b]" (the atoms inside). Offsets in `text`
// (without CRLF); a "[CAPABILITY" anywhere else in the text is text, never a code.
struct Span {
  std::size_t start;
  std::size_t end;
};
std::optional<Span> capabilitySpan(std::string_view text);
// The atoms of that list, if the response has one.
std::optional<std::vector<std::string>> capabilities(std::string_view line);

// SPEC §5.1: ID fields a client must never set (only postern tells a server who the client is).
bool isAddressClaimField(std::string_view key);
// The arguments of an ID command with those fields removed ("NIL" when none is left); nullopt
// when they are not an ID parameter list of quoted strings and NILs (a literal, say).
std::optional<std::string> idWithoutAddressClaims(std::string_view arguments);

} // namespace protocol::imap
