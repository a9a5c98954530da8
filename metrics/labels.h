// Label values from fixed sets (SPEC §6, STYLE #7), shared with the code that picks them. No
// prometheus-cpp here: the pure protocol code (and its fuzz build) includes this.
#pragma once

#include <cstddef>
#include <iterator>

namespace metrics {

// The `mechanism` labels of postern_auth_total; protocol::mechanismLabel maps what a client
// names onto them ("none" when it named nothing, "other" for anything else).
inline constexpr const char* kMechanismLabels[] = {
    "plain",         "login", "xoauth2", "oauthbearer", "cram-md5", "scram-sha-1",
    "scram-sha-256", "user",  "pass",    "apop",        "none",     "other"};
inline constexpr std::size_t kMechanismCount = std::size(kMechanismLabels);

} // namespace metrics
