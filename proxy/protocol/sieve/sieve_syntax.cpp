// ManageSieve syntax shared by every ManageSieve dialogue (SPEC §5.1, §12).
#include "proxy/protocol/sieve/sieve_syntax.h"

namespace protocol::sieve {

namespace {

// RFC 5804 atoms: no space, no quote, no brace or parenthesis, no backslash.
bool isAtomChar(char c) {
  auto byte = static_cast<unsigned char>(c);
  return byte > 0x20 && byte < 0x7f &&
         std::string_view("(){}\"\\% *").find(c) == std::string_view::npos;
}

} // namespace

ParsedCommand parseCommandLine(std::string_view line) {
  std::string_view text = chomp(line);
  // SPEC §5.1, and HTAB too: ManageSieve separates only with SP, and a server that also splits
  // on HTAB would read "STARTTLS\t" as a command postern took for another.
  if (hasControlByte(text) || text.find('\t') != std::string_view::npos) {
    return {std::nullopt, CommandError::ControlByte};
  }
  std::size_t end = 0;
  while (end < text.size() && isAtomChar(text[end])) {
    ++end;
  }
  if (end == 0 || (end < text.size() && text[end] != ' ')) {
    return {std::nullopt, CommandError::Malformed};
  }
  return {CommandLine{text.substr(0, end), end < text.size() ? text.substr(end + 1) : ""},
          CommandError::ControlByte};
}

Tokenised tokenise(std::string_view text, std::vector<std::string>& words, Literal& literal) {
  literal = literalAtEnd(text);
  std::size_t literalStart =
      literal.kind == Literal::Kind::None ? std::string_view::npos : text.rfind('{');
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] == ' ') {
      ++i;
      continue;
    }
    if (i == literalStart) {
      return literal.kind == Literal::Kind::Announced ? Tokenised::Literal : Tokenised::Bad;
    }
    if (text[i] == '"') {
      std::optional<Quoted> string = readQuoted(text.substr(i));
      if (!string) {
        return Tokenised::Bad;
      }
      i += string->length;
      if (i < text.size() && text[i] != ' ') {
        return Tokenised::Bad; // "a"b: one word to one reader, two to another
      }
      words.push_back(std::move(string->value));
      continue;
    }
    std::size_t end = i;
    while (end < text.size() && isAtomChar(text[end])) {
      ++end;
    }
    if (end == i || (end < text.size() && text[end] != ' ')) {
      return Tokenised::Bad;
    }
    words.emplace_back(text.substr(i, end - i));
    i = end;
  }
  return Tokenised::Complete;
}

std::optional<Response> parseResponse(std::string_view text) {
  std::size_t end = text.find(' ');
  std::string_view status = text.substr(0, end);
  if (!equalsNoCase(status, "OK") && !equalsNoCase(status, "NO") && !equalsNoCase(status, "BYE")) {
    return std::nullopt;
  }
  Response response{status, {}, {}};
  if (end == std::string_view::npos) {
    return response;
  }
  std::string_view rest = text.substr(end + 1);
  if (rest.starts_with('(')) {
    // The code ends at the first ")" outside a quoted string ("(TAG \"a)b\")").
    std::size_t i = 1;
    while (i < rest.size() && rest[i] != ')') {
      if (rest[i] == '"') {
        std::optional<Quoted> string = readQuoted(rest.substr(i));
        if (!string) {
          return std::nullopt;
        }
        i += string->length;
        continue;
      }
      ++i;
    }
    if (i >= rest.size()) {
      return std::nullopt;
    }
    response.code = rest.substr(1, i - 1);
    rest.remove_prefix(i + 1);
    if (rest.starts_with(' ')) {
      rest.remove_prefix(1);
    }
  }
  response.text = rest;
  return response;
}

bool isResponse(std::string_view text) {
  std::string_view status = text.substr(0, text.find(' '));
  return equalsNoCase(status, "OK") || equalsNoCase(status, "NO") || equalsNoCase(status, "BYE");
}

bool literalBytesAllowed(std::string_view bytes) {
  for (char c : bytes) {
    if (c < 0x20 || c > 0x7e) {
      return false;
    }
  }
  return true;
}

bool stringArguments(std::string_view segment, std::size_t& count) {
  Literal literal = literalAtEnd(segment);
  std::size_t literalStart =
      literal.kind == Literal::Kind::None ? std::string_view::npos : segment.rfind('{');
  std::size_t i = 0;
  while (i < segment.size()) {
    if (segment[i] == ' ') {
      ++i;
      continue;
    }
    if (i == literalStart) {
      ++count;
      return literal.kind == Literal::Kind::Announced;
    }
    std::optional<Quoted> string = readQuoted(segment.substr(i));
    if (!string || !literalBytesAllowed(string->value)) {
      return false;
    }
    i += string->length;
    if (i < segment.size() && segment[i] != ' ') {
      return false;
    }
    ++count;
  }
  return true;
}

std::optional<Capability> parseCapability(std::string_view text) {
  std::optional<Quoted> name = readQuoted(text);
  if (!name || name->value.empty()) {
    return std::nullopt;
  }
  Capability capability{std::move(name->value), std::nullopt};
  std::string_view rest = text.substr(name->length);
  if (rest.empty()) {
    return capability;
  }
  if (!rest.starts_with(' ')) {
    return std::nullopt;
  }
  std::optional<Quoted> value = readQuoted(rest.substr(1));
  if (!value || value->length != rest.size() - 1) {
    return std::nullopt;
  }
  capability.value = std::move(value->value);
  return capability;
}

std::string capabilityLine(std::string_view name, std::optional<std::string_view> value) {
  std::string line = quoted(name);
  if (value) {
    line += " " + quoted(*value);
  }
  return line + "\r\n";
}

std::vector<std::string> valueWords(const Capability& capability) {
  std::vector<std::string> words;
  if (capability.value) {
    forEachWord(*capability.value, [&](std::string_view word) { words.emplace_back(word); });
  }
  return words;
}

std::string reply(std::string_view status, std::string_view text, std::string_view code) {
  std::string line(status);
  if (!code.empty()) {
    line += " (" + std::string(code) + ")";
  }
  return line + " " + quoted(text) + "\r\n";
}

} // namespace protocol::sieve
