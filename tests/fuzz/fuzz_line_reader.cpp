// Fuzz target: command-line framing (relay/smtp/line_reader.hpp), driven the way Session::read_line
// drives it: a fixed buffer of limit + 2 bytes (the smallest a session has), filled in chunks of
// sizes the input chooses, compacted when full, one reader per line.
// Input: byte 0 picks the limit (max_line), bytes 1..8 seed the chunk sizes, the rest is the
// client's byte stream.
// Invariants, against a plain reference splitter over the whole stream (each LF ends a segment;
// a segment longer than max_line with its LF is one too_long, any other is its line without the
// LF and the CR before it; bytes after the last LF are left unread):
//   - the same events in the same order: every line exactly, every overlong line once;
//   - no byte lost or duplicated: the buffer always holds exactly the stream's next unread bytes,
//     and each event ends where its segment ends;
//   - the buffer keeps fewer than max_line bytes between reads, so a read always has room;
//   - has_line(window) says exactly whether next(window) can answer without more input.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "relay/smtp/line_reader.hpp"

using batv::relay::smtp::LineRead;
using batv::relay::smtp::LineReader;

namespace {

struct Event {
  bool too_long = false;
  std::string line;    // when !too_long
  std::size_t end = 0; // stream offset right after the segment's LF
  bool operator==(const Event&) const = default;
};

std::vector<Event> reference(std::string_view s, std::size_t max_line) {
  std::vector<Event> out;
  std::size_t start = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\n') continue;
    const std::size_t seg = i + 1 - start;  // with its LF
    Event e;
    e.end = i + 1;
    if (seg > max_line) {
      e.too_long = true;
    } else {
      e.line.assign(s.substr(start, i - start));
      if (!e.line.empty() && e.line.back() == '\r') e.line.pop_back();
    }
    out.push_back(std::move(e));
    start = i + 1;
  }
  return out;
}

std::size_t limit_from(std::uint8_t b) {
  if (b < 200) return 1 + b % 40;                  // short limits: overlong lines are common
  return std::size_t{512} << (b % 3);              // the session's range: 512, 1024, 2048
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 9) return 0;
  const std::size_t max_line = limit_from(data[0]);
  std::uint64_t rng = 0;
  std::memcpy(&rng, data + 1, 8);
  rng |= 1;  // xorshift must not start at 0
  const std::string_view stream(reinterpret_cast<const char*>(data + 9), size - 9);
  const std::vector<Event> expected = reference(stream, max_line);

  // The session's buffer: in_, in_begin_, in_end_ (relay/session.cpp fill()).
  std::vector<char> in(max_line + 2);
  std::size_t begin = 0, end = 0;
  std::size_t pos = 0;   // stream offset of in[begin]
  std::size_t read = 0;  // stream bytes read into the buffer so far
  std::vector<Event> got;
  LineReader reader(max_line);
  for (;;) {
    const std::string_view window(in.data() + begin, end - begin);
    if (pos + window.size() != read || window != stream.substr(pos, window.size())) std::abort();
    const LineRead r = reader.next(window);
    if (LineReader::has_line(window) != (r.status != LineRead::Status::need_more)) std::abort();
    if (r.consumed > window.size()) std::abort();
    if (r.status == LineRead::Status::line) {
      if (r.line.data() != window.data() || r.line.size() >= r.consumed) std::abort();  // a view
      got.push_back({false, std::string(r.line), pos + r.consumed});
    } else if (r.status == LineRead::Status::too_long) {
      got.push_back({true, {}, pos + r.consumed});
    }
    begin += r.consumed;
    pos += r.consumed;
    if (r.status != LineRead::Status::need_more) {
      if (got.size() > expected.size() || !(got.back() == expected[got.size() - 1])) std::abort();
      reader = LineReader(max_line);  // Session::read_line starts each line afresh
      continue;
    }
    if (end - begin >= max_line) std::abort();  // kept bytes stay under the limit
    if (read == stream.size()) break;
    // fill(): reset when empty, compact when full, then read what fits.
    if (begin == end) begin = end = 0;
    if (end == in.size() && begin > 0) {
      std::memmove(in.data(), in.data() + begin, end - begin);
      end -= begin;
      begin = 0;
    }
    if (end == in.size()) std::abort();  // no room: a session would read nothing forever
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    const std::size_t want = (rng & 3) == 0 ? 1 : 1 + static_cast<std::size_t>(rng >> 8) % (2 * max_line + 2);
    const std::size_t n = std::min({want, in.size() - end, stream.size() - read});
    std::memcpy(in.data() + end, stream.data() + read, n);
    end += n;
    read += n;
  }
  if (got != expected) std::abort();
  // Everything up to the last LF consumed; only the unfinished tail (or part of an overlong one)
  // may be left.
  const std::size_t last_lf = expected.empty() ? 0 : expected.back().end;
  if (pos < last_lf || stream.substr(last_lf, pos - last_lf).find('\n') != std::string_view::npos) std::abort();
  return 0;
}
