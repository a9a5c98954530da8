// The fuzz inputs' framing, shared by the targets: a list of reads separated by 0xFF bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace fuzz {

// Calls `read(bytes)` for each read in turn (empty ones included) until it returns false.
template <typename Read> void forEachRead(const std::uint8_t* data, std::size_t size, Read&& read) {
  std::size_t start = 0;
  while (start < size) {
    std::size_t end = start;
    while (end < size && data[end] != 0xFF) {
      ++end;
    }
    if (!read(std::span<const std::uint8_t>(data + start, end - start))) {
      return;
    }
    start = end + 1;
  }
}

inline std::span<const char> chars(std::span<const std::uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

} // namespace fuzz
