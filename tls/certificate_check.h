// Configuration checks that need OpenSSL: certificates load and match their keys, cipher lists
// parse.
#pragma once

#include "config/model.h"

#include <vector>

namespace tls {

std::vector<config::Diagnostic> checkConfig(const config::Config& config);

} // namespace tls
