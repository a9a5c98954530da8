// Configuration checks that need OpenSSL: certificates load and match their keys, cipher lists
// parse.
#include "tls/certificate_check.h"

#include "config/load.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <memory>

namespace tls {

namespace {

std::string lastError() {
  unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) {
    return "unknown OpenSSL error";
  }
  char buffer[256];
  ERR_error_string_n(code, buffer, sizeof buffer);
  return buffer;
}

struct CtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};

struct KeyFree {
  void operator()(EVP_PKEY* key) const { EVP_PKEY_free(key); }
};

EVP_PKEY* readKey(const std::string& path) {
  BIO* file = BIO_new_file(path.c_str(), "r");
  if (file == nullptr) {
    return nullptr;
  }
  EVP_PKEY* key = PEM_read_bio_PrivateKey(file, nullptr, nullptr, nullptr);
  BIO_free(file);
  return key;
}

} // namespace

std::vector<config::Diagnostic> checkConfig(const config::Config& config) {
  std::vector<config::Diagnostic> out;
  std::unique_ptr<SSL_CTX, CtxFree> ctx(SSL_CTX_new(TLS_server_method()));
  for (std::size_t i = 0; i < config.tls.certificates.size(); ++i) {
    const config::Certificate& certificate = config.tls.certificates[i];
    std::string prefix = "tls.certificates[" + std::to_string(i) + "]";
    ERR_clear_error();
    std::unique_ptr<SSL_CTX, CtxFree> single(SSL_CTX_new(TLS_server_method()));
    if (SSL_CTX_use_certificate_chain_file(single.get(), certificate.cert.c_str()) != 1) {
      out.push_back(config::diagnosticAt(config, prefix + ".cert",
                                         "cannot load certificate \"" + certificate.cert +
                                             "\": " + lastError()));
      continue;
    }
    std::unique_ptr<EVP_PKEY, KeyFree> key(readKey(certificate.key));
    if (!key) {
      out.push_back(config::diagnosticAt(
          config, prefix + ".key", "cannot load key \"" + certificate.key + "\": " + lastError()));
      continue;
    }
    if (X509_check_private_key(SSL_CTX_get0_certificate(single.get()), key.get()) != 1) {
      out.push_back(config::diagnosticAt(config, prefix + ".key",
                                         "key \"" + certificate.key +
                                             "\" does not match certificate \"" + certificate.cert +
                                             "\""));
    }
  }
  if (!config.tls.ciphers.empty() &&
      SSL_CTX_set_cipher_list(ctx.get(), config.tls.ciphers.c_str()) != 1) {
    out.push_back(config::diagnosticAt(
        config, "tls.ciphers", "no usable TLS 1.2 cipher in \"" + config.tls.ciphers + "\""));
  }
  if (!config.tls.ciphersuites.empty() &&
      SSL_CTX_set_ciphersuites(ctx.get(), config.tls.ciphersuites.c_str()) != 1) {
    out.push_back(config::diagnosticAt(config, "tls.ciphersuites",
                                       "no usable TLS 1.3 cipher suite in \"" +
                                           config.tls.ciphersuites + "\""));
  }
  if (!config.tls.client_ca.empty() &&
      SSL_CTX_load_verify_locations(ctx.get(), config.tls.client_ca.c_str(), nullptr) != 1) {
    out.push_back(config::diagnosticAt(config, "tls.client_ca",
                                       "cannot load CA file \"" + config.tls.client_ca +
                                           "\": " + lastError()));
  }
  ERR_clear_error();
  return out;
}

} // namespace tls
