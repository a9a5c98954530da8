// What login mode captures (SPEC §5): credentials, the SASL encodings they arrive in (RFC 4648
// base64, RFC 4616 PLAIN, the LOGIN mechanism, XOAUTH2, RFC 7628 OAUTHBEARER), and their wiping.
// Pure: no sockets, no clock.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace protocol {

// Zeroes a string's bytes (the compiler may not drop it) and empties it.
void wipe(std::string& secret);

// A password or token held only until it was replayed; wiped when destroyed.
struct Credentials {
  enum class Kind { Password, XOAuth2, OAuthBearer };
  Kind kind = Kind::Password;
  const char* mechanism = "login"; // the client's mechanism, as a metrics label
  std::string user;                // the authentication identity (routing, logs)
  std::string authzid;             // PLAIN's authorisation identity, if any
  std::string secret;              // the password or bearer token
  std::string tag;                 // IMAP: the client's tag, reused so the verdict relays as is

  Credentials() = default;
  Credentials(const Credentials&) = delete;
  Credentials& operator=(const Credentials&) = delete;
  Credentials(Credentials&& other) noexcept;
  Credentials& operator=(Credentials&& other) noexcept;
  ~Credentials() { clear(); }
  void clear();
  Credentials copy() const; // (copies are explicit: every one must be wiped too)
};

// Standard base64 with padding; nullopt for anything else (RFC 4648 §4, as SASL requires).
std::optional<std::string> decodeBase64(std::string_view text);
std::string encodeBase64(std::string_view data);

// The mechanisms login mode captures, by name (case-insensitive).
enum class Mechanism { Plain, Login, XOAuth2, OAuthBearer };
std::optional<Mechanism> parseMechanism(std::string_view name);
const char* mechanismName(Mechanism mechanism); // "PLAIN", "LOGIN", ...

// Decoded client responses -> credentials (nullopt: malformed).
std::optional<Credentials> parsePlain(std::string_view message);
std::optional<Credentials> parseXOAuth2(std::string_view message);
std::optional<Credentials> parseOAuthBearer(std::string_view message);

// Client responses built from credentials (not base64-encoded yet).
std::string buildPlain(const Credentials& credentials);
std::string buildXOAuth2(const Credentials& credentials);
std::string buildOAuthBearer(const Credentials& credentials, std::string_view host, unsigned port);

// One SASL exchange on the client side: what postern asks and how the answers become
// credentials. The protocol dialogues frame the challenges ("+ ", "334 ") and responses.
class SaslCapture {
public:
  enum class Step {
    Challenge,   // send challenge() (base64) and wait for the next response
    Done,        // credentials() are complete
    Malformed,   // the response is not what the mechanism expects
    BadEncoding, // not base64
    Cancelled,   // the client sent "*"
  };

  explicit SaslCapture(Mechanism mechanism) : mechanism_(mechanism) {}
  // The first step: with the initial response (SASL-IR; "=" is an empty one) or without.
  Step start(std::optional<std::string_view> initialResponse);
  // A response line from the client, CRLF removed.
  Step respond(std::string_view line);
  const std::string& challenge() const { return challenge_; }
  Credentials& credentials() { return credentials_; }
  Mechanism mechanism() const { return mechanism_; }

private:
  Step take(const std::string& decoded);

  Mechanism mechanism_;
  int stage_ = 0;
  std::string challenge_;
  Credentials credentials_;
};

} // namespace protocol
