// line_reader: command-line framing of the client input (RFC 5321 2.3.8, 4.5.3.1.4), pure and
// incremental.
//
// A line ends at LF; a CR right before that LF is dropped (a client sending bare LF is read the
// same way, as Postfix smtpd does); a CR anywhere else and NUL bytes stay in the line (the
// command parser refuses them). A line longer than the limit (max_line counts the LF, as
// limits.line_length counts CRLF) is not fatal: the reader drops its bytes as they come, so the
// caller's buffer never holds more than max_line - 1 unconsumed bytes, and reports it as
// too_long once, at its LF, where the stream is in step again (Postfix: skip to the next
// newline, answer 500).
//
// The caller owns the buffer: next() looks at the bytes not yet consumed (the window), returns
// how many of them to drop from its front, and for a line a view into that window, valid until
// the caller moves or overwrites those bytes. No I/O, no allocation, no clock, no logging. One
// LineReader per line read is enough; only an overlong line carries state (skipping) across
// calls, until its LF.
#pragma once

#include <cstddef>
#include <cstring>
#include <string_view>

namespace batv::relay::smtp {

struct LineRead {
  enum class Status {
    line,       // a whole line: `line` (without LF, without the CR before it)
    too_long,   // an overlong line ended here (its LF consumed): answer it once, go on
    need_more,  // no LF in the window yet: read more and call again with the bytes kept
  };
  Status status = Status::need_more;
  std::size_t consumed = 0;  // drop this many bytes from the window's front (even for need_more)
  std::string_view line;     // Status::line only; points into the window
};

class LineReader {
 public:
  explicit LineReader(std::size_t max_line) : max_line_(max_line) {}

  // The next line of `window`, the bytes the caller has not consumed yet.
  LineRead next(std::string_view window) {
    const void* lf = window.empty() ? nullptr : std::memchr(window.data(), '\n', window.size());
    if (lf != nullptr) {
      const auto len = static_cast<std::size_t>(static_cast<const char*>(lf) - window.data());
      if (skipping_ || len + 1 > max_line_) {
        skipping_ = false;  // resynchronised at this LF
        return {LineRead::Status::too_long, len + 1, {}};
      }
      std::string_view line = window.substr(0, len);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      return {LineRead::Status::line, len + 1, line};
    }
    // No LF: max_line or more bytes cannot become a line of max_line with its LF. Drop them
    // (and everything until the LF) instead of buffering them.
    if (skipping_ || window.size() >= max_line_) {
      skipping_ = true;
      return {LineRead::Status::need_more, window.size(), {}};
    }
    return {LineRead::Status::need_more, 0, {}};
  }

  // Inside an overlong line: its bytes are being dropped until the next LF.
  [[nodiscard]] bool skipping() const { return skipping_; }

  // Whether `window` holds the end of a line (a next() that does not need more input).
  [[nodiscard]] static bool has_line(std::string_view window) {
    return !window.empty() && std::memchr(window.data(), '\n', window.size()) != nullptr;
  }

 private:
  std::size_t max_line_;
  bool skipping_ = false;
};

}  // namespace batv::relay::smtp
