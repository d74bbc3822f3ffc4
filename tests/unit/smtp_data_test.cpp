// The DATA scanner: terminator and bare CR/LF detection, whatever the chunking.
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "relay/smtp/data.hpp"

using batv::relay::smtp::DataScanner;

namespace {
struct Result {
  std::size_t consumed;
  bool done;
  bool bare;
};
// Feeds `body` in chunks of `step` bytes (every split point gets exercised across the steps).
Result run(const std::string& body, std::size_t step) {
  DataScanner s;
  std::size_t pos = 0;
  bool done = false;
  while (pos < body.size() && !done) {
    const std::size_t n = std::min(step, body.size() - pos);
    pos += s.scan(body.data() + pos, n, done);
  }
  return {pos, done, s.bare_newline};
}
}  // namespace

TEST_CASE("DATA terminator and bare newlines, in every chunking") {
  struct Case {
    std::string body;
    std::size_t consumed;  // where the terminator ends (== body.size() when not found)
    bool done, bare;
  };
  const Case cases[] = {
      {".\r\n", 3, true, false},                                   // empty body
      {"a\r\n.\r\n", 6, true, false},
      {"a\r\n.\r\nQUIT\r\n", 6, true, false},                      // pipelined command after
      {"..dot\r\n.\r\n", 10, true, false},                         // dot-stuffed line
      {"a\r\n..\r\n.\r\n", 10, true, false},
      {"a\n.\n", 4, false, true},                                  // bare LF terminator: not ours
      {"a\r\n.\nb\r\n.\r\n", 11, true, true},                      // ".\n" is smuggling bait
      {"a\n.\r\nb\r\n.\r\n", 11, true, true},
      {"a\r.\r\nb\r\n.\r\n", 11, true, true},                      // bare CR
      {"a\r\r\n.\r\n", 7, true, true},
      {"x.\r\n.\r\n", 7, true, false},                             // dot not at line start
      {"a\r\n.x\r\n.\r\n", 10, true, false},
      {"a\r\n.\rx\r\n.\r\n", 11, true, true},
      {"no end\r\n", 8, false, false},
      {std::string(5000, 'z') + "\r\n.\r\n", 5005, true, false},
      {std::string("8bit \xff\xfe\0 ok\r\n.\r\n", 16), 16, true, false},
  };
  for (const Case& c : cases) {
    for (std::size_t step = 1; step <= c.body.size(); ++step) {
      CAPTURE(c.body);
      CAPTURE(step);
      const Result r = run(c.body, step);
      CHECK(r.done == c.done);
      CHECK(r.consumed == c.consumed);
      CHECK(r.bare == c.bare);
    }
  }
}

namespace {
// The scanner's meaning, one byte at a time and nothing clever: the fast path must agree with it.
Result reference(const std::string& body) {
  enum { mid, cr, start, dot, dotcr } st = start;
  bool bare = false;
  for (std::size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (st == dotcr && c == '\n') return {i + 1, true, bare};
    const bool prev_cr = st == cr || st == dotcr;
    if (c == '\n' && !prev_cr) bare = true;
    if (prev_cr && c != '\n') bare = true;
    if (c == '\r') st = (st == dot) ? dotcr : cr;
    else if (c == '\n') st = prev_cr ? start : mid;
    else if (c == '.' && st == start) st = dot;
    else st = mid;
  }
  return {body.size(), false, bare};
}
}  // namespace

TEST_CASE("DATA scanner: the 8-byte fast path agrees with a byte-at-a-time reference") {
  // Deterministic pseudo-random bodies over the bytes that matter, in every chunking up to 17,
  // with long runs of ordinary bytes so that whole words and word tails are both exercised.
  std::uint64_t x = 0x9E3779B97F4A7C15ULL;
  auto next = [&x] {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  const char alphabet[] = {'a', 'a', 'a', 'a', 'a', 'a', '.', '\r', '\n', '\r', '\n', '\0', '\x8d', '\x8a'};
  for (int round = 0; round < 3000; ++round) {
    std::string body;
    const std::size_t len = next() % 80;
    for (std::size_t i = 0; i < len; ++i) {
      if (next() % 5 == 0) body.append(next() % 24, 'x');  // a run
      body += alphabet[next() % sizeof alphabet];
    }
    if (round % 2 == 0) body += "\r\n.\r\n";
    const Result want = reference(body);
    for (std::size_t step = 1; step <= 17; ++step) {
      const Result got = run(body, step);
      INFO("round " << round << " step " << step);
      REQUIRE(got.consumed == want.consumed);
      REQUIRE(got.done == want.done);
      REQUIRE(got.bare == want.bare);
    }
  }
}
