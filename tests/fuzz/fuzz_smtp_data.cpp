// Fuzz target: the DATA scanner (relay/smtp/data.hpp).
// Invariants: the result does not depend on how the input is split into chunks; it matches a
// plain reference model: the body ends at the first CRLF "." CRLF (counting the CRLF of the DATA
// line before the input), and bare_newline is set exactly when the consumed bytes hold a CR not
// followed by LF or an LF not preceded by CR (a CR still waiting for its LF at the end of an
// unfinished body is not yet bare).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "relay/smtp/data.hpp"

using batv::relay::smtp::DataScanner;

namespace {

struct Expected {
  bool done = false;
  std::size_t consumed = 0;
  bool bare = false;
};

Expected reference(const char* p, std::size_t size) {
  const std::string body = "\r\n" + std::string(p, size);  // the DATA command's own CRLF first
  Expected e;
  const std::size_t end = body.find("\r\n.\r\n");
  e.done = end != std::string::npos;
  e.consumed = e.done ? end + 5 - 2 : size;
  for (std::size_t i = 2; i < e.consumed + 2; ++i) {
    if (body[i] == '\n' && body[i - 1] != '\r') e.bare = true;
    if (body[i] == '\r' && i + 1 < e.consumed + 2 && body[i + 1] != '\n') e.bare = true;
  }
  return e;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const char* p = reinterpret_cast<const char*>(data);
  DataScanner whole;
  bool done_whole = false;
  const std::size_t n_whole = whole.scan(p, size, done_whole);
  // Split at points chosen by the input itself: once, and byte by byte.
  const std::size_t cut = size ? data[0] % (size + 1) : 0;
  DataScanner split;
  bool done_split = false;
  std::size_t n_split = split.scan(p, cut, done_split);
  if (!done_split) n_split += split.scan(p + cut, size - cut, done_split);
  if (done_whole != done_split || n_whole != n_split || whole.bare_newline != split.bare_newline) std::abort();
  DataScanner bytes;
  bool done_bytes = false;
  std::size_t n_bytes = 0;
  while (!done_bytes && n_bytes < size) n_bytes += bytes.scan(p + n_bytes, 1, done_bytes);
  if (done_whole != done_bytes || n_whole != n_bytes || whole.bare_newline != bytes.bare_newline) std::abort();

  const Expected e = reference(p, size);
  if (e.done != done_whole || e.consumed != n_whole || e.bare != whole.bare_newline) std::abort();
  if (done_whole) {
    if (n_whole < 3 || std::memcmp(p + n_whole - 3, ".\r\n", 3) != 0) std::abort();
    if (n_whole > 3 && std::memcmp(p + n_whole - 5, "\r\n", 2) != 0) std::abort();
  }
  return 0;
}
