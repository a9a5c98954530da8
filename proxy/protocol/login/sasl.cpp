// SASL encodings for login mode. Formats: RFC 4648 §4 (base64), RFC 4616 (PLAIN:
// [authzid] NUL authcid NUL passwd), the LOGIN mechanism (user, then password, each its own
// response), XOAUTH2 ("user=" u ^A "auth=Bearer " token ^A ^A), RFC 7628 OAUTHBEARER
// (gs2 header "n,a=user," then ^A-separated key=value pairs ending ^A ^A).
#include "proxy/protocol/login/sasl.h"

#include "proxy/protocol/line_reader.h"

#include <string.h> // explicit_bzero

#include <array>

namespace protocol {

void wipe(std::string& secret) {
  // The whole buffer, not just the current size: a short string lives inside the object, and
  // what a move or a shorter assignment left behind is still there.
  explicit_bzero(secret.data(), secret.capacity());
  secret.clear();
}

Credentials::Credentials(Credentials&& other) noexcept
    : kind(other.kind), mechanism(other.mechanism), user(std::move(other.user)),
      authzid(std::move(other.authzid)), secret(std::move(other.secret)),
      tag(std::move(other.tag)) {
  other.clear();
}

Credentials& Credentials::operator=(Credentials&& other) noexcept {
  if (this != &other) {
    clear();
    kind = other.kind;
    mechanism = other.mechanism;
    user = std::move(other.user);
    authzid = std::move(other.authzid);
    secret = std::move(other.secret);
    tag = std::move(other.tag);
    other.clear();
  }
  return *this;
}

Credentials Credentials::copy() const {
  Credentials other;
  other.kind = kind;
  other.mechanism = mechanism;
  other.user = user;
  other.authzid = authzid;
  other.secret = secret;
  other.tag = tag;
  return other;
}

void Credentials::clear() {
  wipe(secret);
  wipe(authzid);
  user.clear();
  tag.clear();
}

namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::array<signed char, 256> decodeTable() {
  std::array<signed char, 256> table{};
  for (auto& entry : table) {
    entry = -1;
  }
  for (int i = 0; i < 64; ++i) {
    table[static_cast<unsigned char>(kAlphabet[i])] = static_cast<signed char>(i);
  }
  return table;
}
constexpr auto kDecode = decodeTable();

} // namespace

std::optional<std::string> decodeBase64(std::string_view text) {
  if (text.size() % 4 != 0) {
    return std::nullopt;
  }
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    bool last = i + 4 == text.size();
    int values[4];
    int padding = 0;
    for (int j = 0; j < 4; ++j) {
      char c = text[i + static_cast<std::size_t>(j)];
      if (c == '=' && last && j >= 2) {
        values[j] = 0;
        ++padding;
        continue;
      }
      if (padding > 0) {
        return std::nullopt; // data after padding
      }
      values[j] = kDecode[static_cast<unsigned char>(c)];
      if (values[j] < 0) {
        return std::nullopt;
      }
    }
    if ((padding == 1 && (values[2] & 3) != 0) || (padding == 2 && (values[1] & 15) != 0)) {
      return std::nullopt; // bits beyond the data: not canonical (RFC 4648 §3.5)
    }
    unsigned bits = (static_cast<unsigned>(values[0]) << 18) |
                    (static_cast<unsigned>(values[1]) << 12) |
                    (static_cast<unsigned>(values[2]) << 6) | static_cast<unsigned>(values[3]);
    out.push_back(static_cast<char>((bits >> 16) & 0xff));
    if (padding < 2) {
      out.push_back(static_cast<char>((bits >> 8) & 0xff));
    }
    if (padding < 1) {
      out.push_back(static_cast<char>(bits & 0xff));
    }
  }
  return out;
}

std::string encodeBase64(std::string_view data) {
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < data.size(); i += 3) {
    std::size_t left = data.size() - i;
    unsigned bits = static_cast<unsigned>(static_cast<unsigned char>(data[i])) << 16;
    if (left > 1) {
      bits |= static_cast<unsigned>(static_cast<unsigned char>(data[i + 1])) << 8;
    }
    if (left > 2) {
      bits |= static_cast<unsigned>(static_cast<unsigned char>(data[i + 2]));
    }
    out.push_back(kAlphabet[(bits >> 18) & 63]);
    out.push_back(kAlphabet[(bits >> 12) & 63]);
    out.push_back(left > 1 ? kAlphabet[(bits >> 6) & 63] : '=');
    out.push_back(left > 2 ? kAlphabet[bits & 63] : '=');
  }
  return out;
}

std::optional<Mechanism> parseMechanism(std::string_view name) {
  if (equalsNoCase(name, "PLAIN")) {
    return Mechanism::Plain;
  }
  if (equalsNoCase(name, "LOGIN")) {
    return Mechanism::Login;
  }
  if (equalsNoCase(name, "XOAUTH2")) {
    return Mechanism::XOAuth2;
  }
  if (equalsNoCase(name, "OAUTHBEARER")) {
    return Mechanism::OAuthBearer;
  }
  return std::nullopt;
}

const char* mechanismName(Mechanism mechanism) {
  switch (mechanism) {
  case Mechanism::Plain:
    return "PLAIN";
  case Mechanism::Login:
    return "LOGIN";
  case Mechanism::XOAuth2:
    return "XOAUTH2";
  case Mechanism::OAuthBearer:
    return "OAUTHBEARER";
  }
  return "PLAIN";
}

std::optional<Credentials> parsePlain(std::string_view message) {
  std::size_t first = message.find('\0');
  if (first == std::string_view::npos) {
    return std::nullopt;
  }
  std::size_t second = message.find('\0', first + 1);
  if (second == std::string_view::npos ||
      message.find('\0', second + 1) != std::string_view::npos) {
    return std::nullopt;
  }
  Credentials credentials;
  credentials.mechanism = "plain";
  credentials.authzid = std::string(message.substr(0, first));
  credentials.user = std::string(message.substr(first + 1, second - first - 1));
  credentials.secret = std::string(message.substr(second + 1));
  if (credentials.user.empty()) {
    return std::nullopt;
  }
  return credentials;
}

namespace {

// "Bearer <token>" -> token.
std::optional<std::string_view> bearer(std::string_view value) {
  if (!startsWithNoCase(value, "Bearer ") || value.size() == 7) {
    return std::nullopt;
  }
  return value.substr(7);
}

} // namespace

std::optional<Credentials> parseXOAuth2(std::string_view message) {
  // user=<user> ^A auth=Bearer <token> ^A ^A
  if (!message.ends_with("\x01\x01")) {
    return std::nullopt;
  }
  message.remove_suffix(2);
  std::size_t separator = message.find('\x01');
  if (separator == std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view userPart = message.substr(0, separator);
  std::string_view authPart = message.substr(separator + 1);
  if (!userPart.starts_with("user=") || !authPart.starts_with("auth=") ||
      authPart.find('\x01') != std::string_view::npos) {
    return std::nullopt;
  }
  auto token = bearer(authPart.substr(5));
  if (!token || userPart.size() == 5) {
    return std::nullopt;
  }
  Credentials credentials;
  credentials.kind = Credentials::Kind::XOAuth2;
  credentials.mechanism = "xoauth2";
  credentials.user = std::string(userPart.substr(5));
  credentials.secret = std::string(*token);
  return credentials;
}

std::optional<Credentials> parseOAuthBearer(std::string_view message) {
  // gs2-header: "n," or "y," (no channel binding), then "a=<authzid>," or ",".
  if (message.size() < 3 || (message[0] != 'n' && message[0] != 'y') || message[1] != ',') {
    return std::nullopt;
  }
  message.remove_prefix(2);
  std::size_t comma = message.find(',');
  if (comma == std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view identity = message.substr(0, comma);
  if (!identity.empty() && !identity.starts_with("a=")) {
    return std::nullopt;
  }
  std::string user;
  if (!identity.empty()) {
    // RFC 5801 saslname: "=2C" is ',' and "=3D" is '='.
    std::string_view name = identity.substr(2);
    for (std::size_t i = 0; i < name.size(); ++i) {
      if (name[i] == '=') {
        std::string_view code = name.substr(i, 3);
        if (code == "=2C") {
          user.push_back(',');
        } else if (code == "=3D") {
          user.push_back('=');
        } else {
          return std::nullopt;
        }
        i += 2;
      } else {
        user.push_back(name[i]);
      }
    }
  }
  message.remove_prefix(comma + 1);
  if (message.size() < 3 || !message.starts_with('\x01') || !message.ends_with("\x01\x01")) {
    return std::nullopt;
  }
  message.remove_prefix(1);
  message.remove_suffix(2);
  std::optional<std::string_view> token;
  while (!message.empty()) {
    std::size_t end = message.find('\x01');
    std::string_view pair = message.substr(0, end);
    if (pair.starts_with("auth=")) {
      token = bearer(pair.substr(5));
      if (!token) {
        return std::nullopt;
      }
    }
    message.remove_prefix(end == std::string_view::npos ? message.size() : end + 1);
  }
  if (!token) {
    return std::nullopt;
  }
  if (user.empty()) {
    // RFC 7628 lets the authorisation identity out; postern routes and throttles by user, so
    // it asks for one (the client's NO says the data was not acceptable).
    return std::nullopt;
  }
  Credentials credentials;
  credentials.kind = Credentials::Kind::OAuthBearer;
  credentials.mechanism = "oauthbearer";
  credentials.user = std::move(user);
  credentials.secret = std::string(*token);
  return credentials;
}

std::string buildPlain(const Credentials& credentials) {
  std::string message;
  message.reserve(credentials.authzid.size() + credentials.user.size() + credentials.secret.size() +
                  2);
  message += credentials.authzid;
  message.push_back('\0');
  message += credentials.user;
  message.push_back('\0');
  message += credentials.secret;
  return message;
}

std::string buildXOAuth2(const Credentials& credentials) {
  return "user=" + credentials.user + "\x01" + "auth=Bearer " + credentials.secret + "\x01\x01";
}

std::string buildOAuthBearer(const Credentials& credentials, std::string_view host, unsigned port) {
  std::string name;
  for (char c : credentials.user) {
    if (c == ',') {
      name += "=2C";
    } else if (c == '=') {
      name += "=3D";
    } else {
      name.push_back(c);
    }
  }
  std::string message = "n,";
  if (!name.empty()) {
    message += "a=" + name;
  }
  message += ",\x01host=" + std::string(host) + "\x01port=" + std::to_string(port) + "\x01" +
             "auth=Bearer " + credentials.secret + "\x01\x01";
  return message;
}

SaslCapture::Step SaslCapture::start(std::optional<std::string_view> initialResponse) {
  if (!initialResponse) {
    // PLAIN, XOAUTH2 and OAUTHBEARER start with an empty challenge; LOGIN asks for the user.
    challenge_ = mechanism_ == Mechanism::Login ? encodeBase64("Username:") : "";
    return Step::Challenge;
  }
  return respond(*initialResponse == "=" ? std::string_view() : *initialResponse);
}

SaslCapture::Step SaslCapture::respond(std::string_view line) {
  if (line == "*") {
    return Step::Cancelled;
  }
  std::optional<std::string> decoded = decodeBase64(line);
  if (!decoded) {
    return Step::BadEncoding;
  }
  Step step = take(*decoded);
  wipe(*decoded);
  return step;
}

SaslCapture::Step SaslCapture::take(const std::string& decoded) {
  std::optional<Credentials> parsed;
  switch (mechanism_) {
  case Mechanism::Plain:
    parsed = parsePlain(decoded);
    break;
  case Mechanism::XOAuth2:
    parsed = parseXOAuth2(decoded);
    break;
  case Mechanism::OAuthBearer:
    parsed = parseOAuthBearer(decoded);
    break;
  case Mechanism::Login:
    if (stage_ == 0) {
      if (decoded.empty()) {
        return Step::Malformed;
      }
      credentials_.user = decoded;
      credentials_.mechanism = "login";
      stage_ = 1;
      challenge_ = encodeBase64("Password:");
      return Step::Challenge;
    }
    credentials_.secret = decoded;
    return Step::Done;
  }
  if (!parsed) {
    return Step::Malformed;
  }
  credentials_ = std::move(*parsed);
  return Step::Done;
}

} // namespace protocol
