// data: the DATA body scanner (RFC 5321 4.1.1.4), pure and incremental.
//
// Finds the end of data, CRLF "." CRLF, across any split of the input into chunks, and notes a
// bare CR or bare LF anywhere in the body: a next hop that ended data on one of those would let a
// client smuggle a second message past us (CVE-2023-51764 class), so the relay refuses such a
// message instead of passing it on. The body starts at a line start (right after DATA's CRLF),
// so an empty body is just ".\r\n". Bytes are never changed: dot-stuffing passes through.
#pragma once

#include <cstddef>

namespace batv::relay::smtp {

struct DataScanner {
  enum State { mid_line, saw_cr, line_start, saw_dot, saw_dot_cr } state = line_start;
  bool bare_newline = false;

  // Scans p[0..n); returns the bytes consumed. `done` is set when the terminator's last byte was
  // consumed (the return value then counts it); bytes after it belong to the next command.
  std::size_t scan(const char* p, std::size_t n, bool& done) {
    for (std::size_t i = 0; i < n; ++i) {
      const char c = p[i];
      switch (state) {
        case line_start:
          if (c == '.') state = saw_dot;
          else if (c == '\r') state = saw_cr;
          else if (c == '\n') { bare_newline = true; state = mid_line; }
          else state = mid_line;
          break;
        case saw_dot:
          if (c == '\r') state = saw_dot_cr;
          else if (c == '\n') { bare_newline = true; state = mid_line; }
          else state = mid_line;
          break;
        case saw_dot_cr:
          if (c == '\n') {
            done = true;
            return i + 1;
          }
          bare_newline = true;
          state = c == '\r' ? saw_cr : mid_line;
          break;
        case saw_cr:
          if (c == '\n') state = line_start;
          else { bare_newline = true; state = c == '\r' ? saw_cr : mid_line; }
          break;
        case mid_line:
          if (c == '\r') state = saw_cr;
          else if (c == '\n') bare_newline = true;
          break;
      }
    }
    done = false;
    return n;
  }
};

}  // namespace batv::relay::smtp
