// IMAP syntax shared by every IMAP dialogue (SPEC §5.1): tags, command lines, literals, quoted
// strings, status responses, capability lists and the ID fields a client may not set.
#include "proxy/protocol/imap/imap_syntax.h"

namespace protocol::imap {

bool validTag(std::string_view tag) {
  if (tag.empty() || tag.size() > kMaxTag) {
    return false;
  }
  for (char c : tag) {
    auto byte = static_cast<unsigned char>(c);
    // "]" is an ASTRING-CHAR the RFC allows in tags, but Dovecot's parser does not take it:
    // refused, so that no tag reads one way here and another there.
    if (byte <= 0x20 || byte >= 0x7f ||
        std::string_view("(){%*\"\\+]").find(c) != std::string_view::npos) {
      return false;
    }
  }
  return true;
}

ParsedCommand parseCommandLine(std::string_view line) {
  std::string_view text = chomp(line);
  if (hasControlByte(text)) {
    return {std::nullopt, CommandError::ControlByte};
  }
  std::size_t space = text.find(' ');
  std::string_view tag = text.substr(0, space);
  if (!validTag(tag)) {
    return {std::nullopt, CommandError::BadTag};
  }
  if (space == std::string_view::npos) {
    return {std::nullopt, CommandError::NoVerb};
  }
  std::string_view rest = text.substr(space + 1);
  std::size_t end = rest.find(' ');
  std::string_view verb = rest.substr(0, end);
  if (verb.empty()) {
    return {std::nullopt, CommandError::NoVerb};
  }
  return {CommandLine{tag, verb,
                      end == std::string_view::npos ? std::string_view() : rest.substr(end + 1)},
          CommandError::ControlByte};
}

std::string commandError(std::string_view line, CommandError error) {
  std::string_view text = chomp(line);
  std::string_view first = text.substr(0, text.find(' '));
  std::string tag = validTag(first) ? std::string(first) : "*";
  switch (error) {
  case CommandError::ControlByte:
    return tag + " BAD Invalid characters in command\r\n";
  case CommandError::BadTag:
    return "* BAD Invalid tag\r\n";
  case CommandError::NoVerb:
    return tag + " BAD Missing command\r\n";
  }
  return "* BAD Invalid command\r\n";
}

Tokenised tokenise(std::string_view text, std::vector<std::string>& words, Literal& literal) {
  literal = literalAtEnd(text);
  std::size_t literalStart =
      literal.kind == Literal::Kind::None ? std::string_view::npos : text.rfind('{');
  std::size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == ' ') {
      ++i;
      continue;
    }
    if (i == literalStart) {
      return literal.kind == Literal::Kind::Announced ? Tokenised::Literal : Tokenised::Bad;
    }
    if (c == '(' || c == ')') {
      words.emplace_back(1, c);
      ++i;
      continue;
    }
    if (c == '"') {
      std::optional<Quoted> string = readQuoted(text.substr(i));
      if (!string) {
        return Tokenised::Bad;
      }
      i += string->length;
      if (i < text.size() && text[i] != ' ' && text[i] != ')') {
        return Tokenised::Bad; // "a"b: one word to one reader, two to another
      }
      words.push_back(std::move(string->value));
      continue;
    }
    std::size_t end = text.find_first_of(" ()", i);
    if (end == std::string_view::npos) {
      end = text.size();
    }
    std::string_view atom = text.substr(i, end - i);
    if (atom.find_first_of("\"\\{") != std::string_view::npos) {
      return Tokenised::Bad; // a quote, escape or literal inside an atom reads differently
    }
    words.emplace_back(atom);
    i = end;
  }
  return Tokenised::Complete;
}

std::optional<Status> parseStatus(std::string_view line) {
  std::string_view text = chomp(line);
  auto [tag, rest] = splitWord(text);
  if (tag.empty()) {
    return std::nullopt;
  }
  auto [status, after] = splitWord(rest);
  if (!equalsNoCase(status, "OK") && !equalsNoCase(status, "NO") && !equalsNoCase(status, "BAD") &&
      !equalsNoCase(status, "BYE") && !equalsNoCase(status, "PREAUTH")) {
    return std::nullopt;
  }
  Status result{tag, status, {}, after};
  // RFC 9051 resp-text: a code only directly after the status; a "[" later on is text.
  if (after.starts_with('[')) {
    std::size_t close = after.find(']');
    if (close != std::string_view::npos) {
      result.code = after.substr(1, close - 1);
      std::string_view text = after.substr(close + 1);
      if (text.starts_with(' ')) {
        text.remove_prefix(1);
      }
      result.text = text;
    }
  }
  return result;
}

std::string_view taggedStatus(std::string_view line, std::string_view tag) {
  std::optional<Status> status = parseStatus(line);
  if (!status || status->tag != tag) {
    return {};
  }
  return status->status;
}

std::optional<Span> capabilitySpan(std::string_view text) {
  constexpr std::string_view kWord = "CAPABILITY";
  if (startsWithNoCase(text, "* CAPABILITY") && (text.size() == 12 || text[12] == ' ')) {
    return Span{std::min<std::size_t>(13, text.size()), text.size()};
  }
  std::optional<Status> status = parseStatus(text);
  if (!status || !startsWithNoCase(status->code, kWord) ||
      (status->code.size() > kWord.size() && status->code[kWord.size()] != ' ')) {
    return std::nullopt;
  }
  auto start = static_cast<std::size_t>(status->code.data() - text.data());
  std::size_t end = start + status->code.size();
  return Span{std::min(end, start + kWord.size() + 1), end};
}

std::optional<std::vector<std::string>> capabilities(std::string_view line) {
  std::string_view text = chomp(line);
  std::optional<Span> span = capabilitySpan(text);
  if (!span) {
    return std::nullopt;
  }
  std::vector<std::string> atoms;
  forEachWord(text.substr(span->start, span->end - span->start),
              [&](std::string_view atom) { atoms.emplace_back(atom); });
  return atoms;
}

bool isAddressClaimField(std::string_view key) {
  static constexpr std::string_view kFields[] = {
      "x-originating-ip", "x-originating-port", "x-connected-ip",   "x-connected-port",
      "x-proxy-ttl",      "x-session-id",       "x-session-ext-id",
  };
  for (std::string_view field : kFields) {
    if (equalsNoCase(key, field)) {
      return true;
    }
  }
  return startsWithNoCase(key, "x-forward-");
}

namespace {

// A quoted string or NIL at the start of `text`: its value (nullopt for NIL) and length.
struct NString {
  std::optional<std::string> value;
  std::size_t length;
};
std::optional<NString> readNString(std::string_view text) {
  if (startsWithNoCase(text, "NIL") && (text.size() == 3 || text[3] == ' ' || text[3] == ')')) {
    return NString{std::nullopt, 3};
  }
  std::optional<Quoted> string = readQuoted(text);
  if (!string) {
    return std::nullopt; // a literal, an atom: not taken
  }
  return NString{std::move(string->value), string->length};
}

} // namespace

std::optional<std::string> idWithoutAddressClaims(std::string_view arguments) {
  if (equalsNoCase(arguments, "NIL")) {
    return std::string("NIL");
  }
  if (!arguments.starts_with('(') || !arguments.ends_with(')')) {
    return std::nullopt;
  }
  std::string_view list = arguments.substr(1, arguments.size() - 2);
  std::string kept;
  while (!list.empty()) {
    std::optional<NString> key = readNString(list);
    if (!key || !key->value || key->length >= list.size() || list[key->length] != ' ') {
      return std::nullopt; // a key is a string, followed by its value
    }
    list.remove_prefix(key->length + 1);
    std::optional<NString> value = readNString(list);
    if (!value) {
      return std::nullopt;
    }
    list.remove_prefix(value->length);
    if (!list.empty()) {
      if (list.front() != ' ' || list.size() == 1) {
        return std::nullopt;
      }
      list.remove_prefix(1);
    }
    if (isAddressClaimField(*key->value)) {
      continue;
    }
    if (!kept.empty()) {
      kept += ' ';
    }
    kept += quoted(*key->value) + " " + (value->value ? quoted(*value->value) : "NIL");
  }
  return kept.empty() ? std::string("NIL") : "(" + kept + ")";
}

} // namespace protocol::imap
