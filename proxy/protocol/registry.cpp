// The protocols postern speaks, as a table: names and the lines postern itself says in each.
#include "proxy/protocol/registry.h"

#include "metrics/labels.h"
#include "proxy/protocol/line_reader.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace protocol {

// Each protocol's folder builds its row (config/protocols.def names the function).
#define POSTERN_PROTOCOL(id, name, row) ProtocolInfo row(std::string_view hostname);
#include "config/protocols.def"
#undef POSTERN_PROTOCOL

namespace {

std::string& hostnameStorage() {
  static std::string name = "postern";
  return name;
}

constexpr std::size_t kProtocolCount = std::size(config::kProtocolNames);

// The table in config/protocols.def's order, so that a config::Protocol indexes it.
std::array<ProtocolInfo, kProtocolCount> makeTable(std::string_view hostname) {
  std::array<ProtocolInfo, kProtocolCount> rows;
  std::size_t i = 0;
#define POSTERN_PROTOCOL(id, label, build)                                                         \
  rows[i] = build(hostname);                                                                       \
  rows[i].protocol = config::Protocol::id;                                                         \
  rows[i].name = label;                                                                            \
  ++i;
#include "config/protocols.def"
#undef POSTERN_PROTOCOL
  return rows;
}

std::array<ProtocolInfo, kProtocolCount>& table() {
  static std::array<ProtocolInfo, kProtocolCount> protocols = makeTable("postern");
  return protocols;
}

} // namespace

bool greetingIsReady(config::Protocol protocol, std::string_view text) {
  return info(protocol).greetingIsReady(text);
}

const char* mechanismLabel(std::string_view name) {
  // The label set is metrics' (kMechanismLabels); "none" and "other" are not names to match.
  static constexpr std::size_t kNamed = metrics::kMechanismCount - 2;
  for (std::size_t i = 0; i < kNamed; ++i) {
    if (equalsNoCase(name, metrics::kMechanismLabels[i])) {
      return metrics::kMechanismLabels[i];
    }
  }
  return name.empty() ? "none" : "other";
}

void initialiseRegistry(std::string_view hostname) {
  hostnameStorage() = std::string(hostname);
  table() = makeTable(hostname);
}

const std::string& hostname() { return hostnameStorage(); }

std::span<const ProtocolInfo> protocols() { return table(); }

const ProtocolInfo& info(config::Protocol protocol) {
  return table()[static_cast<std::size_t>(protocol)];
}

} // namespace protocol
