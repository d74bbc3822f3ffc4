// Fuzz target: the DATA scanner. Invariants: the result does not depend on how the input is split
// into chunks, and a found terminator is always CRLF "." CRLF at the end of what was consumed.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "relay/smtp/data.hpp"

using batv::relay::smtp::DataScanner;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  DataScanner whole;
  bool done_whole = false;
  const std::size_t n_whole = whole.scan(p, size, done_whole);
  // Split at a point chosen by the input itself.
  const std::size_t cut = size ? data[0] % (size + 1) : 0;
  DataScanner split;
  bool done_split = false;
  std::size_t n_split = split.scan(p, cut, done_split);
  if (!done_split) n_split += split.scan(p + cut, size - cut, done_split);
  if (done_whole != done_split || n_whole != n_split || whole.bare_newline != split.bare_newline) std::abort();
  if (done_whole) {
    if (n_whole < 3 || std::memcmp(p + n_whole - 3, ".\r\n", 3) != 0) std::abort();
    if (n_whole > 3 && std::memcmp(p + n_whole - 5, "\r\n", 2) != 0) std::abort();
  }
  return 0;
}
