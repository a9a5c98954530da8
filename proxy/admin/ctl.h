// `postern ctl`: the runtime API from the command line, as tables (SPEC §14).
#pragma once

#include <string_view>
#include <vector>

namespace admin {

// `args` follow "ctl". Exit status: 0 done; 1 the instance refused (401, 404, no session to
// kick) or could not be reached; 2 a usage error, or a config without a usable [admin].
int runCtl(const std::vector<std::string_view>& args);

} // namespace admin
