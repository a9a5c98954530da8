// SSL_CTX construction from the configuration: client-facing contexts (SNI among certificates,
// session tickets with rotating keys, OCSP stapling, ALPACA defence) and backend-facing ones.
#pragma once

#include "config/model.h"

#include <chrono>
#include <cstdint>
#include <expected>
#include <memory>
#include <string>
#include <vector>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace tls {

// What the certificate-expiry gauge needs for each loaded certificate.
struct CertificateInfo {
  std::string subject;   // the subject CN (or the first SAN name when there is no CN)
  std::string keyType;   // "ecdsa" or "rsa"
  std::int64_t notAfter; // seconds since the epoch
  std::vector<std::string> names;
};

class TicketKeys;

// The client-facing TLS configuration, shared by every TLS listener. Rebuilt on SIGHUP; a
// session keeps the context it started with alive through its shared_ptr.
class ServerContext {
public:
  // Loads every certificate, key and OCSP response; the error names the first that failed.
  static std::expected<std::shared_ptr<ServerContext>, std::string>
  create(const config::Tls& config, std::shared_ptr<TicketKeys> ticketKeys);
  ~ServerContext();
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  // A new server-side SSL for a listener whose protocol has the ALPN id `alpn` (a static string,
  // from the protocol table): it must be offered whenever the client offers ALPN at all.
  SSL* newSsl(const char* alpn);
  const std::vector<CertificateInfo>& certificates() const { return certificates_; }

  struct Impl;

private:
  ServerContext() = default;
  std::unique_ptr<Impl> impl_;
  std::vector<CertificateInfo> certificates_;
};

// Session-ticket keys: one current key that seals new tickets and a few previous ones that still
// open old tickets; rotated by age, kept across reloads so resumption survives a SIGHUP.
std::shared_ptr<TicketKeys> makeTicketKeys(std::chrono::seconds rotation);

// The backend-facing TLS configuration of one pool.
class ClientContext {
public:
  static std::expected<std::shared_ptr<ClientContext>, std::string>
  create(const config::Backend& config);
  ~ClientContext();
  ClientContext(const ClientContext&) = delete;
  ClientContext& operator=(const ClientContext&) = delete;

  // A new client-side SSL towards `host` (SNI and name verification unless it is an IP literal,
  // which is verified as an IP address instead).
  SSL* newSsl(const std::string& host);

private:
  ClientContext() = default;
  SSL_CTX* ctx_ = nullptr;
  bool verify_ = true;
};

} // namespace tls
