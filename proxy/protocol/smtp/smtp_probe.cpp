// The SMTP health check (SPEC §7): EHLO, then QUIT, read with the SMTP syntax module.
#include "proxy/protocol/health_probe.h"
#include "proxy/protocol/smtp/smtp_syntax.h"

namespace protocol {

const ProbeScript& smtpProbe() {
  static const ProbeScript script{
      [](std::string_view hostname) { return "EHLO " + std::string(hostname) + "\r\n"; },
      [](std::string_view text) { return !smtp::parseReply(text).last; },
      [](std::string_view text, std::vector<std::string>& capabilities) {
        smtp::ReplyLine reply = smtp::parseReply(text);
        if (reply.code != "250") {
          return ProbeLine::Failed;
        }
        capabilities.emplace_back(reply.text);
        if (!reply.last) {
          return ProbeLine::More;
        }
        capabilities.erase(capabilities.begin()); // the first line is the server's name
        std::erase_if(capabilities, [](const std::string& line) { return line.empty(); });
        return ProbeLine::Done;
      },
      "QUIT\r\n",
      [](std::string_view) { return true; },
  };
  return script;
}

} // namespace protocol
