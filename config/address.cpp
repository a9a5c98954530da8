// Addresses as the configuration writes them: listen addresses, backend servers and CIDRs.
#include "config/parse.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace config {

namespace {

// Splits "host:port" or "[v6]:port"; the host comes back without brackets.
std::expected<std::pair<std::string, std::uint16_t>, std::string>
splitHostPort(std::string_view text, bool& bracketed) {
  std::string_view host;
  std::string_view port;
  bracketed = false;
  if (text.starts_with("[")) {
    auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::unexpected("expected \"[ipv6]:port\", got \"" + std::string(text) + "\"");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    bracketed = true;
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return std::unexpected("expected \"host:port\", got \"" + std::string(text) + "\"");
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return std::unexpected("an IPv6 address needs brackets, as in \"[::1]:143\", got \"" +
                             std::string(text) + "\"");
    }
  }
  unsigned value = 0;
  auto [end, error] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || error != std::errc{} || end != port.data() + port.size() || value > 65535) {
    return std::unexpected("port must be a number from 0 to 65535, got \"" + std::string(port) +
                           "\"");
  }
  if (host.empty()) {
    return std::unexpected("missing host in \"" + std::string(text) + "\"");
  }
  return std::pair{std::string(host), static_cast<std::uint16_t>(value)};
}

bool isIpv4(const std::string& host) {
  in_addr address{};
  return inet_pton(AF_INET, host.c_str(), &address) == 1;
}

bool isIpv6(const std::string& host) {
  in6_addr address{};
  return inet_pton(AF_INET6, host.c_str(), &address) == 1;
}

bool isHostName(std::string_view host) {
  if (host.size() > 253) {
    return false;
  }
  for (char c : host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.' || c == '_';
    if (!ok) {
      return false;
    }
  }
  return true;
}

} // namespace

std::string SocketAddress::text() const {
  return ipv6 ? "[" + host + "]:" + std::to_string(port) : host + ":" + std::to_string(port);
}

std::string ServerAddress::text() const {
  return host.find(':') != std::string::npos ? "[" + host + "]:" + std::to_string(port)
                                             : host + ":" + std::to_string(port);
}

std::expected<SocketAddress, std::string> parseSocketAddress(std::string_view text) {
  bool bracketed = false;
  auto split = splitHostPort(text, bracketed);
  if (!split) {
    return std::unexpected(split.error());
  }
  auto& [host, port] = *split;
  if (bracketed ? !isIpv6(host) : !isIpv4(host)) {
    return std::unexpected("expected an IP address and port such as \"0.0.0.0:143\" or "
                           "\"[::]:993\", got \"" +
                           std::string(text) + "\"");
  }
  return SocketAddress{host, port, bracketed};
}

std::expected<ServerAddress, std::string> parseServerAddress(std::string_view text) {
  bool bracketed = false;
  auto split = splitHostPort(text, bracketed);
  if (!split) {
    return std::unexpected(split.error());
  }
  auto& [host, port] = *split;
  if (bracketed ? !isIpv6(host) : !isHostName(host)) {
    return std::unexpected("expected \"host:port\" with a host name or IP address, got \"" +
                           std::string(text) + "\"");
  }
  if (port == 0) {
    return std::unexpected("a server needs a port from 1 to 65535, got \"" + std::string(text) +
                           "\"");
  }
  return ServerAddress{host, port};
}

std::expected<Cidr, std::string> parseCidr(std::string_view text) {
  Cidr cidr;
  cidr.text = std::string(text);
  std::string address(text);
  int maxPrefix = 32;
  int prefix = -1;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    address = std::string(text.substr(0, slash));
    auto digits = text.substr(slash + 1);
    auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (digits.empty() || error != std::errc{} || end != digits.data() + digits.size()) {
      return std::unexpected("expected a CIDR such as \"10.0.0.0/8\", got \"" + cidr.text + "\"");
    }
  }
  if (inet_pton(AF_INET, address.c_str(), cidr.bytes) == 1) {
    cidr.ipv6 = false;
  } else if (inet_pton(AF_INET6, address.c_str(), cidr.bytes) == 1) {
    cidr.ipv6 = true;
    maxPrefix = 128;
  } else {
    return std::unexpected("expected a CIDR such as \"10.0.0.0/8\", got \"" + cidr.text + "\"");
  }
  if (prefix < 0) {
    prefix = maxPrefix;
  }
  if (prefix > maxPrefix) {
    return std::unexpected("prefix length " + std::to_string(prefix) + " is too long for \"" +
                           cidr.text + "\"");
  }
  cidr.prefix = static_cast<std::uint8_t>(prefix);
  return cidr;
}

} // namespace config
