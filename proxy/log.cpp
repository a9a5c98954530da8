// Short, greppable log lines on stderr, as logfmt or JSON; one write(2) per line.
#include "proxy/log.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <ctime>

namespace logging {

namespace {

std::atomic<int> gLevel{static_cast<int>(Level::Info)};
std::atomic<bool> gJson{false};

const char* levelName(Level level) {
  switch (level) {
  case Level::Error:
    return "error";
  case Level::Warn:
    return "warn";
  case Level::Info:
    return "info";
  case Level::Debug:
    return "debug";
  }
  return "info";
}

bool needsQuotes(std::string_view value) {
  if (value.empty()) {
    return true;
  }
  for (char c : value) {
    if (c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20) {
      return true;
    }
  }
  return false;
}

void appendEscaped(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (static_cast<unsigned char>(c) < 0x20) {
        static const char* hex = "0123456789abcdef";
        out += "\\u00";
        out += hex[(c >> 4) & 0xf];
        out += hex[c & 0xf];
      } else {
        out += c;
      }
    }
  }
}

void appendField(std::string& out, std::string_view key, std::string_view value, bool json) {
  if (json) {
    out += out.size() > 1 ? ",\"" : "\"";
    out += key;
    out += "\":\"";
    appendEscaped(out, value);
    out += '"';
    return;
  }
  if (!out.empty()) {
    out += ' ';
  }
  out += key;
  out += '=';
  if (needsQuotes(value)) {
    out += '"';
    appendEscaped(out, value);
    out += '"';
  } else {
    out += value;
  }
}

void emit(std::string& line, bool json) {
  if (json) {
    line += '}';
  }
  line += '\n';
  std::size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) {
      return;
    }
    done += static_cast<std::size_t>(n);
  }
}

} // namespace

void configure(config::LogLevel level, config::LogFormat format) {
  gLevel = static_cast<int>(level);
  gJson = format == config::LogFormat::Json;
}

bool enabled(Level level) { return static_cast<int>(level) <= gLevel.load(); }

std::string timestamp() {
  auto now = std::chrono::system_clock::now();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char buffer[40];
  std::size_t n = std::strftime(buffer, sizeof buffer, "%Y-%m-%dT%H:%M:%S", &utc);
  std::snprintf(buffer + n, sizeof buffer - n, ".%03dZ", static_cast<int>(ms % 1000));
  return buffer;
}

void write(Level level, std::string_view message, std::initializer_list<Field> fields) {
  if (!enabled(level)) {
    return;
  }
  bool json = gJson;
  std::string line = json ? "{" : "";
  appendField(line, "ts", timestamp(), json);
  appendField(line, "level", levelName(level), json);
  appendField(line, "msg", message, json);
  for (const Field& field : fields) {
    appendField(line, field.key, field.value, json);
  }
  emit(line, json);
}

void access(std::initializer_list<Field> fields) {
  bool json = gJson;
  std::string line = json ? "{" : "";
  appendField(line, "ts", timestamp(), json);
  for (const Field& field : fields) {
    appendField(line, field.key, field.value.empty() ? "-" : field.value, json);
  }
  emit(line, json);
}

} // namespace logging
