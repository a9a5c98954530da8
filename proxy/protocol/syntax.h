// The lexical rules every protocol's syntax module builds on (SPEC §5.1): which bytes a command
// line may hold, how a command splits into verb and arguments, and how response codes are taken
// out of a server's text. One place, so no two dialogues read the same bytes differently.
#pragma once

#include "proxy/protocol/line_reader.h"

#include <cstddef>
#include <string>
#include <string_view>

namespace protocol {

// Whether `text` could be the start of something that begins with `prefix` (or begins with it):
// a greeting may arrive in pieces.
inline bool startsLike(std::string_view text, std::string_view prefix) {
  std::size_t n = prefix.size() < text.size() ? prefix.size() : text.size();
  return text.substr(0, n) == prefix.substr(0, n);
}

// SPEC §5.1: a command line (its CRLF or LF removed) that holds a control byte (0x00-0x1F other
// than HTAB, or 0x7F) is a syntax error. Servers split verbs on different whitespace sets
// (Postfix on SP, HTAB, VT, FF and CR), so "XCLIENT\vADDR=..." or "DATA\v" would otherwise be
// one command to postern and another to the server behind it.
inline bool hasControlByte(std::string_view text) {
  for (char c : text) {
    auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && byte != '\t') || byte == 0x7f) {
      return true;
    }
  }
  return false;
}

// A command line as POP3 and SMTP read it: the verb and its arguments, split on SP and HTAB
// (runs of them, leading ones skipped, as Postfix does). Only valid for a line without control
// bytes; then every server splits it the same way postern does.
struct Command {
  std::string_view verb;
  std::string_view arguments;
};

// nullopt: the line holds a control byte (answer the protocol's syntax error, relay nothing).
inline std::optional<Command> parseCommandLine(std::string_view line) {
  std::string_view text = chomp(line);
  if (hasControlByte(text)) {
    return std::nullopt;
  }
  auto [verb, arguments] = splitCommand(text);
  return Command{verb, arguments};
}

// Takes every bracketed response code out of a server's text, wherever it stands
// ("[ALERT] a [CAPABILITY X] b" -> "a b"): what a client is shown of a greeting learned before
// TLS must carry no code at all, so no reader can take a "[" for a code that another read as
// text (SPEC §5.1). An unclosed "[" drops the rest of the text.
inline std::string withoutResponseCodes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    std::size_t open = text.find('[');
    std::string_view before = text.substr(0, open);
    out += before;
    if (open == std::string_view::npos) {
      break;
    }
    std::size_t close = text.find(']', open);
    if (close == std::string_view::npos) {
      break;
    }
    text.remove_prefix(close + 1);
  }
  // Codes leave runs of spaces behind: one space between words, none at the ends.
  std::string tidy;
  tidy.reserve(out.size());
  for (char c : out) {
    if (c == ' ' && (tidy.empty() || tidy.back() == ' ')) {
      continue;
    }
    tidy.push_back(c);
  }
  while (!tidy.empty() && tidy.back() == ' ') {
    tidy.pop_back();
  }
  return tidy;
}

// The words of a space-separated list (capability atoms, mechanisms); empty words skipped.
template <typename Visit> void forEachWord(std::string_view text, Visit&& visit) {
  while (!text.empty()) {
    auto [word, rest] = splitWord(text);
    if (!word.empty()) {
      visit(word);
    }
    text = rest;
  }
}

// Overflow-safe accounting of the bytes one pre-authentication command may hold (SPEC §5.1):
// a client-chosen count (an IMAP literal of 2^64-1 bytes) is checked against what is left
// before it is added, never added first.
class ByteBudget {
public:
  explicit ByteBudget(std::size_t limit) : limit_(limit) {}
  // Takes `count` bytes if they fit what is left; false (nothing taken) otherwise.
  bool take(std::size_t count) {
    if (count > limit_ - used_) {
      return false;
    }
    used_ += count;
    return true;
  }
  void reset() { used_ = 0; }
  std::size_t used() const { return used_; }

private:
  std::size_t limit_;
  std::size_t used_ = 0;
};

} // namespace protocol
