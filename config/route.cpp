// SPEC §13: how a route's name pattern matches a TLS server name or a user's domain.
#include "config/model.h"

namespace config {

namespace {

bool equalNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i] >= 'A' && a[i] <= 'Z' ? static_cast<char>(a[i] + 32) : a[i];
    char y = b[i] >= 'A' && b[i] <= 'Z' ? static_cast<char>(b[i] + 32) : b[i];
    if (x != y) {
      return false;
    }
  }
  return true;
}

} // namespace

bool routeMatches(std::string_view pattern, std::string_view name) {
  if (name.ends_with('.')) {
    name.remove_suffix(1); // a fully qualified name's root dot
  }
  if (!pattern.starts_with("*.")) {
    return equalNoCase(pattern, name);
  }
  std::string_view suffix = pattern.substr(1); // ".example.com"
  // One or more labels before the suffix: "a.example.com", "a.b.example.com".
  std::size_t head = name.size() > suffix.size() ? name.size() - suffix.size() : 0;
  return head > 0 && equalNoCase(name.substr(head), suffix) && name[head - 1] != '.';
}

bool routeCovers(std::string_view earlier, std::string_view later) {
  if (!earlier.starts_with("*.")) {
    return equalNoCase(earlier, later); // an exact name covers only itself
  }
  if (!later.starts_with("*.")) {
    return routeMatches(earlier, later);
  }
  // "*.example.com" covers "*.a.example.com" (and itself).
  return equalNoCase(earlier, later) || routeMatches(earlier, later.substr(2));
}

} // namespace config
