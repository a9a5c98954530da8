// The IMAP health check (SPEC §7): CAPABILITY, then LOGOUT, read with the IMAP syntax module.
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/imap/imap_syntax.h"

namespace protocol {

const ProbeScript& imapProbe() {
  static const ProbeScript script{
      [](std::string_view) { return std::string("H1 CAPABILITY\r\n"); },
      [](std::string_view) { return false; },
      [](std::string_view text, std::vector<std::string>& capabilities) {
        if (text.starts_with("* ")) {
          if (auto atoms = imap::capabilities(text)) {
            capabilities = std::move(*atoms);
          }
          return ProbeLine::More;
        }
        std::string_view status = imap::taggedStatus(text, "H1");
        if (status.empty()) {
          return ProbeLine::More;
        }
        return equalsNoCase(status, "OK") ? ProbeLine::Done : ProbeLine::Failed;
      },
      "H2 LOGOUT\r\n",
      [](std::string_view text) { return !imap::taggedStatus(text, "H2").empty(); },
  };
  return script;
}

} // namespace protocol
