// The protocol seam: a pure filter per protocol that reads the pre-authentication dialogue in
// both directions and says what to send where. No sockets, no TLS, no clock.
#pragma once

#include "config/model.h"

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace protocol {

// What the listener allows; fixed for the session.
struct Policy {
  config::TlsMode listenerTls = config::TlsMode::None;
  bool requireTls = false;
  bool allowAuth = true;
  std::size_t maxLineLength = 8192;
  std::string hostname = "postern"; // SMTP replies start with it
};

// Things the session counts.
enum class Event {
  StartTlsOk,           // postern said go-ahead to a client STARTTLS
  StartTlsRefused,      // a STARTTLS postern refused (arguments, twice, not offered)
  StartTlsInjection,    // bytes pipelined after STARTTLS (CVE-2011-0411 class); session closed
  AuthRefusedPlaintext, // authentication before TLS on a require_tls listener
  Authenticated,        // the backend accepted the client's authentication
  MailAccepted,         // SMTP: the backend accepted MAIL FROM (mail is flowing)
};

struct EventRecord {
  Event event;
  const char* mechanism = ""; // AuthRefusedPlaintext: a fixed label ("plain", "login", ...)
};

// A SASL mechanism or login command as a metrics label from a fixed set.
const char* mechanismLabel(std::string_view name);

// The result of feeding bytes to a filter: apply in this order.
struct Output {
  std::string toClient;
  std::string toBackend;
  std::vector<EventRecord> events;
  bool startTls = false;  // upgrade the client side once toClient is on the wire
  bool close = false;     // end the session (protocol_error) once toClient is on the wire
  bool relayOnly = false; // nothing left to rewrite: from now on bytes pass untouched

  void clear() {
    toClient.clear();
    toBackend.clear();
    events.clear();
    startTls = close = relayOnly = false;
  }
};

class Filter {
public:
  virtual ~Filter() = default;
  virtual void fromClient(std::span<const char> data, Output& out) = 0;
  virtual void fromBackend(std::span<const char> data, Output& out) = 0;
  // The client-side TLS handshake finished (after a STARTTLS go-ahead).
  virtual void tlsStarted(Output& out) = 0;
  // A side finished sending: whatever part of a line it left is passed on as it is.
  virtual void clientEnded(Output& out) = 0;
  virtual void backendEnded(Output& out) = 0;
  // Client bytes read but not passed on yet. Before authentication never more than the
  // policy's maxLineLength once a read is processed (SPEC §5.1; the fuzz targets check it).
  virtual std::size_t heldFromClient() const = 0;
};

std::unique_ptr<Filter> makeImapFilter(const Policy& policy);
std::unique_ptr<Filter> makePop3Filter(const Policy& policy);
std::unique_ptr<Filter> makeSmtpFilter(const Policy& policy);
// SMTP after login mode authenticated the session: still parsed (XCLIENT/XFORWARD refused).
std::unique_ptr<Filter> makeSmtpFilterAfterLogin(const Policy& policy);

} // namespace protocol
