// SPEC §13: route matching (exact names, wildcards, case, A-labels, no name at all) and what
// --check-config says of routes: unknown pools, duplicates, unreachable ones, and routes a
// listener can never use.
#include "config/load.h"

#include <gtest/gtest.h>

namespace config {
namespace {

TEST(RouteMatch, ExactNamesAnyCaseAndTheRootDot) {
  EXPECT_TRUE(routeMatches("mail.tenant-a.example", "mail.tenant-a.example"));
  EXPECT_TRUE(routeMatches("mail.tenant-a.example", "MAIL.Tenant-A.example"));
  EXPECT_TRUE(routeMatches("mail.tenant-a.example", "mail.tenant-a.example."));
  EXPECT_FALSE(routeMatches("mail.tenant-a.example", "imap.tenant-a.example"));
  EXPECT_FALSE(routeMatches("mail.tenant-a.example", "mail.tenant-a.example.evil"));
  EXPECT_FALSE(routeMatches("mail.tenant-a.example", ""));
}

TEST(RouteMatch, AWildcardTakesOneOrMoreLabelsButNeverTheBareDomain) {
  EXPECT_TRUE(routeMatches("*.tenant-a.example", "imap.tenant-a.example"));
  EXPECT_TRUE(routeMatches("*.tenant-a.example", "a.b.tenant-a.example"));
  EXPECT_TRUE(routeMatches("*.tenant-a.example", "IMAP.TENANT-A.EXAMPLE"));
  EXPECT_FALSE(routeMatches("*.tenant-a.example", "tenant-a.example"));
  EXPECT_FALSE(routeMatches("*.tenant-a.example", ".tenant-a.example"));
  EXPECT_FALSE(routeMatches("*.tenant-a.example", "eviltenant-a.example"));
  EXPECT_FALSE(routeMatches("*.tenant-a.example", "imap.tenant-a.example.org"));
}

TEST(RouteMatch, InternationalNamesCompareInTheirALabelForm) {
  // "bücher.example" is "xn--bcher-kva.example" on the wire (SNI carries A-labels).
  EXPECT_TRUE(routeMatches("*.xn--bcher-kva.example", "imap.xn--bcher-kva.example"));
  EXPECT_TRUE(routeMatches("xn--bcher-kva.example", "XN--BCHER-KVA.example"));
  EXPECT_FALSE(routeMatches("xn--bcher-kva.example", "bucher.example"));
}

TEST(RouteMatch, CoverageSaysWhichLaterRoutesCanNeverMatch) {
  EXPECT_TRUE(routeCovers("*.example.com", "a.example.com"));
  EXPECT_TRUE(routeCovers("*.example.com", "*.a.example.com"));
  EXPECT_TRUE(routeCovers("*.example.com", "*.example.com"));
  EXPECT_TRUE(routeCovers("a.example.com", "A.example.com"));
  EXPECT_FALSE(routeCovers("*.example.com", "example.com"));
  EXPECT_FALSE(routeCovers("a.example.com", "*.example.com"));
  EXPECT_FALSE(routeCovers("*.a.example.com", "*.example.com"));
}

std::string configWith(std::string_view listenerExtra, std::string_view routes) {
  return std::string(R"(
[tls]
certificates = [{ cert = "/nonexistent/cert.pem", key = "/nonexistent/key.pem" }]

[[listener]]
name = "imaps"
protocol = "imap"
listen = "127.0.0.1:1993"
)") + std::string(listenerExtra) +
         "backend = \"default-pool\"\nroutes = [" + std::string(routes) + R"(]

[[backend]]
name = "default-pool"
servers = ["127.0.0.1:143"]

[[backend]]
name = "a-pool"
servers = ["127.0.0.2:143"]

[[backend]]
name = "b-pool"
servers = ["127.0.0.3:143"]
)";
}

std::vector<std::string> errorsOf(const std::string& text) {
  std::vector<std::string> out;
  auto loaded = loadString(text, "postern.toml");
  if (!loaded) {
    for (const Diagnostic& d : loaded.error()) {
      out.push_back(d.text());
    }
  }
  return out;
}

TEST(RouteConfig, RoutesLoadInOrderNormalised) {
  auto loaded = loadString(configWith("tls = \"implicit\"\nmode = \"login\"\n",
                                      R"({ sni = "*.Tenant-A.example.", backend = "a-pool" },
                                         { domain = "tenant-b.example", backend = "b-pool" })"),
                           "postern.toml");
  ASSERT_TRUE(loaded.has_value()) << errorsOf(configWith("", "")).size();
  const std::vector<Route>& routes = loaded->listeners[0].routes;
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].kind, Route::Kind::Sni);
  EXPECT_EQ(routes[0].pattern, "*.tenant-a.example");
  EXPECT_EQ(routes[0].backend, "a-pool");
  EXPECT_EQ(routes[1].kind, Route::Kind::Domain);
  EXPECT_EQ(routes[1].pattern, "tenant-b.example");
}

TEST(RouteConfig, EveryMistakeIsReportedWithItsReason) {
  auto errors = errorsOf(configWith("tls = \"implicit\"\nmode = \"login\"\n",
                                    R"({ sni = "*.tenant-a.example", backend = "a-pool" },
                                       { sni = "imap.tenant-a.example", backend = "b-pool" },
                                       { sni = "*.tenant-a.example", backend = "b-pool" },
                                       { domain = "tenant-c.example", backend = "c-pool" },
                                       { sni = "bücher.example", backend = "a-pool" },
                                       { sni = "a..example", backend = "a-pool" },
                                       { sni = "x.example", domain = "x.example", backend = "a-pool" },
                                       { domain = "x.example" })"));
  std::string all;
  for (const std::string& e : errors) {
    all += e + "\n";
  }
  EXPECT_NE(all.find("routes[1].sni: unreachable: every name it matches goes to routes[0]"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("routes[2].sni: \"*.tenant-a.example\" is routed already by routes[0]"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("routes[3].backend: no [[backend]] is named \"c-pool\""), std::string::npos)
      << all;
  EXPECT_NE(all.find("routes[4].sni: write an internationalised name in its A-label form"),
            std::string::npos)
      << all;
  EXPECT_NE(all.find("routes[5].sni: expected a host or domain name"), std::string::npos) << all;
  EXPECT_NE(all.find("routes[6]: a route matches either `sni` or `domain`"), std::string::npos)
      << all;
  EXPECT_NE(all.find("routes[7].backend: missing required key"), std::string::npos) << all;
}

TEST(RouteConfig, RoutesTheListenerCanNeverUseAreRefused) {
  auto starttls = errorsOf(configWith("tls = \"starttls\"\n",
                                      R"({ sni = "imap.tenant-a.example", backend = "a-pool" })"));
  ASSERT_EQ(starttls.size(), 1u);
  EXPECT_NE(starttls[0].find("an sni route on a STARTTLS listener needs mode = \"login\""),
            std::string::npos)
      << starttls[0];
  auto plaintext = errorsOf(configWith("tls = \"none\"\nmode = \"login\"\n",
                                       R"({ sni = "imap.tenant-a.example", backend = "a-pool" })"));
  ASSERT_EQ(plaintext.size(), 1u);
  EXPECT_NE(plaintext[0].find("an sni route needs TLS on the listener"), std::string::npos);
  auto domain = errorsOf(
      configWith("tls = \"implicit\"\n", R"({ domain = "tenant-b.example", backend = "b-pool" })"));
  ASSERT_EQ(domain.size(), 1u);
  EXPECT_NE(domain[0].find("a domain route needs mode = \"login\""), std::string::npos);
  // Login mode on STARTTLS: both kinds are fine.
  EXPECT_TRUE(errorsOf(configWith("tls = \"starttls\"\nmode = \"login\"\n",
                                  R"({ sni = "imap.tenant-a.example", backend = "a-pool" },
                                     { domain = "tenant-b.example", backend = "b-pool" })"))
                  .empty());
}

} // namespace
} // namespace config
