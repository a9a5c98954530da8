// The PROXY protocol codec: both versions, both families, every partial prefix, bad headers.
#include "config/parse.h"
#include "proxy/protocol/proxy_header.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cstring>

namespace protocol {
namespace {

sockaddr_storage address(const char* ip, std::uint16_t port) {
  sockaddr_storage out{};
  if (std::string_view(ip).find(':') != std::string_view::npos) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&out);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, ip, &a->sin6_addr);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&out);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, ip, &a->sin_addr);
  }
  return out;
}

ProxyHeader parse(std::string_view text) {
  return parseProxyHeader(std::span<const char>(text.data(), text.size()));
}

TEST(ProxyHeader, V1EncodingIsTheSpecificationsText) {
  EXPECT_EQ(encodeProxyHeader(config::ProxyProtocol::V1, address("192.0.2.7", 40000),
                              address("127.0.0.1", 143)),
            "PROXY TCP4 192.0.2.7 127.0.0.1 40000 143\r\n");
  EXPECT_EQ(
      encodeProxyHeader(config::ProxyProtocol::V1, address("2001:db8::7", 1), address("::1", 993)),
      "PROXY TCP6 2001:db8::7 ::1 1 993\r\n");
}

TEST(ProxyHeader, RoundTripsInBothVersionsAndFamilies) {
  for (auto version : {config::ProxyProtocol::V1, config::ProxyProtocol::V2}) {
    for (auto [source, destination] :
         {std::pair{"192.0.2.7", "127.0.0.1"}, std::pair{"2001:db8::7", "::1"}}) {
      std::string header =
          encodeProxyHeader(version, address(source, 40000), address(destination, 993));
      std::string withData = header + "\x16\x03\x01 ClientHello...";
      ProxyHeader parsed = parse(withData);
      ASSERT_EQ(parsed.status, ProxyHeader::Status::Done) << parsed.error;
      EXPECT_EQ(parsed.consumed, header.size());
      EXPECT_TRUE(parsed.hasAddresses);
      sockaddr_storage expected = address(source, 40000);
      EXPECT_EQ(std::memcmp(&parsed.source, &expected, sizeof expected), 0) << source;
      for (std::size_t cut = 0; cut < header.size(); ++cut) {
        EXPECT_EQ(parse(header.substr(0, cut)).status, ProxyHeader::Status::NeedMore)
            << "prefix of " << cut << " bytes";
      }
    }
  }
}

TEST(ProxyHeader, LocalAndUnknownKeepTheConnectionsAddress) {
  ProxyHeader unknown = parse("PROXY UNKNOWN\r\n");
  EXPECT_EQ(unknown.status, ProxyHeader::Status::Done);
  EXPECT_FALSE(unknown.hasAddresses);
  std::string local("\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00", 16);
  ProxyHeader parsed = parse(local);
  EXPECT_EQ(parsed.status, ProxyHeader::Status::Done);
  EXPECT_FALSE(parsed.hasAddresses);
}

TEST(ProxyHeader, BadHeadersAreInvalid) {
  for (std::string_view text :
       {"GET / HTTP/1.1\r\n", "PROXY TCP4 1.2.3.4\r\n", "PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n",
        "PROXY TCP4 1.1.1.1 1.1.1.1 1 99999\r\n", "PROXY TCP5 1.1.1.1 1.1.1.1 1 2\r\n",
        "PROXY TCP4 1.1.1.1 1.1.1.1 1 2 extra\r\n"}) {
    EXPECT_EQ(parse(text).status, ProxyHeader::Status::Invalid) << text;
  }
  EXPECT_EQ(parse("PROXY " + std::string(200, 'x')).status, ProxyHeader::Status::Invalid)
      << "a v1 header has at most 107 bytes";
  std::string wrongVersion("\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x0c", 16);
  EXPECT_EQ(parse(wrongVersion).status, ProxyHeader::Status::Invalid);
}

TEST(Cidr, ContainsByPrefix) {
  auto net = config::parseCidr("10.1.0.0/17").value();
  EXPECT_TRUE(cidrContains(net, address("10.1.127.255", 1)));
  EXPECT_FALSE(cidrContains(net, address("10.1.128.0", 1)));
  EXPECT_FALSE(cidrContains(net, address("::1", 1))) << "families never mix";
  auto v6 = config::parseCidr("2001:db8::/32").value();
  EXPECT_TRUE(cidrContains(v6, address("2001:db8:ffff::1", 1)));
  EXPECT_FALSE(cidrContains(v6, address("2001:db9::1", 1)));
  EXPECT_TRUE(cidrContains(config::parseCidr("0.0.0.0/0").value(), address("8.8.8.8", 1)));
}

} // namespace
} // namespace protocol
