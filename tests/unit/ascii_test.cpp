// Unit tests for conf/ascii.hpp: ASCII-only case mapping and comparison, without locale. Every
// byte value is checked against the ASCII table written out here, and the neighbours of the
// letters that differ from them by 0x20 ('@' / '`', '[' / '{', ...) must not compare equal.
#include <doctest/doctest.h>

#include <clocale>
#include <string>
#include <string_view>

#include "conf/ascii.hpp"

namespace text = batv::text;

namespace {
constexpr std::string_view kUpper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
constexpr std::string_view kLower = "abcdefghijklmnopqrstuvwxyz";
constexpr std::string_view kDigits = "0123456789";
}  // namespace

// The helpers are usable in constant expressions (the header's contract).
static_assert(text::lower('Q') == 'q' && text::upper('q') == 'Q' && text::lower('@') == '@');
static_assert(text::iequals("EHLO", "ehlo") && !text::iequals("EHLO", "EHL"));
static_assert(text::istarts_with("PRVS=1234", "prvs=") && !text::istarts_with("prv", "prvs="));
static_assert(text::has_upper("exAmple") && !text::has_upper("example.com"));
static_assert(text::is_xdigit('f') && text::is_xdigit('F') && !text::is_xdigit('g'));

TEST_CASE("ascii: every byte maps as the ASCII table says, and nothing else changes") {
  for (int b = 0; b < 256; ++b) {
    const char c = static_cast<char>(b);
    CAPTURE(b);
    const auto up = kUpper.find(c);
    const auto lo = kLower.find(c);
    CHECK(text::is_upper(c) == (up != std::string_view::npos));
    CHECK(text::is_lower(c) == (lo != std::string_view::npos));
    CHECK(text::is_alpha(c) == (up != std::string_view::npos || lo != std::string_view::npos));
    CHECK(text::is_digit(c) == (kDigits.find(c) != std::string_view::npos));
    CHECK(text::is_alnum(c) == (text::is_alpha(c) || text::is_digit(c)));
    CHECK(text::is_xdigit(c) == (std::string_view("0123456789abcdefABCDEF").find(c) != std::string_view::npos));
    CHECK(text::lower(c) == (up != std::string_view::npos ? kLower[up] : c));
    CHECK(text::upper(c) == (lo != std::string_view::npos ? kUpper[lo] : c));
  }
}

TEST_CASE("ascii: bytes >= 0x80 are never mapped, whatever the locale") {
  // A Latin-1 locale would map 0xC9 (É) to 0xE9 (é) with std::tolower; a UTF-8 byte must stay.
  const char* before = std::setlocale(LC_CTYPE, nullptr);
  const std::string saved = before ? before : "C";
  for (const char* name : {"C.UTF-8", "en_US.ISO-8859-1", "de_DE.ISO-8859-1"}) {
    if (std::setlocale(LC_CTYPE, name) == nullptr) continue;
    for (int b = 0x80; b < 256; ++b) {
      const char c = static_cast<char>(b);
      CHECK(text::lower(c) == c);
      CHECK(text::upper(c) == c);
    }
  }
  std::setlocale(LC_CTYPE, saved.c_str());
  CHECK_FALSE(text::iequals("\xC3\x89", "\xC3\xA9"));  // É / é in UTF-8: compared as bytes
  CHECK(text::lower("STRASSE.\xC3\x9F") == "strasse.\xC3\x9F");
}

TEST_CASE("ascii: iequals and istarts_with") {
  struct Row {
    std::string_view a, b;
    bool equal;
  };
  const Row rows[] = {
      {"", "", true},
      {"MAIL", "mail", true},
      {"Mail", "mAIL", true},
      {"MAILER-DAEMON", "mailer-daemon", true},
      {"Example.COM", "example.com", true},
      {"MAIL", "MAIL ", false},
      {"MAIL", "MAI", false},
      {"a", "", false},
      // Neighbours 0x20 apart that are not letters: a `c | 0x20` shortcut would call them equal.
      {"@", "`", false},
      {"[", "{", false},
      {"\\", "|", false},
      {"]", "}", false},
      {"^", "~", false},
      {"\x01", "!", false},
      {std::string_view("a\0b", 3), std::string_view("A\0B", 3), true},
      {std::string_view("a\0b", 3), std::string_view("a\0c", 3), false},
  };
  for (const Row& r : rows) {
    CAPTURE(r.a);
    CAPTURE(r.b);
    CHECK(text::iequals(r.a, r.b) == r.equal);
    CHECK(text::iequals(r.b, r.a) == r.equal);
  }
  CHECK(text::istarts_with("prvs=1234567890=user@example.com", "PRVS="));
  CHECK(text::istarts_with("IPv6:::1", "ipv6:"));
  CHECK(text::istarts_with("abc", ""));
  CHECK(text::istarts_with("", ""));
  CHECK_FALSE(text::istarts_with("prv", "prvs="));
  CHECK_FALSE(text::istarts_with("prvs-", "prvs="));
  CHECK_FALSE(text::istarts_with("xprvs=", "prvs="));
}

TEST_CASE("ascii: copies and in-place mapping") {
  CHECK(text::lower("MiXeD-Case.Example") == "mixed-case.example");
  CHECK(text::upper("8bitmime smtputf8") == "8BITMIME SMTPUTF8");
  CHECK(text::lower("") == "");
  CHECK(text::upper(std::string_view("a\0b", 3)) == std::string("A\0B", 3));
  std::string s = "Example.ORG";
  text::lower_in_place(s);
  CHECK(s == "example.org");
  text::upper_in_place(s);
  CHECK(s == "EXAMPLE.ORG");
  char buf[] = {'A', 'b', 'C', 'd'};
  text::lower_in_place(buf, 3);  // only the first n bytes
  CHECK(std::string_view(buf, 4) == "abcd");
  char buf2[] = {'X', 'Y'};
  text::lower_in_place(buf2, 0);
  CHECK(std::string_view(buf2, 2) == "XY");
  CHECK(text::has_upper("example.coM"));
  CHECK_FALSE(text::has_upper("\xC3\x89xample"));  // a UTF-8 capital is no ASCII capital
}
