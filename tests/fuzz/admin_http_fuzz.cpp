// libFuzzer target for the runtime API's request reader: any bytes, fed in two pieces, must
// give one verdict, never hold more than the head bound, and a complete request's path must
// start with '/'.
#include "proxy/admin/http.h"

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const char> bytes(reinterpret_cast<const char*>(data), size);
  std::size_t cut = size == 0 ? 0 : data[0] % (size + 1);
  admin::http::RequestReader whole;
  admin::http::RequestReader split;
  auto verdict = whole.feed(bytes);
  split.feed(bytes.subspan(0, cut));
  auto splitVerdict = split.feed(bytes.subspan(cut));
  if (verdict != splitVerdict) {
    std::abort();
  }
  if (verdict == admin::http::RequestReader::Status::Complete) {
    const auto& request = whole.request();
    if (request.path.empty() || request.path.front() != '/' ||
        request.method != split.request().method || request.segments != split.request().segments) {
      std::abort();
    }
  }
  if (verdict == admin::http::RequestReader::Status::Refused &&
      (whole.errorStatus() < 400 || whole.errorStatus() > 599)) {
    std::abort();
  }
  std::string decoded;
  if (admin::http::percentDecode(admin::http::percentEncode(std::string_view(bytes.data(), size)),
                                 decoded, false) &&
      decoded != std::string_view(bytes.data(), size) &&
      std::string_view(bytes.data(), size).find('\0') == std::string_view::npos) {
    std::abort();
  }
  return 0;
}
