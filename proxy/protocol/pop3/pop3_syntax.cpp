// POP3 syntax shared by every POP3 dialogue (SPEC §5.1).
#include "proxy/protocol/pop3/pop3_syntax.h"

namespace protocol::pop3 {

bool isMultiLine(std::string_view verb, std::string_view arguments) {
  if (equalsNoCase(verb, "LIST") || equalsNoCase(verb, "UIDL")) {
    return arguments.empty();
  }
  if (equalsNoCase(verb, "AUTH")) {
    return firstArgument(arguments).empty(); // no mechanism: the list
  }
  return equalsNoCase(verb, "RETR") || equalsNoCase(verb, "TOP") || equalsNoCase(verb, "CAPA");
}

} // namespace protocol::pop3
