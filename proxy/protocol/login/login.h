// Login mode (SPEC §5) as two pure dialogues per protocol. The front dialogue is postern
// speaking to the client before authentication: its own greeting, capabilities, STARTTLS, and the
// capture of credentials. The replay speaks to the chosen backend server: it reads the greeting,
// learns the server's capabilities, forwards the client address where the protocol has a way,
// authenticates with a mechanism the server offers, and hands back the server's verdict for the
// client, byte for byte. No sockets, no TLS, no clock.
#pragma once

#include "proxy/protocol/filter.h"
#include "proxy/protocol/login/sasl.h"

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace protocol {

// What the front dialogue knows about the servers behind it: the capabilities every healthy
// server of the pool reported to its health check, in that protocol's form (IMAP capability
// atoms, POP3 CAPA lines, SMTP EHLO lines after the first). Empty when none is known yet.
struct BackendOffer {
  std::vector<std::string> capabilities;
};

// The capabilities every list has (IMAP atoms compare case-insensitively; POP3 SASL and SMTP
// AUTH lines by their mechanisms).
std::vector<std::string> commonCapabilities(const std::vector<std::vector<std::string>>& lists);

struct LoginOutput : Output {
  // Set when the client has given credentials: the session throttles, routes and replays;
  // the dialogue waits for verdict() and reads nothing meanwhile.
  std::optional<Credentials> credentials;
  std::string clientHelo; // SMTP: the name the client greeted with (with credentials)
  bool quit = false;      // the client said goodbye: close once toClient is on the wire
  void reset() {
    clear();
    credentials.reset();
    clientHelo.clear();
    quit = false;
  }
};

class LoginDialogue {
public:
  virtual ~LoginDialogue() = default;
  // postern's own greeting.
  virtual void greet(LoginOutput& out) = 0;
  virtual void fromClient(std::span<const char> data, LoginOutput& out) = 0;
  // The client-side TLS handshake finished (after a STARTTLS go-ahead).
  virtual void tlsStarted(LoginOutput& out) = 0;
  // The backend refused the credentials (its verdict was relayed already): go on reading.
  virtual void rejected(LoginOutput& out) = 0;
  // The attempt is refused before any backend saw it (too many failures from this client).
  virtual void throttled(LoginOutput& out) = 0;
  // The words of that refusal alone (for a session postern closes after it).
  virtual std::string throttledReply() const = 0;
  // The attempt reached a server that then failed (closed, timed out, misbehaved) before its
  // verdict: a temporary failure; never retried elsewhere with the same credentials.
  virtual void unavailable(LoginOutput& out) = 0;
  // The backend accepted: what the client sent after its credentials, for the backend.
  virtual std::string acceptedRest() = 0;
  // Client bytes held (unread input, a command being assembled). While no credentials wait
  // for a verdict, never more than the policy's maxLineLength once a read is processed
  // (SPEC §5.1; the fuzz targets check it).
  virtual std::size_t heldFromClient() const = 0;
};

struct ReplayContext {
  std::string clientIp; // without brackets
  unsigned clientPort = 0;
  std::string serverHost; // OAUTHBEARER's host and port
  unsigned serverPort = 0;
  std::string hostname;   // SMTP: the name postern greets with when the client gave none
  std::string clientHelo; // SMTP: the name the client gave in EHLO
  bool greeted = false;   // the greeting was read already (backend STARTTLS, XCLIENT)
};

class LoginReplay {
public:
  enum class Step {
    NeedMore, // wait for the backend
    Send,     // send toBackend
    Accepted, // the server accepted: toClient is its verdict; relay from now on
    Rejected, // the server refused the credentials: toClient is its verdict
    Failed,   // the server is unusable (greeting, no mechanism, protocol error): reason
  };
  struct Result {
    Step step = Step::NeedMore;
    std::string toBackend; // holds the secret: wipe after sending
    std::string toClient;
    std::string reason;
  };
  virtual ~LoginReplay() = default;
  // With a greeting read already: the first command. Otherwise NeedMore.
  virtual Result start() = 0;
  virtual Result fromBackend(std::span<const char> data) = 0;
  // Whether anything carrying the credentials went to the server.
  virtual bool credentialsSent() const = 0;
};

std::unique_ptr<LoginDialogue> makeImapLogin(const Policy& policy, BackendOffer offer);
std::unique_ptr<LoginDialogue> makePop3Login(const Policy& policy, BackendOffer offer);
std::unique_ptr<LoginDialogue> makeSmtpLogin(const Policy& policy, BackendOffer offer);

std::unique_ptr<LoginReplay> makeImapReplay(Credentials credentials, ReplayContext context);
std::unique_ptr<LoginReplay> makePop3Replay(Credentials credentials, ReplayContext context);
std::unique_ptr<LoginReplay> makeSmtpReplay(Credentials credentials, ReplayContext context);

// Shared by the dialogues: which mechanisms postern offers the client, given what the servers
// offer (a password can be replayed with any password mechanism or command the server takes;
// a bearer token only with its own mechanism).
struct MechanismOffer {
  bool password = true;
  bool xoauth2 = false;
  bool oauthbearer = false;
  std::string list() const; // "PLAIN LOGIN XOAUTH2"
  bool offers(Mechanism mechanism) const;
};

} // namespace protocol
