// Loading a configuration file: parse the TOML, check every key, report every problem at once.
#pragma once

#include "config/model.h"

#include <expected>
#include <string>
#include <string_view>
#include <vector>

namespace config {

// Reads and validates `path`. On failure, every problem found, sorted by position.
std::expected<Config, std::vector<Diagnostic>> loadFile(const std::string& path);

// The same for text already in memory; `file` names it in diagnostics and anchors relative paths.
std::expected<Config, std::vector<Diagnostic>> loadString(std::string_view text,
                                                          const std::string& file);

// Cross-checks between sections (called by the loaders; exposed for tests).
void validate(const Config& config, std::vector<Diagnostic>& diagnostics);

// A diagnostic anchored where `path` (or its closest parent) was written in the file.
Diagnostic diagnosticAt(const Config& config, const std::string& path, std::string message);

// A complete, commented configuration that passes --check-config.
std::string_view exampleConfig();

} // namespace config
