// Durations as the configuration writes them: a number and a unit, possibly several in a row.
#include "config/parse.h"

#include <charconv>
#include <cstdint>

namespace config {

std::expected<Duration, std::string> parseDuration(std::string_view text) {
  if (text.empty()) {
    return std::unexpected("expected a duration such as \"250ms\", \"5s\", \"30m\" or \"1h\"");
  }
  std::int64_t total = 0;
  std::string_view rest = text;
  while (!rest.empty()) {
    std::int64_t number = 0;
    auto [end, error] = std::from_chars(rest.data(), rest.data() + rest.size(), number);
    if (error != std::errc{} || end == rest.data()) {
      return std::unexpected("expected a duration with a unit (ms, s, m, h, d), got \"" +
                             std::string(text) + "\"");
    }
    rest.remove_prefix(static_cast<std::size_t>(end - rest.data()));
    std::int64_t unit = 0;
    if (rest.starts_with("ms")) {
      unit = 1;
      rest.remove_prefix(2);
    } else if (rest.starts_with("s")) {
      unit = 1000;
      rest.remove_prefix(1);
    } else if (rest.starts_with("m")) {
      unit = 60'000;
      rest.remove_prefix(1);
    } else if (rest.starts_with("h")) {
      unit = 3'600'000;
      rest.remove_prefix(1);
    } else if (rest.starts_with("d")) {
      unit = 86'400'000;
      rest.remove_prefix(1);
    } else {
      return std::unexpected("expected a duration with a unit (ms, s, m, h, d), got \"" +
                             std::string(text) + "\"");
    }
    if (number < 0 || number > 10'000'000'000LL / unit) {
      return std::unexpected("duration \"" + std::string(text) + "\" is out of range");
    }
    total += number * unit;
  }
  return Duration(total);
}

std::string formatDuration(Duration duration) {
  auto ms = duration.count();
  if (ms % 3'600'000 == 0 && ms != 0) {
    return std::to_string(ms / 3'600'000) + "h";
  }
  if (ms % 60'000 == 0 && ms != 0) {
    return std::to_string(ms / 60'000) + "m";
  }
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + "s";
  }
  return std::to_string(ms) + "ms";
}

} // namespace config
