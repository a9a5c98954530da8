// Parsers for the value syntaxes the configuration uses: durations, addresses, CIDRs.
#pragma once

#include "config/model.h"

#include <expected>
#include <string>
#include <string_view>

namespace config {

// "250ms", "5s", "30m", "1h", "1d", or several joined ("1h30m"). The error says what is wrong.
std::expected<Duration, std::string> parseDuration(std::string_view text);
std::string formatDuration(Duration duration);

// "0.0.0.0:143", "127.0.0.1:0", "[::]:993": an IP literal and a port.
std::expected<SocketAddress, std::string> parseSocketAddress(std::string_view text);

// "imap.internal:143", "10.0.0.5:143", "[2001:db8::5]:143".
std::expected<ServerAddress, std::string> parseServerAddress(std::string_view text);

// "10.0.0.0/8", "2001:db8::/32", or a single address (a /32 or /128).
std::expected<Cidr, std::string> parseCidr(std::string_view text);

} // namespace config
