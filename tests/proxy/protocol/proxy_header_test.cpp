// The PROXY protocol codec: both versions, both families, every partial prefix, bad headers.
#include "config/parse.h"
#include "proxy/protocol/proxy_header.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>

#include <cstring>
#include <map>

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

// The TLVs as the PROXY protocol's §2.2 lays them out, read back byte by byte.
TEST(ProxyHeader, V2CarriesTheClientsTlsAsTlvs) {
  ProxyTls tls;
  tls.version = "TLSv1.3";
  tls.cipher = "TLS_AES_128_GCM_SHA256";
  tls.serverName = "imap.tenant-a.example";
  tls.clientCertificate = true;
  tls.certificateOnThisConnection = true;
  tls.clientVerified = true;
  tls.clientCommonName = "anna";
  std::string header = encodeProxyHeader(config::ProxyProtocol::V2, address("192.0.2.7", 40000),
                                         address("127.0.0.1", 993), &tls);
  ASSERT_GT(header.size(), 28u);
  std::size_t length =
      (static_cast<unsigned char>(header[14]) << 8) | static_cast<unsigned char>(header[15]);
  EXPECT_EQ(16 + length, header.size());
  // After the 12 address bytes: the TLVs, each type, 16-bit length, value.
  std::map<int, std::string> tlvs;
  auto readTlvs = [](std::string_view bytes, std::map<int, std::string>& out) {
    while (bytes.size() >= 3) {
      std::size_t size =
          (static_cast<unsigned char>(bytes[1]) << 8) | static_cast<unsigned char>(bytes[2]);
      out[static_cast<unsigned char>(bytes[0])] = std::string(bytes.substr(3, size));
      bytes.remove_prefix(3 + size);
    }
  };
  readTlvs(std::string_view(header).substr(28), tlvs);
  EXPECT_EQ(tlvs[0x02], "imap.tenant-a.example"); // PP2_TYPE_AUTHORITY
  ASSERT_TRUE(tlvs.contains(0x20));               // PP2_TYPE_SSL
  std::string_view ssl = tlvs[0x20];
  ASSERT_GE(ssl.size(), 5u);
  EXPECT_EQ(static_cast<unsigned char>(ssl[0]), 0x07); // SSL, certificate on conn and session
  EXPECT_EQ(ssl.substr(1, 4), std::string(4, '\0'));   // verify: 0, it verified
  std::map<int, std::string> sub;
  readTlvs(ssl.substr(5), sub);
  EXPECT_EQ(sub[0x21], "TLSv1.3");                // PP2_SUBTYPE_SSL_VERSION
  EXPECT_EQ(sub[0x22], "anna");                   // PP2_SUBTYPE_SSL_CN
  EXPECT_EQ(sub[0x23], "TLS_AES_128_GCM_SHA256"); // PP2_SUBTYPE_SSL_CIPHER
  // postern's own parser (a load balancer's header may carry TLVs too) reads the addresses.
  ProxyHeader parsed = parse(header);
  ASSERT_EQ(parsed.status, ProxyHeader::Status::Done);
  EXPECT_EQ(parsed.consumed, header.size());

  // No certificate at all: verify is non-zero too (the spec's zero means "verified").
  ProxyTls none;
  none.version = "TLSv1.3";
  none.cipher = "TLS_AES_128_GCM_SHA256";
  std::string bare = encodeProxyHeader(config::ProxyProtocol::V2, address("192.0.2.7", 1),
                                       address("127.0.0.1", 993), &none);
  std::map<int, std::string> bareTlvs;
  readTlvs(std::string_view(bare).substr(28), bareTlvs);
  EXPECT_EQ(static_cast<unsigned char>(bareTlvs[0x20][0]), 0x01); // SSL only
  EXPECT_NE(bareTlvs[0x20].substr(1, 4), std::string(4, '\0'));
  // No SNI, an unverified certificate: no AUTHORITY, no CN, verify non-zero.
  ProxyTls plain;
  plain.version = "TLSv1.2";
  plain.cipher = "ECDHE-ECDSA-AES128-GCM-SHA256";
  plain.clientCertificate = true;
  plain.clientCommonName = "mallory";
  std::string other = encodeProxyHeader(config::ProxyProtocol::V2, address("192.0.2.7", 1),
                                        address("127.0.0.1", 993), &plain);
  std::map<int, std::string> top;
  readTlvs(std::string_view(other).substr(28), top);
  EXPECT_FALSE(top.contains(0x02));
  EXPECT_NE(top[0x20].substr(1, 4), std::string(4, '\0'));
  std::map<int, std::string> otherSub;
  readTlvs(std::string_view(top[0x20]).substr(5), otherSub);
  EXPECT_FALSE(otherSub.contains(0x22));
  // v1 has no TLVs: the same facts change nothing.
  EXPECT_EQ(encodeProxyHeader(config::ProxyProtocol::V1, address("192.0.2.7", 1),
                              address("127.0.0.1", 993), &tls),
            "PROXY TCP4 192.0.2.7 127.0.0.1 1 993\r\n");
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
