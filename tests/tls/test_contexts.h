// The TLS contexts the TLS tests share: a server context holding mail.example.test's certificate
// and a client context that trusts `caFile`, both built as postern builds them.
#pragma once

#include "tls/context.h"

#include <filesystem>
#include <memory>
#include <string>

namespace tls::test_support {

struct Contexts {
  std::shared_ptr<ServerContext> server;
  std::shared_ptr<ClientContext> client;
  std::string error; // empty when both were made
};

// `dir` holds mail.pem and mail.key.
inline Contexts makeContexts(const std::filesystem::path& dir,
                             const std::filesystem::path& caFile) {
  Contexts made;
  config::Tls tlsConfig;
  tlsConfig.certificates.push_back({(dir / "mail.pem").string(), (dir / "mail.key").string(), ""});
  auto server = ServerContext::create(tlsConfig, makeTicketKeys(std::chrono::hours(1)));
  if (!server.has_value()) {
    made.error = server.error();
    return made;
  }
  made.server = *server;
  config::Backend backendConfig;
  backendConfig.name = "test";
  backendConfig.ca_file = caFile.string();
  auto client = ClientContext::create(backendConfig);
  if (!client.has_value()) {
    made.error = client.error();
    return made;
  }
  made.client = *client;
  return made;
}

} // namespace tls::test_support
