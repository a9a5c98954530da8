// Splits a byte stream into CRLF (or bare LF) terminated lines, resuming across reads, with a
// cap on line length and raw takes for IMAP literals and SMTP message bodies.
#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace protocol {

class LineReader {
public:
  explicit LineReader(std::size_t maxLine) : maxLine_(maxLine) {}

  void append(std::span<const char> data) {
    if (start_ > 0 && start_ == buffer_.size()) {
      buffer_.clear();
      start_ = 0;
    }
    buffer_.append(data.data(), data.size());
  }

  // The next complete line, terminator included; nullopt when none is complete yet (check
  // tooLong() then: a partial line past the cap is an error, not a wait).
  std::optional<std::string_view> nextLine() {
    std::string_view rest = pending();
    std::size_t newline = rest.find('\n');
    if (newline == std::string_view::npos || newline + 1 > maxLine_) {
      return std::nullopt; // incomplete, or too long even though complete (see tooLong())
    }
    std::string_view line = rest.substr(0, newline + 1);
    start_ += line.size();
    return line;
  }

  // A new cap for lines not yet read (SMTP after authentication takes longer ones).
  void setMaxLine(std::size_t maxLine) { maxLine_ = maxLine; }

  bool tooLong() const {
    std::string_view rest = pending();
    std::size_t newline = rest.find('\n');
    std::size_t length = newline == std::string_view::npos ? rest.size() : newline + 1;
    return length > maxLine_;
  }

  // Up to `count` bytes as they are (literal or body data).
  std::string_view takeRaw(std::size_t count) {
    std::string_view rest = pending();
    std::string_view taken = rest.substr(0, std::min(count, rest.size()));
    start_ += taken.size();
    return taken;
  }

  std::string_view pending() const { return std::string_view(buffer_).substr(start_); }
  bool empty() const { return start_ == buffer_.size(); }

  // Everything not yet consumed, for handing over to a plain relay.
  std::string takeAll() {
    std::string rest(pending());
    buffer_.clear();
    start_ = 0;
    return rest;
  }

  // Forgets everything not yet consumed (bytes that are never to be relayed).
  void discard() {
    buffer_.clear();
    start_ = 0;
  }

  // Zeroes what was consumed already (a line that carried a password), before compact() frees it.
  void wipeConsumed() {
    for (std::size_t i = 0; i < start_; ++i) {
      static_cast<volatile char&>(buffer_[i]) = 0;
    }
  }

  // Gives memory back once everything is consumed (an idle session holds nothing).
  void compact() {
    if (start_ == buffer_.size()) {
      std::string().swap(buffer_);
      start_ = 0;
    } else if (start_ > 4096) {
      buffer_.erase(0, start_);
      start_ = 0;
    }
  }

private:
  std::string buffer_;
  std::size_t start_ = 0;
  std::size_t maxLine_;
};

// The line without its CRLF or LF.
inline std::string_view chomp(std::string_view line) {
  if (line.ends_with("\r\n")) {
    return line.substr(0, line.size() - 2);
  }
  if (line.ends_with('\n')) {
    return line.substr(0, line.size() - 1);
  }
  return line;
}

inline char lowerAscii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

inline bool equalsNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (lowerAscii(a[i]) != lowerAscii(b[i])) {
      return false;
    }
  }
  return true;
}

inline bool startsWithNoCase(std::string_view text, std::string_view prefix) {
  return text.size() >= prefix.size() && equalsNoCase(text.substr(0, prefix.size()), prefix);
}

// A command line's verb and arguments, split the way servers tokenise: leading spaces and tabs
// skipped, the verb ending at a space or tab. (Splitting on one space only would let
// " AUTH ..." or "MAIL\tFROM:" past a filter that a server then reads as AUTH or MAIL.)
inline std::pair<std::string_view, std::string_view> splitCommand(std::string_view text) {
  std::size_t start = text.find_first_not_of(" \t");
  if (start == std::string_view::npos) {
    return {{}, {}};
  }
  text.remove_prefix(start);
  std::size_t end = text.find_first_of(" \t");
  if (end == std::string_view::npos) {
    return {text, {}};
  }
  std::string_view rest = text.substr(end);
  std::size_t argument = rest.find_first_not_of(" \t");
  return {text.substr(0, end),
          argument == std::string_view::npos ? std::string_view() : rest.substr(argument)};
}

// The first word of `text` (up to a space) and the rest after that space.
inline std::pair<std::string_view, std::string_view> splitWord(std::string_view text) {
  std::size_t space = text.find(' ');
  if (space == std::string_view::npos) {
    return {text, {}};
  }
  return {text.substr(0, space), text.substr(space + 1)};
}

} // namespace protocol
