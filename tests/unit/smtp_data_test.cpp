// The DATA scanner: terminator and bare CR/LF detection, whatever the chunking.
#include <doctest/doctest.h>

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
