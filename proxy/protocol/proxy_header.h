// The PROXY protocol (HAProxy, versions 1 and 2): encoding the header postern sends to backends
// and parsing the header a trusted load balancer sends to postern. Pure: bytes and addresses.
#pragma once

#include "config/model.h"

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstddef>
#include <span>
#include <string>

namespace protocol {

// What a v2 header tells the backend of the client's TLS (SPEC §13), as TLVs HAProxy and Dovecot
// read: PP2_TYPE_SSL (with the version, cipher and, for a verified client certificate, its
// common name) and PP2_TYPE_AUTHORITY (the server name the client asked for).
struct ProxyTls {
  std::string version;                      // "TLSv1.3"
  std::string cipher;                       // "TLS_AES_128_GCM_SHA256"
  std::string serverName;                   // SNI; "" when the client sent none
  bool clientCertificate = false;           // the client presented a certificate
  bool certificateOnThisConnection = false; // ... in this handshake (not a resumed session's)
  bool clientVerified = false;              // ... and it verified against [tls] client_ca
  std::string clientCommonName;             // its subject's CN, when verified
};

// `source` is the client, `destination` the address it connected to; `tls` (v2 only) the
// client's TLS, when it has any.
std::string encodeProxyHeader(config::ProxyProtocol version, const sockaddr_storage& source,
                              const sockaddr_storage& destination, const ProxyTls* tls = nullptr);

struct ProxyHeader {
  enum class Status { NeedMore, Invalid, Done };
  Status status = Status::NeedMore;
  std::size_t consumed = 0;  // header bytes, when Done
  bool hasAddresses = false; // false for LOCAL / UNKNOWN: keep the connection's own addresses
  sockaddr_storage source{};
  sockaddr_storage destination{};
  std::string error;
};

// Parses a header at the start of `data` (v1 text or v2 binary, detected by their signatures).
ProxyHeader parseProxyHeader(std::span<const char> data);

// Whether `address` lies in `network`.
bool cidrContains(const config::Cidr& network, const sockaddr_storage& address);

} // namespace protocol
