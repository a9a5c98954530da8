// The protocols postern speaks, as a table: names and the lines postern itself says in each.
#pragma once

#include "config/model.h"
#include "proxy/protocol/backend_starttls.h"
#include "proxy/protocol/filter.h"
#include "proxy/protocol/login/login.h"

#include <memory>
#include <string>
#include <string_view>

namespace protocol {

struct ProtocolInfo {
  config::Protocol protocol;
  const char* name;
  std::unique_ptr<Filter> (*makeFilter)(const Policy& policy);
  std::unique_ptr<BackendStartTls> (*makeBackendStartTls)(std::string_view hostname);
  // Login mode: postern's side of the dialogue, and the replay at the chosen server.
  std::unique_ptr<LoginDialogue> (*makeLogin)(const Policy& policy, BackendOffer offer);
  std::unique_ptr<LoginReplay> (*makeReplay)(Credentials credentials, ReplayContext context);
  // Said to a client when no backend server can be reached (SPEC §7).
  std::string unavailable;
  // Said to a client refused by a connection limit (SPEC §8).
  std::string tooManyConnections;
  // Said to a client whose session postern ends at shutdown (SPEC §9).
  std::string shuttingDown;
  // Said to a client that did not authenticate within preauth_timeout (SPEC §8).
  std::string timedOut;
};

// `hostname` is the name SMTP replies start with (RFC 5321 §4.2: "421 <domain> ...").
void initialiseRegistry(std::string_view hostname);
// The host name postern gives itself (SMTP greetings, EHLO towards backends).
const std::string& hostname();
const ProtocolInfo& info(config::Protocol protocol);

// Whether a backend's first bytes start like its protocol's ready greeting (`* OK`/`* PREAUTH`,
// `+OK`, `220`); a prefix of one counts, since a greeting may arrive in pieces.
bool greetingIsReady(config::Protocol protocol, std::string_view firstBytes);

} // namespace protocol
