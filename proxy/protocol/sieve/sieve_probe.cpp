// The ManageSieve health check (SPEC §7, §12): the greeting (a capability list), CAPABILITY,
// then LOGOUT, read with the ManageSieve syntax module. Capabilities are kept as the lines the
// server sent, SASL as "SASL <mechanisms>" so that the pool's common list merges mechanisms.
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/sieve/sieve.h"
#include "proxy/protocol/sieve/sieve_syntax.h"

namespace protocol {

const ProbeScript& sieveProbe() {
  static const ProbeScript script{
      [](std::string_view) { return std::string("CAPABILITY\r\n"); },
      [](std::string_view text) { return !sieve::isResponse(text); },
      [](std::string_view text, std::vector<std::string>& capabilities) {
        if (std::optional<sieve::Response> status = sieve::parseResponse(text)) {
          return equalsNoCase(status->status, "OK") ? ProbeLine::Done : ProbeLine::Failed;
        }
        if (std::optional<sieve::Capability> capability = sieve::parseCapability(text)) {
          if (equalsNoCase(capability->name, "SASL")) {
            std::string line = "SASL";
            for (const std::string& mechanism : sieve::valueWords(*capability)) {
              line += " " + mechanism;
            }
            capabilities.push_back(std::move(line));
          } else {
            capabilities.emplace_back(text);
          }
        }
        return ProbeLine::More;
      },
      "LOGOUT\r\n",
      [](std::string_view text) { return sieve::isResponse(text); },
      true,
  };
  return script;
}

} // namespace protocol
