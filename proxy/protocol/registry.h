// The protocols postern speaks, as a table: names and the lines postern itself says in each.
#pragma once

#include "config/model.h"
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/filter.h"
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/login/login.h"

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace protocol {

// One row per protocol: what the rest of postern needs to know of it. A new protocol is its
// folder under proxy/protocol/, whose <name>Protocol() builds the row, and one line in
// config/protocols.def (SPEC §12); the table fills in `protocol` and `name` from that line.
struct ProtocolInfo {
  config::Protocol protocol = config::Protocol::Imap;
  const char* name = ""; // the config's `protocol` value and the metrics label
  // The standard ports: plaintext (with STARTTLS) and implicit TLS (0: none is standard).
  std::uint16_t plaintextPort = 0;
  std::uint16_t implicitTlsPort = 0;
  // The ALPN id (IANA registry) a ClientHello must offer if it offers any (ALPACA defence).
  const char* alpn = "";
  // Whether a server's first bytes start like its ready greeting (a prefix of one counts).
  bool (*greetingIsReady)(std::string_view firstBytes) = nullptr;
  // The polite health check (SPEC §7).
  const ProbeScript* probe = nullptr;
  // SMTP-like: the pre-authentication limits end at TLS too (relay sessions never log in),
  // the session stays parsed after authentication (makeFilterAfterLogin), and XCLIENT can tell
  // the server who the client is (smtp_xclient).
  bool preauthEndsAtTls = false;
  std::unique_ptr<Filter> (*makeFilterAfterLogin)(const Policy& policy) = nullptr; // null: relay
  bool hasXclient = false;
  std::unique_ptr<Filter> (*makeFilter)(const Policy& policy) = nullptr;
  std::unique_ptr<BackendStartTls> (*makeBackendStartTls)(std::string_view hostname) = nullptr;
  // Login mode: postern's side of the dialogue, and the replay at the chosen server.
  std::unique_ptr<LoginDialogue> (*makeLogin)(const Policy& policy, BackendOffer offer) = nullptr;
  std::unique_ptr<LoginReplay> (*makeReplay)(Credentials credentials,
                                             ReplayContext context) = nullptr;
  // Said to a client when no backend server can be reached (SPEC §7).
  std::string unavailable;
  // Said to a client refused by a connection limit (SPEC §8).
  std::string tooManyConnections;
  // Said to a client whose session postern ends at shutdown (SPEC §9).
  std::string shuttingDown;
  // Said to a client whose session the runtime API kicks (SPEC §14).
  std::string kicked;
  // Said to a client that did not authenticate within preauth_timeout (SPEC §8).
  std::string timedOut;
};

// `hostname` is the name SMTP replies start with (RFC 5321 §4.2: "421 <domain> ...").
void initialiseRegistry(std::string_view hostname);
// The host name postern gives itself (SMTP greetings, EHLO towards backends).
const std::string& hostname();
const ProtocolInfo& info(config::Protocol protocol);
// Every row (the fuzz targets and the tests walk them all).
std::span<const ProtocolInfo> protocols();

// Whether a backend's first bytes start like its protocol's ready greeting (`* OK`/`* PREAUTH`,
// `+OK`, `220`); a prefix of one counts, since a greeting may arrive in pieces.
bool greetingIsReady(config::Protocol protocol, std::string_view firstBytes);

} // namespace protocol
