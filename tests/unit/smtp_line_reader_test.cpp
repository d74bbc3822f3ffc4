// Unit tests for relay/smtp/line_reader.hpp: command-line framing (LF, the CR before it) and the
// overlong line skipped to its LF, fed whole and in pieces as a session's buffer receives them.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include "relay/smtp/line_reader.hpp"

using batv::relay::smtp::LineRead;
using batv::relay::smtp::LineReader;
using Status = LineRead::Status;

namespace {

// What came out: a line's text, or "<too long>".
constexpr std::string_view too_long_mark = "<too long>";

// A session's input buffer in miniature: bytes arrive in chunks, the reader runs until it needs
// more, consumed bytes go. One reader per line, as Session::read_line uses it; `kept_max` is the
// most bytes the buffer ever held between reads.
struct Feed {
  explicit Feed(std::size_t limit) : max_line(limit), reader(limit) {}

  void push(std::string_view chunk) {
    buf.append(chunk);
    for (;;) {
      const LineRead r = reader.next(buf);
      REQUIRE(r.consumed <= buf.size());
      if (r.status == Status::line) out.emplace_back(r.line);
      if (r.status == Status::too_long) out.emplace_back(too_long_mark);
      buf.erase(0, r.consumed);
      if (r.status == Status::need_more) break;
      reader = LineReader(max_line);  // the next line starts afresh
    }
    kept_max = std::max(kept_max, buf.size());
  }

  std::size_t max_line;
  LineReader reader;
  std::string buf;
  std::vector<std::string> out;
  std::size_t kept_max = 0;
};

std::vector<std::string> lines(std::string_view input, std::size_t max_line) {
  Feed f(max_line);
  f.push(input);
  return f.out;
}

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("line reader: CRLF and bare LF end a line; only the CR before the LF goes") {
  CHECK(lines("EHLO a\r\n", 64) == V{"EHLO a"});
  CHECK(lines("EHLO a\n", 64) == V{"EHLO a"});
  CHECK(lines("EHLO\ra\r\n", 64) == V{"EHLO\ra"});     // CR mid-line stays (the parser refuses it)
  CHECK(lines("EHLO a\r\r\n", 64) == V{"EHLO a\r"});   // only one CR is the line end's
  CHECK(lines("\r\n", 64) == V{""});                   // empty line
  CHECK(lines("\n", 64) == V{""});
  CHECK(lines("\r", 64).empty());                      // a CR alone ends nothing
  CHECK(lines("\r\n\r\n", 64) == V{"", ""});
}

TEST_CASE("line reader: one call returns one line and the bytes it took") {
  LineReader r(64);
  const std::string_view window = "NOOP\r\nQUIT\r\nRS";
  const LineRead a = r.next(window);
  CHECK(a.status == Status::line);
  CHECK(a.line == "NOOP");
  CHECK(a.consumed == 6);
  CHECK(a.line.data() == window.data());  // a view into the window, not a copy
  const LineRead b = r.next(window.substr(a.consumed));
  CHECK(b.status == Status::line);
  CHECK(b.line == "QUIT");
  CHECK(b.consumed == 6);
  const LineRead c = r.next(window.substr(12));
  CHECK(c.status == Status::need_more);
  CHECK(c.consumed == 0);  // a short partial line is kept for the next read
  CHECK_FALSE(r.skipping());
}

TEST_CASE("line reader: several lines in one window, a partial one kept") {
  Feed f(64);
  f.push("EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<b@c>\nDA");
  CHECK(f.out == V{"EHLO a", "MAIL FROM:<>", "RCPT TO:<b@c>"});
  CHECK(f.buf == "DA");
  f.push("TA\r\n");
  CHECK(f.out == V{"EHLO a", "MAIL FROM:<>", "RCPT TO:<b@c>", "DATA"});
  CHECK(f.buf.empty());
}

TEST_CASE("line reader: no LF yet is need_more, whatever the chunking") {
  LineReader r(64);
  CHECK(r.next("").status == Status::need_more);
  CHECK(r.next("").consumed == 0);
  CHECK(r.next("QUIT\r").status == Status::need_more);
  CHECK(r.next("QUIT\r").consumed == 0);
  CHECK_FALSE(LineReader::has_line(""));
  CHECK_FALSE(LineReader::has_line("QUIT\r"));
  CHECK(LineReader::has_line("QUIT\r\n"));
  CHECK(LineReader::has_line("\n"));

  Feed f(64);
  for (const char c : std::string_view("HELO x\r\nQUIT\r\n")) f.push(std::string_view(&c, 1));
  CHECK(f.out == V{"HELO x", "QUIT"});
}

TEST_CASE("line reader: NUL bytes pass through (the command parser refuses them)") {
  const std::string in("MAIL\0FROM\r\n\0\n", 13);
  CHECK(lines(in, 64) == V{std::string("MAIL\0FROM", 9), std::string("\0", 1)});
}

TEST_CASE("line reader: the limit counts the LF; at it is a line, one over is too long") {
  // max_line 8: seven bytes and the LF fit; "1234567\r\n" is nine with CRLF and does not.
  CHECK(lines("1234567\n", 8) == V{"1234567"});
  CHECK(lines("123456\r\n", 8) == V{"123456"});
  CHECK(lines("12345678\n", 8) == V{std::string(too_long_mark)});
  CHECK(lines("1234567\r\n", 8) == V{std::string(too_long_mark)});
  // Right after the overlong line, the next one is read as usual.
  CHECK(lines("12345678\nQUIT\r\n", 8) == V{std::string(too_long_mark), "QUIT"});

  // The same bounds when the line arrives without its LF first.
  LineReader r(8);
  CHECK(r.next("1234567").status == Status::need_more);  // may still become a line
  CHECK(r.next("1234567").consumed == 0);
  CHECK_FALSE(r.skipping());
  const LineRead over = r.next("12345678");  // cannot: eight bytes and a LF is nine
  CHECK(over.status == Status::need_more);
  CHECK(over.consumed == 8);
  CHECK(r.skipping());
}

TEST_CASE("line reader: an overlong line split over several feeds is dropped, answered once, then resync") {
  Feed f(16);
  f.push("NOOP\r\n" + std::string(10, 'a'));
  CHECK(f.out == V{"NOOP"});
  f.push(std::string(10, 'b'));  // 20 bytes without LF: over the limit, dropped
  CHECK(f.buf.empty());
  CHECK(f.reader.skipping());
  f.push(std::string(100, 'c'));
  CHECK(f.buf.empty());
  f.push("\r");
  CHECK(f.buf.empty());
  CHECK(f.out == V{"NOOP"});  // not answered before its LF
  f.push("\nRSET\r\nQU");
  CHECK(f.out == V{"NOOP", std::string(too_long_mark), "RSET"});
  CHECK_FALSE(f.reader.skipping());
  CHECK(f.buf == "QU");
  f.push("IT\r\n");
  CHECK(f.out == V{"NOOP", std::string(too_long_mark), "RSET", "QUIT"});
  CHECK(f.kept_max < 16);  // never more than max_line - 1 bytes kept between reads
}

TEST_CASE("line reader: skipping lasts across calls until a LF, even a short tail's") {
  LineReader r(8);
  CHECK(r.next("123456789").consumed == 9);
  CHECK(r.skipping());
  // A few bytes more: still part of the overlong line, dropped although short.
  const LineRead tail = r.next("ab");
  CHECK(tail.status == Status::need_more);
  CHECK(tail.consumed == 2);
  CHECK(r.skipping());
  // The LF ends it: too_long, its bytes consumed, the next line untouched.
  const LineRead end = r.next("c\nQUIT\n");
  CHECK(end.status == Status::too_long);
  CHECK(end.consumed == 2);
  CHECK_FALSE(r.skipping());
  const LineRead next = r.next("QUIT\n");
  CHECK(next.status == Status::line);
  CHECK(next.line == "QUIT");
}

TEST_CASE("line reader: the buffer never holds max_line bytes between reads, in every chunking") {
  const std::string in = "EHLO x\r\n" + std::string(50, 'x') + "\r\nNOOP\r\n" + std::string(16, 'y') + "\n" +
                         std::string(15, 'v') + "\n" + std::string(14, 'z') + "\r\n" + std::string(15, 'w') + "\r\nQUIT\r\n";
  const V expected{"EHLO x", std::string(too_long_mark), "NOOP", std::string(too_long_mark),
                   std::string(15, 'v'), std::string(14, 'z'), std::string(too_long_mark), "QUIT"};
  for (std::size_t step = 1; step <= in.size(); ++step) {
    CAPTURE(step);
    Feed f(16);
    for (std::size_t i = 0; i < in.size(); i += step) f.push(std::string_view(in).substr(i, step));
    CHECK(f.out == expected);
    CHECK(f.buf.empty());
    CHECK(f.kept_max < 16);
  }
}
