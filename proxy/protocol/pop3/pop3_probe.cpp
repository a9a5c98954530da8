// The POP3 health check (SPEC §7): CAPA (optional, RFC 2449), then QUIT.
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/pop3/pop3_syntax.h"

namespace protocol {

const ProbeScript& pop3Probe() {
  static const ProbeScript script{
      [](std::string_view) { return std::string("CAPA\r\n"); },
      [](std::string_view) { return false; },
      [](std::string_view text, std::vector<std::string>& capabilities) {
        if (capabilities.empty() && pop3::isError(text)) {
          return ProbeLine::Done; // no CAPA: the server still answered
        }
        if (pop3::isEnd(text)) {
          return ProbeLine::Done;
        }
        if (!pop3::isOk(text)) {
          capabilities.emplace_back(pop3::unstuffed(text));
        }
        return ProbeLine::More;
      },
      "QUIT\r\n",
      [](std::string_view) { return true; },
  };
  return script;
}

} // namespace protocol
