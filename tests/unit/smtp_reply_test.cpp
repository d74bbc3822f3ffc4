// Unit tests for relay/smtp/reply: the bounded ReplyReader over untrusted next-hop replies
// (RFC 5321 4.2), RFC 3463 enhanced codes, sanitize, format_reply and parse_ehlo (RFC 5321 4.1.1.1).
#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "relay/smtp/reply.hpp"

using namespace batv::relay::smtp;
using Status = ReplyReader::Status;

namespace {

struct Fed {
  Status status = Status::need_more;
  std::string error;
  Reply reply;
};

// Feeds lines until the reader leaves need_more (or lines run out).
Fed feed_all(ReplyReader& r, const std::vector<std::string>& lines) {
  Fed f;
  for (const auto& l : lines) {
    f.status = r.feed(l);
    if (f.status != Status::need_more) break;
  }
  f.error = std::string(r.error());
  if (f.status == Status::complete) f.reply = r.take();
  return f;
}

}  // namespace

TEST_CASE("ReplyReader: valid replies") {
  struct Row {
    std::vector<std::string> lines;
    int code;
    std::vector<std::string> text;
  };
  const Row rows[] = {
      {{"250 OK"}, 250, {"OK"}},
      {{"220 mx.example ESMTP Postfix"}, 220, {"mx.example ESMTP Postfix"}},
      {{"250"}, 250, {""}},             // bare code: valid, empty text
      {{"250 "}, 250, {""}},
      {{"354 End data with <CR><LF>.<CR><LF>"}, 354, {"End data with <CR><LF>.<CR><LF>"}},
      {{"250-mx.example", "250-PIPELINING", "250 8BITMIME"}, 250, {"mx.example", "PIPELINING", "8BITMIME"}},
      {{"550-5.1.1 first", "550-", "550 5.1.1 last"}, 550, {"5.1.1 first", "", "5.1.1 last"}},
      {{"421 4.4.2 bye"}, 421, {"4.4.2 bye"}},
      {{"599 x"}, 599, {"x"}},
      {{"200 x"}, 200, {"x"}},
      {{"250 tab\there \x01 \xC3\xA9"}, 250, {"tab?here ? ??"}},  // text sanitised
      {{"250  two leading spaces"}, 250, {" two leading spaces"}},
  };
  for (const Row& row : rows) {
    CAPTURE(row.lines.front());
    ReplyReader r(512, 10);
    const Fed f = feed_all(r, row.lines);
    REQUIRE_MESSAGE(f.status == Status::complete, f.error);
    CHECK(f.reply.code == row.code);
    CHECK(f.reply.lines == row.text);
  }
}

TEST_CASE("ReplyReader: malformed and over-limit replies") {
  struct Row {
    std::vector<std::string> lines;
    std::string_view error;
  };
  const std::string long510(510, 'x');  // + CRLF = 512: the limit itself
  const Row rows[] = {
      {{"199 no"}, "malformed reply line"},
      {{"600 no"}, "malformed reply line"},
      {{"100 no"}, "malformed reply line"},
      {{"2x0 no"}, "malformed reply line"},
      {{"25 no"}, "malformed reply line"},
      {{"25"}, "malformed reply line"},
      {{""}, "malformed reply line"},
      {{"250x"}, "malformed reply line"},
      {{"250_ok"}, "malformed reply line"},
      {{"250\tok"}, "malformed reply line"},
      {{" 250 ok"}, "malformed reply line"},
      {{"abc"}, "malformed reply line"},
      {{"250-a", "251 b"}, "inconsistent reply codes"},
      {{"250-a", "250-b", "550 c"}, "inconsistent reply codes"},
      {{"250-a", "garbage"}, "malformed reply line"},
      {{"250-1", "250-2", "250-3", "250 4"}, "too many reply lines"},  // limit 3
      {{"250 " + std::string(507, 'x')}, "reply line too long"},       // 511 + CRLF = 513
      {{"250-a", "250 " + std::string(507, 'x')}, "reply line too long"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.lines.back());
    ReplyReader r(512, 3);
    const Fed f = feed_all(r, row.lines);
    CHECK(f.status == Status::error);
    CHECK(f.error == row.error);
  }
  // At the limits exactly: accepted.
  ReplyReader r(512, 3);
  CHECK(feed_all(r, {"250 " + std::string(506, 'x')}).status == Status::complete);  // 510 + CRLF
  CHECK(feed_all(r, {"250-1", "250-2", "250 3"}).status == Status::complete);
}

TEST_CASE("ReplyReader: sticky error, reuse after take() and reset()") {
  ReplyReader r(512, 10);
  CHECK(r.error().empty());
  CHECK(r.feed("250-first") == Status::need_more);
  CHECK(r.feed("250 done") == Status::complete);
  CHECK(r.status() == Status::complete);
  // A completed reply must be taken before the next one.
  ReplyReader untaken = r;
  CHECK(untaken.feed("250 again") == Status::error);
  CHECK(untaken.error() == "reply not taken");

  Reply a = r.take();
  CHECK(a.code == 250);
  CHECK(a.lines == std::vector<std::string>{"first", "done"});
  // Reused for the next reply, with nothing left over from the first.
  CHECK(r.feed("354 go ahead") == Status::complete);
  Reply b = r.take();
  CHECK(b.code == 354);
  CHECK(b.lines == std::vector<std::string>{"go ahead"});

  // After an error every feed fails until take()/reset().
  CHECK(r.feed("250-x") == Status::need_more);
  CHECK(r.feed("251 y") == Status::error);
  CHECK(r.feed("250 z") == Status::error);
  CHECK(r.error() == "inconsistent reply codes");
  r.reset();
  CHECK(r.error().empty());
  CHECK(r.feed("250 z") == Status::complete);
  CHECK(r.take().lines == std::vector<std::string>{"z"});

  // Assignable (relay/upstream.cpp rebuilds its reader on reconnect).
  r = ReplyReader(600, 2);
  CHECK(r.feed("250 " + std::string(590, 'y')) == Status::complete);
}

TEST_CASE("ReplyReader: stored text is bounded by the line limit, not by sanitize's default") {
  ReplyReader r(2048, 10);
  const std::string text(1000, 'a');
  REQUIRE(r.feed("250 " + text) == Status::complete);
  CHECK(r.take().lines.front() == text);
}

TEST_CASE("parse_enhanced (RFC 3463)") {
  struct Row {
    std::string_view text;
    std::optional<EnhancedCode> code;
  };
  const Row rows[] = {
      {"2.1.0 Sender OK", EnhancedCode{2, 1, 0}},
      {"2.0.0", EnhancedCode{2, 0, 0}},
      {"4.4.2 timeout", EnhancedCode{4, 4, 2}},
      {"5.7.1 denied", EnhancedCode{5, 7, 1}},
      {"5.123.999 x", EnhancedCode{5, 123, 999}},
      {"5.01.002 x", EnhancedCode{5, 1, 2}},
      {"3.1.0 x", std::nullopt},
      {"1.1.0", std::nullopt},
      {"2.1.0x", std::nullopt},
      {"2.1.0.1", std::nullopt},
      {"2.1000.0", std::nullopt},
      {"2.1.1000", std::nullopt},
      {"2..0", std::nullopt},
      {"2.1.", std::nullopt},
      {"2.1", std::nullopt},
      {"2,1,0", std::nullopt},
      {" 2.1.0", std::nullopt},
      {"", std::nullopt},
      {"Sender 2.1.0", std::nullopt},
      {"22.1.0", std::nullopt},
  };
  for (const Row& r : rows) {
    CAPTURE(r.text);
    CHECK(parse_enhanced(r.text) == r.code);
  }
  CHECK(to_string(EnhancedCode{5, 123, 9}) == "5.123.9");
}

TEST_CASE("sanitize") {
  struct Row {
    std::string in;
    std::size_t max;
    std::string out;
  };
  const Row rows[] = {
      {"plain text ~!", 400, "plain text ~!"},
      {"a\r\nb", 400, "a??b"},
      {std::string("nul\0x", 5), 400, "nul?x"},
      {"tab\tdel\x7f", 400, "tab?del?"},
      {"\xC3\xA9t\xC3\xA9", 400, "??t??"},
      {"\x80\xff", 400, "??"},
      {"abcdef", 3, "abc"},
      {"\x01\x02\x03\x04", 2, "??"},
      {"", 400, ""},
      {"abc", 0, ""},
      {std::string(500, 'z'), 400, std::string(400, 'z')},
  };
  for (const Row& r : rows) {
    CAPTURE(r.in);
    CHECK(sanitize(r.in, r.max) == r.out);
  }
  CHECK(sanitize(std::string(401, 'q')).size() == 400);  // the default cut
}

TEST_CASE("format_reply") {
  CHECK(format_reply(250, std::vector<std::string>{"a", "b"}) == "250-a\r\n250 b\r\n");
  CHECK(format_reply(250, std::vector<std::string>{"x", "", "z"}) == "250-x\r\n250-\r\n250 z\r\n");
  CHECK(format_reply(250, std::vector<std::string>{}) == "250 \r\n");
  CHECK(format_reply(250, std::vector<std::string>{""}) == "250 \r\n");
  CHECK(format_reply(550, "5.1.1 No such user") == "550 5.1.1 No such user\r\n");
  CHECK(format_reply(221, std::string_view()) == "221 \r\n");
  // No text can break the framing.
  CHECK(format_reply(250, "ok\r\n250 injected") == "250 ok??250 injected\r\n");
  CHECK(format_reply(Reply{451, {"4.4.2 a", "4.4.2 b"}}) == "451-4.4.2 a\r\n451 4.4.2 b\r\n");
  // Long text is not cut.
  CHECK(format_reply(250, std::string(1000, 'l')).size() == 4 + 1000 + 2);
  // Round trip through the reader.
  ReplyReader r(512, 10);
  const std::string wire = format_reply(250, std::vector<std::string>{"mx", "SIZE 10", "DSN"});
  std::size_t start = 0;
  Status st = Status::need_more;
  while (start < wire.size()) {
    const std::size_t crlf = wire.find("\r\n", start);
    st = r.feed(std::string_view(wire).substr(start, crlf - start));
    start = crlf + 2;
  }
  REQUIRE(st == Status::complete);
  const Reply back = r.take();
  CHECK(back.code == 250);
  CHECK(back.lines == std::vector<std::string>{"mx", "SIZE 10", "DSN"});
}

TEST_CASE("parse_ehlo: a Postfix reply") {
  const Reply postfix{250,
                      {"mx.example.com", "PIPELINING", "SIZE 10240000", "VRFY", "ETRN",
                       "AUTH PLAIN LOGIN", "XCLIENT NAME ADDR PROTO HELO", "ENHANCEDSTATUSCODES", "8BITMIME",
                       "DSN", "SMTPUTF8", "CHUNKING"}};
  const Capabilities c = parse_ehlo(postfix);
  CHECK(c.pipelining);
  CHECK(c.eightbitmime);
  CHECK(c.smtputf8);
  CHECK(c.enhancedstatuscodes);
  CHECK(c.dsn);
  CHECK(c.chunking);
  CHECK_FALSE(c.binarymime);
  CHECK_FALSE(c.starttls);
  CHECK(c.xclient);
  CHECK(c.size == std::optional<std::uint64_t>(10240000));
  CHECK(c.auth == std::vector<std::string>{"PLAIN", "LOGIN"});
  CHECK(c.xclient_attrs == std::vector<std::string>{"NAME", "ADDR", "PROTO", "HELO"});
}

TEST_CASE("parse_ehlo: keywords are case-insensitive, first line is only the greeting") {
  const Reply r{250,
                {"PIPELINING 8BITMIME",  // greeting line: never a keyword
                 "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "dsn", "chunking", "binarymime",
                 "starttls", "size 1000", "auth plain cram-md5", "auth=login plain", "xclient addr name",
                 "X-UNKNOWN 1", "", "   "}};
  const Capabilities c = parse_ehlo(r);
  CHECK(c.pipelining);
  CHECK(c.eightbitmime);
  CHECK(c.smtputf8);
  CHECK(c.enhancedstatuscodes);
  CHECK(c.dsn);
  CHECK(c.chunking);
  CHECK(c.binarymime);
  CHECK(c.starttls);
  CHECK(c.xclient);
  CHECK(c.size == std::optional<std::uint64_t>(1000));
  CHECK(c.auth == std::vector<std::string>{"PLAIN", "CRAM-MD5", "LOGIN"});  // no repeats
  CHECK(c.xclient_attrs == std::vector<std::string>{"ADDR", "NAME"});

  const Capabilities greeting_only = parse_ehlo(Reply{250, {"PIPELINING"}});
  CHECK_FALSE(greeting_only.pipelining);
}

TEST_CASE("parse_ehlo: SIZE variants (RFC 1870 4)") {
  struct Row {
    std::string line;
    std::optional<std::uint64_t> size;
  };
  const Row rows[] = {
      {"SIZE 10240000", 10240000},
      {"SIZE", std::nullopt},
      {"SIZE 0", std::nullopt},
      {"SIZE abc", std::nullopt},
      {"SIZE -5", std::nullopt},
      {"SIZE 18446744073709551615", UINT64_MAX},
      {"SIZE 18446744073709551616", std::nullopt},
      {"SIZE 1 2", std::nullopt},
      {"SIZE   52428800", 52428800},
      {"size 1", 1},
      {"SIZE10", std::nullopt},
  };
  for (const Row& row : rows) {
    CAPTURE(row.line);
    CHECK(parse_ehlo(Reply{250, {"mx", row.line}}).size == row.size);
  }
}

TEST_CASE("parse_ehlo: a non-2xx reply offers nothing") {
  const Capabilities c = parse_ehlo(Reply{502, {"mx", "PIPELINING", "SIZE 100"}});
  CHECK_FALSE(c.pipelining);
  CHECK_FALSE(c.size.has_value());
  CHECK(parse_ehlo(Reply{}).auth.empty());
}
