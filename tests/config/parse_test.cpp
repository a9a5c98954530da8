// Durations, addresses and CIDRs as the configuration writes them.
#include "config/parse.h"

#include <gtest/gtest.h>

namespace config {
namespace {

using namespace std::chrono_literals;

TEST(ParseDuration, AcceptsEachUnitAndCombinations) {
  EXPECT_EQ(parseDuration("250ms").value(), 250ms);
  EXPECT_EQ(parseDuration("5s").value(), 5s);
  EXPECT_EQ(parseDuration("30m").value(), 30min);
  EXPECT_EQ(parseDuration("1h").value(), 1h);
  EXPECT_EQ(parseDuration("1d").value(), 24h);
  EXPECT_EQ(parseDuration("1h30m").value(), 90min);
  EXPECT_EQ(parseDuration("0s").value(), 0ms);
}

TEST(ParseDuration, RefusesMissingUnitsAndGarbage) {
  for (const char* text : {"", "5", "s", "5 s", "5sec", "-1s", "1.5s", "5x", "ms"}) {
    EXPECT_FALSE(parseDuration(text).has_value()) << text;
  }
  EXPECT_NE(parseDuration("5").error().find("unit"), std::string::npos);
}

TEST(ParseDuration, RefusesOverflow) {
  EXPECT_FALSE(parseDuration("99999999999999999999s").has_value());
  EXPECT_FALSE(parseDuration("999999999d").has_value());
}

TEST(FormatDuration, PicksTheLargestWholeUnit) {
  EXPECT_EQ(formatDuration(2h), "2h");
  EXPECT_EQ(formatDuration(30min), "30m");
  EXPECT_EQ(formatDuration(5s), "5s");
  EXPECT_EQ(formatDuration(250ms), "250ms");
  EXPECT_EQ(formatDuration(0ms), "0s");
}

TEST(ParseSocketAddress, AcceptsIpv4AndBracketedIpv6) {
  auto v4 = parseSocketAddress("0.0.0.0:143").value();
  EXPECT_EQ(v4.host, "0.0.0.0");
  EXPECT_EQ(v4.port, 143);
  EXPECT_FALSE(v4.ipv6);
  auto v6 = parseSocketAddress("[::1]:993").value();
  EXPECT_EQ(v6.host, "::1");
  EXPECT_TRUE(v6.ipv6);
  EXPECT_EQ(v6.text(), "[::1]:993");
  EXPECT_EQ(parseSocketAddress("127.0.0.1:0").value().port, 0);
}

TEST(ParseSocketAddress, RefusesNamesBadPortsAndUnbracketedIpv6) {
  for (const char* text : {"localhost:143", "0.0.0.0", "0.0.0.0:", "0.0.0.0:65536", "::1:143",
                           "[::1]143", "[::1]", "[1.2.3.4]:1", "1.2.3.4:x", ":143", "[]:1"}) {
    EXPECT_FALSE(parseSocketAddress(text).has_value()) << text;
  }
}

TEST(ParseServerAddress, AcceptsNamesAndLiterals) {
  EXPECT_EQ(parseServerAddress("imap-2.internal:143").value().host, "imap-2.internal");
  EXPECT_EQ(parseServerAddress("10.0.0.5:143").value().port, 143);
  EXPECT_EQ(parseServerAddress("[2001:db8::5]:143").value().text(), "[2001:db8::5]:143");
}

TEST(ParseServerAddress, RefusesPortZeroAndBadNames) {
  for (const char* text : {"imap:0", "imap", "im ap:143", "imap:143:1", "[zz]:1"}) {
    EXPECT_FALSE(parseServerAddress(text).has_value()) << text;
  }
}

TEST(ParseCidr, AcceptsNetworksAndSingleAddresses) {
  auto net = parseCidr("10.0.0.0/8").value();
  EXPECT_FALSE(net.ipv6);
  EXPECT_EQ(net.prefix, 8);
  EXPECT_EQ(net.bytes[0], 10);
  EXPECT_EQ(parseCidr("127.0.0.1").value().prefix, 32);
  EXPECT_EQ(parseCidr("2001:db8::/32").value().prefix, 32);
  EXPECT_EQ(parseCidr("::1").value().prefix, 128);
}

TEST(ParseCidr, RefusesBadPrefixes) {
  for (const char* text : {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/x", "example/8", ""}) {
    EXPECT_FALSE(parseCidr(text).has_value()) << text;
  }
}

} // namespace
} // namespace config
