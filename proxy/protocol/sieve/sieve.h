// ManageSieve (RFC 5804, SPEC §12): what the protocol table needs of this folder.
#pragma once

#include "proxy/protocol/registry.h"

#include <string_view>

namespace protocol {

std::unique_ptr<Filter> makeSieveFilter(const Policy& policy);
std::unique_ptr<BackendStartTls> makeSieveBackendStartTls(std::string_view hostname);
std::unique_ptr<LoginDialogue> makeSieveLogin(const Policy& policy, BackendOffer offer);
std::unique_ptr<LoginReplay> makeSieveReplay(Credentials credentials, ReplayContext context);
const ProbeScript& sieveProbe();

} // namespace protocol
