// Short, greppable log lines on stderr, as logfmt or JSON; one write(2) per line.
#pragma once

#include "config/model.h"

#include <initializer_list>
#include <string>
#include <string_view>

namespace logging {

enum class Level { Error, Warn, Info, Debug };

struct Field {
  std::string_view key;
  std::string value;
};

void configure(config::LogLevel level, config::LogFormat format);
bool enabled(Level level);
void write(Level level, std::string_view message, std::initializer_list<Field> fields = {});

// An access-log line (SPEC §9): fields only, no level or message, `-` for absent values.
void access(std::initializer_list<Field> fields);

inline void error(std::string_view message, std::initializer_list<Field> fields = {}) {
  write(Level::Error, message, fields);
}
inline void warn(std::string_view message, std::initializer_list<Field> fields = {}) {
  write(Level::Warn, message, fields);
}
inline void info(std::string_view message, std::initializer_list<Field> fields = {}) {
  write(Level::Info, message, fields);
}
inline void debug(std::string_view message, std::initializer_list<Field> fields = {}) {
  if (enabled(Level::Debug)) {
    write(Level::Debug, message, fields);
  }
}

// RFC 3339 UTC with milliseconds, e.g. 2026-11-26T15:35:18.123Z.
std::string timestamp();

} // namespace logging
