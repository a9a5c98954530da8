// The strings of the IMAP family (IMAP, ManageSieve): literals announced at a line's end and
// quoted strings, read one way by every dialogue of both protocols (SPEC §5.1, §12).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace protocol {

// The literal a line announces at its end ("{12}", "{12+}"; RFC 7888, RFC 5804 §4).
struct Literal {
  enum class Kind { None, Announced, Invalid };
  Kind kind = Kind::None;
  std::size_t size = 0;
  bool synchronising = true;
};
// `text` without its CRLF. A "{...}" at the end that is no valid count (not digits, or too many
// for any size) is Invalid: a server could read it as a literal, so it is refused, never
// relayed as text.
Literal literalAtEnd(std::string_view text);

// A quoted string at the start of `text` ("..." with \" and \\ escapes, nothing else escaped,
// as RFC 9051's quoted-specials and RFC 5804's allow). Its value and the bytes it took; nullopt
// when malformed.
struct Quoted {
  std::string value;
  std::size_t length;
};
std::optional<Quoted> readQuoted(std::string_view text);
// `text` as a quoted string, escaping '"' and '\'.
std::string quoted(std::string_view text);

} // namespace protocol
