// SSL_CTX construction from the configuration: client-facing contexts (SNI among certificates,
// session tickets with rotating keys, OCSP stapling, ALPACA defence) and backend-facing ones.
#include "tls/context.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

namespace tls {

namespace {

// TLS 1.2: forward secrecy (ECDHE) and AEAD only, ECDSA first.
constexpr const char* kDefaultCiphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                        "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                        "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
// TLS 1.3: AES-128-GCM first (Mozilla's "intermediate" order): as strong as a mail session
// needs, and about a quarter less CPU per byte than AES-256-GCM, which OpenSSL would pick under
// server preference by default. ChaCha20 still goes to clients that prefer it
// (SSL_OP_PRIORITIZE_CHACHA).
constexpr const char* kDefaultCiphersuites =
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384";
constexpr const char* kGroups = "X25519:P-256:P-384";
constexpr unsigned char kSessionIdContext[] = "postern";

std::string opensslError() {
  unsigned long code = ERR_peek_last_error();
  std::string text = code != 0 ? ERR_reason_error_string(code) != nullptr
                                     ? ERR_reason_error_string(code)
                                     : "unknown error"
                               : "unknown error";
  ERR_clear_error();
  return text;
}

bool readFile(const std::string& path, std::string& out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return false;
  }
  std::ostringstream text;
  text << in.rdbuf();
  out = text.str();
  return true;
}

// A name from a certificate covers a requested name exactly, or as a one-label wildcard.
bool nameCovers(const std::string& pattern, const std::string& name) {
  auto lower = [](std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    return s;
  };
  std::string p = lower(pattern);
  std::string n = lower(name);
  if (p == n) {
    return true;
  }
  if (p.starts_with("*.")) {
    auto dot = n.find('.');
    return dot != std::string::npos && dot > 0 && n.substr(dot) == p.substr(1);
  }
  return false;
}

CertificateInfo describe(X509* certificate, EVP_PKEY* key) {
  CertificateInfo info;
  info.keyType = EVP_PKEY_get_base_id(key) == EVP_PKEY_EC ? "ecdsa" : "rsa";
  auto* names = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(certificate, NID_subject_alt_name, nullptr, nullptr));
  if (names != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
      if (name->type == GEN_DNS) {
        const ASN1_IA5STRING* dns = name->d.dNSName;
        info.names.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(dns)),
                                static_cast<std::size_t>(ASN1_STRING_length(dns)));
      }
    }
    GENERAL_NAMES_free(names);
  }
  char cn[256] = {};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName, cn, sizeof cn) >
      0) {
    info.subject = cn;
    if (info.names.empty()) {
      info.names.emplace_back(cn); // no SAN: the CN is the name, as clients used to read it
    }
  } else if (!info.names.empty()) {
    info.subject = info.names.front();
  }
  const ASN1_TIME* notAfter = X509_get0_notAfter(certificate);
  std::tm tm{};
  if (ASN1_TIME_to_tm(notAfter, &tm) == 1) {
    info.notAfter = static_cast<std::int64_t>(timegm(&tm));
  }
  return info;
}

} // namespace

// --- session tickets -----------------------------------------------------------------------

class TicketKeys {
public:
  explicit TicketKeys(std::chrono::seconds rotation) : rotation_(rotation) {}

  struct Key {
    unsigned char name[16];
    unsigned char aes[32];
    unsigned char hmac[32];
    std::chrono::steady_clock::time_point created;
  };

  // The key that seals new tickets, rotating it when it is older than the rotation period.
  Key current() {
    std::lock_guard lock(mutex_);
    auto now = std::chrono::steady_clock::now();
    if (keys_.empty() || now - keys_.front().created >= rotation_) {
      Key key{};
      RAND_bytes(key.name, sizeof key.name);
      RAND_bytes(key.aes, sizeof key.aes);
      RAND_bytes(key.hmac, sizeof key.hmac);
      key.created = now;
      keys_.insert(keys_.begin(), key);
      // A ticket stays decryptable for two further rotation periods.
      if (keys_.size() > 3) {
        OPENSSL_cleanse(&keys_.back(), sizeof(Key));
        keys_.pop_back();
      }
    }
    return keys_.front();
  }

  // The key named in a ticket; false when it has rotated out. `renew` when it is not current.
  bool find(const unsigned char* name, Key& out, bool& renew) {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < keys_.size(); ++i) {
      if (std::memcmp(keys_[i].name, name, sizeof keys_[i].name) == 0) {
        out = keys_[i];
        renew = i != 0;
        return true;
      }
    }
    return false;
  }

private:
  std::mutex mutex_;
  std::chrono::seconds rotation_;
  std::vector<Key> keys_;
};

std::shared_ptr<TicketKeys> makeTicketKeys(std::chrono::seconds rotation) {
  return std::make_shared<TicketKeys>(rotation);
}

// --- the client-facing context ------------------------------------------------------------

struct ServerContext::Impl {
  // Certificates with the same names share one SSL_CTX, so an ECDSA and an RSA certificate for
  // one name set are both offered and OpenSSL picks by what the client supports.
  struct Identity {
    SSL_CTX* ctx = nullptr;
    std::vector<std::string> names;
  };
  std::vector<Identity> identities;  // the first is the default
  std::map<X509*, std::string> ocsp; // DER responses by leaf certificate
  std::shared_ptr<TicketKeys> ticketKeys;
  bool strictSni = false;

  ~Impl() {
    for (Identity& identity : identities) {
      SSL_CTX_free(identity.ctx);
    }
  }

  static Impl* of(SSL* ssl) {
    return static_cast<Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  }

  static int onServerName(SSL* ssl, int* alert, void*) noexcept {
    Impl* impl = of(ssl);
    const char* requested = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (requested == nullptr) {
      if (impl->strictSni) {
        *alert = SSL_AD_UNRECOGNIZED_NAME;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
      }
      return SSL_TLSEXT_ERR_NOACK;
    }
    for (Identity& identity : impl->identities) {
      for (const std::string& name : identity.names) {
        if (nameCovers(name, requested)) {
          if (SSL_get_SSL_CTX(ssl) != identity.ctx) {
            SSL_set_SSL_CTX(ssl, identity.ctx);
          }
          return SSL_TLSEXT_ERR_OK;
        }
      }
    }
    if (impl->strictSni) {
      *alert = SSL_AD_UNRECOGNIZED_NAME;
      return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_NOACK; // the default certificate answers
  }

  // ALPACA (cross-protocol attacks, https://alpaca-attack.com): a client that offers ALPN but
  // not this listener's protocol is talking to the wrong service; refuse the handshake.
  static int onAlpn(SSL* ssl, const unsigned char** out, unsigned char* outLength,
                    const unsigned char* in, unsigned int inLength, void*) noexcept {
    const char* wanted = static_cast<const char*>(SSL_get_app_data(ssl));
    std::size_t wantedLength = std::strlen(wanted);
    for (unsigned int i = 0; i < inLength;) {
      unsigned int length = in[i];
      if (i + 1 + length > inLength) {
        break;
      }
      if (length == wantedLength && std::memcmp(in + i + 1, wanted, length) == 0) {
        *out = in + i + 1;
        *outLength = static_cast<unsigned char>(length);
        return SSL_TLSEXT_ERR_OK;
      }
      i += 1 + length;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL; // OpenSSL sends no_application_protocol
  }

  static int onStatusRequest(SSL* ssl, void*) noexcept {
    Impl* impl = of(ssl);
    auto found = impl->ocsp.find(SSL_get_certificate(ssl));
    if (found == impl->ocsp.end()) {
      return SSL_TLSEXT_ERR_NOACK;
    }
    auto* copy = static_cast<unsigned char*>(OPENSSL_malloc(found->second.size()));
    if (copy == nullptr) {
      return SSL_TLSEXT_ERR_NOACK;
    }
    std::memcpy(copy, found->second.data(), found->second.size());
    SSL_set_tlsext_status_ocsp_resp(ssl, copy, static_cast<long>(found->second.size()));
    return SSL_TLSEXT_ERR_OK;
  }

  static int onTicketKey(SSL* ssl, unsigned char* name, unsigned char* iv, EVP_CIPHER_CTX* cipher,
                         EVP_MAC_CTX* mac, int encrypt) noexcept {
    Impl* impl = of(ssl);
    TicketKeys::Key key{};
    int result = 1;
    if (encrypt == 1) {
      key = impl->ticketKeys->current();
      std::memcpy(name, key.name, sizeof key.name);
      if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1) {
        return -1;
      }
    } else {
      bool renew = false;
      if (!impl->ticketKeys->find(name, key, renew)) {
        return 0; // unknown or expired key: a full handshake, no error
      }
      result = renew ? 2 : 1;
    }
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_octet_string(OSSL_MAC_PARAM_KEY, key.hmac, sizeof key.hmac),
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, const_cast<char*>("SHA256"), 0),
        OSSL_PARAM_construct_end()};
    // Fetched once: naming the cipher on every handshake costs OpenSSL 3 a provider lookup.
    static EVP_CIPHER* const aes = EVP_CIPHER_fetch(nullptr, "AES-256-CBC", nullptr);
    if (aes == nullptr || EVP_CipherInit_ex(cipher, aes, nullptr, key.aes, iv, encrypt) != 1 ||
        EVP_MAC_CTX_set_params(mac, params) != 1) {
      OPENSSL_cleanse(&key, sizeof key);
      return -1;
    }
    OPENSSL_cleanse(&key, sizeof key);
    return result;
  }

  // Settings every client-facing SSL_CTX shares (SPEC §4 defaults).
  std::expected<SSL_CTX*, std::string> newCtx(const config::Tls& config) {
    SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == nullptr) {
      return std::unexpected(opensslError());
    }
    SSL_CTX_set_app_data(ctx, this);
    SSL_CTX_set_min_proto_version(ctx, config.min_version == "TLSv1.3" ? TLS1_3_VERSION
                                                                       : TLS1_2_VERSION);
    long options = SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                   SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_PRIORITIZE_CHACHA;
    if (!config.session_tickets) {
      options |= SSL_OP_NO_TICKET;
    }
    SSL_CTX_set_options(ctx, options);
    // Idle sessions give their record buffers back (SPEC §10: memory per idle session).
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    // One ticket per handshake is enough for one resumption; two double the work for nothing.
    SSL_CTX_set_num_tickets(ctx, 1);
    SSL_CTX_set_session_id_context(ctx, kSessionIdContext, sizeof kSessionIdContext - 1);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(ctx, 20000);
    SSL_CTX_set_timeout(ctx, 2 * 3600);
    if (SSL_CTX_set_cipher_list(ctx, config.ciphers.empty() ? kDefaultCiphers
                                                            : config.ciphers.c_str()) != 1 ||
        SSL_CTX_set_ciphersuites(ctx, config.ciphersuites.empty()
                                          ? kDefaultCiphersuites
                                          : config.ciphersuites.c_str()) != 1 ||
        SSL_CTX_set1_groups_list(ctx, kGroups) != 1) {
      SSL_CTX_free(ctx);
      return std::unexpected("cipher configuration: " + opensslError());
    }
    SSL_CTX_set_tlsext_servername_callback(ctx, onServerName);
    SSL_CTX_set_alpn_select_cb(ctx, onAlpn, nullptr);
    SSL_CTX_set_tlsext_status_cb(ctx, onStatusRequest);
    if (config.session_tickets) {
      SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, onTicketKey);
    }
    if (!config.client_ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, config.client_ca.c_str(), nullptr) != 1) {
        SSL_CTX_free(ctx);
        return std::unexpected("client_ca \"" + config.client_ca + "\": " + opensslError());
      }
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(config.client_ca.c_str());
      if (names != nullptr) {
        SSL_CTX_set_client_CA_list(ctx, names);
      }
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    return ctx;
  }
};

std::expected<std::shared_ptr<ServerContext>, std::string>
ServerContext::create(const config::Tls& config, std::shared_ptr<TicketKeys> ticketKeys) {
  std::shared_ptr<ServerContext> context(new ServerContext());
  context->impl_ = std::make_unique<Impl>();
  Impl& impl = *context->impl_;
  impl.ticketKeys = std::move(ticketKeys);
  impl.strictSni = config.strict_sni;
  for (const config::Certificate& entry : config.certificates) {
    // Load into a scratch context first to learn the names, then into its identity.
    BIO* file = BIO_new_file(entry.key.c_str(), "r");
    EVP_PKEY* key =
        file != nullptr ? PEM_read_bio_PrivateKey(file, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(file);
    if (key == nullptr) {
      return std::unexpected("cannot load key \"" + entry.key + "\": " + opensslError());
    }
    file = BIO_new_file(entry.cert.c_str(), "r");
    X509* leaf = file != nullptr ? PEM_read_bio_X509(file, nullptr, nullptr, nullptr) : nullptr;
    BIO_free(file);
    if (leaf == nullptr) {
      EVP_PKEY_free(key);
      return std::unexpected("cannot load certificate \"" + entry.cert + "\": " + opensslError());
    }
    CertificateInfo info = describe(leaf, key);
    X509_free(leaf);
    EVP_PKEY_free(key);

    std::vector<std::string> sorted = info.names;
    std::sort(sorted.begin(), sorted.end());
    Impl::Identity* identity = nullptr;
    for (Impl::Identity& existing : impl.identities) {
      std::vector<std::string> names = existing.names;
      std::sort(names.begin(), names.end());
      if (names == sorted) {
        identity = &existing;
      }
    }
    if (identity == nullptr) {
      auto ctx = impl.newCtx(config);
      if (!ctx) {
        return std::unexpected(ctx.error());
      }
      identity = &impl.identities.emplace_back();
      identity->ctx = *ctx;
      identity->names = info.names;
    }
    if (SSL_CTX_use_certificate_chain_file(identity->ctx, entry.cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(identity->ctx, entry.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(identity->ctx) != 1) {
      return std::unexpected("certificate \"" + entry.cert + "\": " + opensslError());
    }
    if (!entry.ocsp.empty()) {
      std::string der;
      if (!readFile(entry.ocsp, der)) {
        return std::unexpected("cannot read OCSP response \"" + entry.ocsp + "\"");
      }
      impl.ocsp[SSL_CTX_get0_certificate(identity->ctx)] = std::move(der);
    }
    context->certificates_.push_back(std::move(info));
  }
  if (impl.identities.empty()) {
    return std::unexpected("no certificate configured");
  }
  return context;
}

ServerContext::~ServerContext() = default;

SSL* ServerContext::newSsl(const char* alpn) {
  SSL* ssl = SSL_new(impl_->identities.front().ctx);
  if (ssl != nullptr) {
    SSL_set_app_data(ssl, const_cast<char*>(alpn));
  }
  return ssl;
}

// --- the backend-facing context -----------------------------------------------------------

std::expected<std::shared_ptr<ClientContext>, std::string>
ClientContext::create(const config::Backend& config) {
  std::shared_ptr<ClientContext> context(new ClientContext());
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (ctx == nullptr) {
    return std::unexpected(opensslError());
  }
  context->ctx_ = ctx;
  context->verify_ = config.tls_verify;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (config.tls_verify) {
    int loaded = config.ca_file.empty()
                     ? SSL_CTX_set_default_verify_paths(ctx)
                     : SSL_CTX_load_verify_locations(ctx, config.ca_file.c_str(), nullptr);
    if (loaded != 1) {
      return std::unexpected("backend " + config.name +
                             ": cannot load CA certificates: " + opensslError());
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
  }
  return context;
}

ClientContext::~ClientContext() { SSL_CTX_free(ctx_); }

SSL* ClientContext::newSsl(const std::string& host) {
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) {
    return nullptr;
  }
  in6_addr scratch{};
  bool literal = inet_pton(AF_INET, host.c_str(), &scratch) == 1 ||
                 inet_pton(AF_INET6, host.c_str(), &scratch) == 1;
  if (!literal) {
    SSL_set_tlsext_host_name(ssl, host.c_str());
  }
  if (verify_) {
    if (literal) {
      X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
    } else {
      SSL_set1_host(ssl, host.c_str());
    }
  }
  return ssl;
}

} // namespace tls
