// The strings of the IMAP family (see strings.h).
#include "proxy/protocol/strings.h"

#include <limits>

namespace protocol {

Literal literalAtEnd(std::string_view text) {
  Literal literal;
  if (!text.ends_with('}')) {
    return literal;
  }
  std::size_t open = text.rfind('{');
  if (open == std::string_view::npos) {
    return literal;
  }
  std::string_view inside = text.substr(open + 1, text.size() - open - 2);
  literal.kind = Literal::Kind::Invalid;
  if (inside.ends_with('+')) {
    literal.synchronising = false;
    inside.remove_suffix(1);
  }
  if (inside.empty()) {
    return literal;
  }
  std::size_t size = 0;
  constexpr std::size_t kMax = std::numeric_limits<std::size_t>::max();
  for (char c : inside) {
    if (c < '0' || c > '9') {
      return literal;
    }
    auto digit = static_cast<std::size_t>(c - '0');
    if (size > (kMax - digit) / 10) {
      return literal; // more than any size: refused, never wrapped (SPEC §5.1)
    }
    size = size * 10 + digit;
  }
  literal.kind = Literal::Kind::Announced;
  literal.size = size;
  return literal;
}

std::optional<Quoted> readQuoted(std::string_view text) {
  if (!text.starts_with('"')) {
    return std::nullopt;
  }
  Quoted result{{}, 0};
  for (std::size_t i = 1; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\\') {
      // RFC 9051 quoted-specials: only '"' and '\' are escaped. Servers differ on any other
      // escape (Dovecot drops the backslash), so it is a syntax error here.
      if (i + 1 >= text.size() || (text[i + 1] != '"' && text[i + 1] != '\\')) {
        return std::nullopt;
      }
      result.value.push_back(text[++i]);
      continue;
    }
    if (c == '"') {
      result.length = i + 1;
      return result;
    }
    result.value.push_back(c);
  }
  return std::nullopt;
}

std::string quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

} // namespace protocol
