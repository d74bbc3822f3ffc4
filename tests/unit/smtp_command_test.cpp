// Unit tests for relay/smtp/command: verbs, reverse/forward paths (RFC 5321 4.1.2), ESMTP
// parameters and their values (RFC 1870, 6152, 6531, 3461), and BDAT arguments (RFC 3030).
// Table-driven: each row names its input and the exact expected result.
#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/limits.hpp"
#include "relay/smtp/command.hpp"

using namespace batv::relay::smtp;
namespace fixed = batv::conf::fixed;

namespace {

std::string local_of(std::size_t n) { return std::string(n, 'a'); }

// A valid domain of exactly n octets (n >= 1) made of labels of at most 63 octets.
std::string domain_of(std::size_t n) {
  std::string d;
  for (;;) {
    const std::size_t room = n - d.size();
    if (room <= 63) return d + std::string(room, 'b');
    d += std::string(std::min<std::size_t>(63, room - 2), 'b') + ".";  // keep >= 1 octet after "."
  }
}

}  // namespace

TEST_CASE("parse_command: verbs, case and separators") {
  struct Row {
    std::string_view line;
    Verb verb;
    std::string_view args;
  };
  const Row rows[] = {
      {"HELO client.example", Verb::helo, "client.example"},
      {"ehlo client.example", Verb::ehlo, "client.example"},
      {"MAIL FROM:<a@b>", Verb::mail, "FROM:<a@b>"},
      {"mail from:<a@b> SIZE=10", Verb::mail, "from:<a@b> SIZE=10"},
      {"Rcpt TO:<a@b>", Verb::rcpt, "TO:<a@b>"},
      {"DATA", Verb::data, ""},
      {"DATA ", Verb::data, ""},
      {"data \t  ", Verb::data, ""},
      {"BDAT 100 LAST", Verb::bdat, "100 LAST"},
      {"RSET", Verb::rset, ""},
      {"NOOP  hello  ", Verb::noop, "hello"},
      {"QUIT", Verb::quit, ""},
      {"VRFY user", Verb::vrfy, "user"},
      {"EXPN list", Verb::expn, "list"},
      {"HELP", Verb::help, ""},
      {"StartTLS", Verb::starttls, ""},
      {"AUTH PLAIN AGFhAGI=", Verb::auth, "PLAIN AGFhAGI="},
      {"MAIL   FROM:<a@b>", Verb::mail, "FROM:<a@b>"},
      {"MAIL\tFROM:<a@b>", Verb::mail, "FROM:<a@b>"},
      {"MAILFROM:<a@b>", Verb::unknown, ""},
      {"MAILFROM", Verb::unknown, ""},
      {"XYZZY plugh", Verb::unknown, "plugh"},
      {" MAIL FROM:<a@b>", Verb::unknown, "MAIL FROM:<a@b>"},
      {"", Verb::unknown, ""},
      {"DAT", Verb::unknown, ""},
      {"DATAX", Verb::unknown, ""},
  };
  for (const Row& r : rows) {
    CAPTURE(r.line);
    const Command c = parse_command(r.line);
    CHECK(c.verb == r.verb);
    CHECK(c.args == r.args);
  }
}

TEST_CASE("to_string(Verb) round-trips through parse_command") {
  for (int i = 0; i <= static_cast<int>(Verb::auth); ++i) {
    const auto v = static_cast<Verb>(i);
    CAPTURE(to_string(v));
    CHECK(parse_command(to_string(v)).verb == v);
  }
  CHECK(to_string(Verb::unknown) == "UNKNOWN");
}

TEST_CASE("parse_mail_from: accepted paths") {
  struct Row {
    std::string args;
    std::string address;
    bool null_path;
    bool non_ascii;
  };
  const Row rows[] = {
      {"FROM:<user@example.com>", "user@example.com", false, false},
      {"from:<user@example.com>", "user@example.com", false, false},
      {"FROM: <user@example.com>", "user@example.com", false, false},   // Postfix tolerates the space
      {"FROM:   <user@example.com>", "user@example.com", false, false},
      {"FROM:<>", "", true, false},
      {"FROM:<> SIZE=100", "", true, false},
      {"FROM:<first.last+tag@sub.example.com>", "first.last+tag@sub.example.com", false, false},
      {"FROM:<!#$%&'*+-/=?^_`{|}~@x>", "!#$%&'*+-/=?^_`{|}~@x", false, false},
      {"FROM:<a@localhost>", "a@localhost", false, false},
      {"FROM:<a@x-y.example>", "a@x-y.example", false, false},
      // Source routes are accepted and dropped (RFC 5321 4.1.2, Appendix C).
      {"FROM:<@relay.example:user@example.com>", "user@example.com", false, false},
      {"FROM:<@a.example,@b.example:user@example.com>", "user@example.com", false, false},
      // Quoted local parts keep their quotes; spaces, "@", ">" and escaped quotes inside.
      {"FROM:<\"john smith\"@example.com>", "\"john smith\"@example.com", false, false},
      {"FROM:<\"a\\\"b\"@example.com>", "\"a\\\"b\"@example.com", false, false},
      {"FROM:<\"a@b>c\"@example.com>", "\"a@b>c\"@example.com", false, false},
      {"FROM:<\"\"@example.com>", "\"\"@example.com", false, false},
      // RFC 6531: UTF-8 in local part and domain.
      {"FROM:<j\xC3\xB6rg@example.com>", "j\xC3\xB6rg@example.com", false, true},
      {"FROM:<user@b\xC3\xBC" "cher.example>", "user@b\xC3\xBC" "cher.example", false, true},
      {"FROM:<\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\x85\xAC\xE5\x8F\xB8>",
       "\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\x85\xAC\xE5\x8F\xB8", false, true},
      // Address literals (RFC 5321 4.1.3).
      {"FROM:<a@[127.0.0.1]>", "a@[127.0.0.1]", false, false},
      {"FROM:<a@[IPv6:::1]>", "a@[IPv6:::1]", false, false},
      {"FROM:<a@[ipv6:2001:db8::1]>", "a@[ipv6:2001:db8::1]", false, false},
      {"FROM:<a@[IPv6:2001:db8:0:0:0:0:0:1]>", "a@[IPv6:2001:db8:0:0:0:0:0:1]", false, false},
      {"FROM:<a@[IPv6:::ffff:192.0.2.1]>", "a@[IPv6:::ffff:192.0.2.1]", false, false},
      {"FROM:<a@[IPv6:1:2:3:4:5:6:192.0.2.1]>", "a@[IPv6:1:2:3:4:5:6:192.0.2.1]", false, false},
      {"FROM:<a@[IPv6:::]>", "a@[IPv6:::]", false, false},
  };
  for (const Row& r : rows) {
    CAPTURE(r.args);
    const PathResult p = parse_mail_from(r.args);
    REQUIRE_MESSAGE(p.ok(), to_string(p.error));
    REQUIRE(p.path.has_value());
    CHECK(p.path->address == r.address);
    CHECK(p.path->null_path == r.null_path);
    CHECK(p.path->non_ascii == r.non_ascii);
  }
}

TEST_CASE("parse_mail_from / parse_rcpt_to: every PathError") {
  struct Row {
    bool rcpt;
    std::string args;
    PathError error;
  };
  const Row rows[] = {
      // syntax
      {false, "FROM<a@b>", PathError::syntax},
      {false, "FROM :<a@b>", PathError::syntax},
      {false, "TO:<a@b>", PathError::syntax},
      {true, "FROM:<a@b>", PathError::syntax},
      {false, "", PathError::syntax},
      {false, "FROM:<a@b>x", PathError::syntax},
      {false, "FROM:<a@b>>", PathError::syntax},
      {false, "FROM:<a@b>\tSIZE=1", PathError::syntax},
      {false, "FROM:<a\x01@b>", PathError::syntax},
      {false, "FROM:<a@b> SIZE=1\x7f", PathError::syntax},
      {false, std::string("FROM:<a@b\0>", 11), PathError::syntax},
      {false, "FROM:<user>", PathError::syntax},         // no domain
      {false, "FROM:<Postmaster>", PathError::syntax},   // only RCPT may omit the domain
      {true, "TO:<someone>", PathError::syntax},
      {false, "FROM:<@relay.example>", PathError::syntax},
      {false, "FROM:<@relay.example:>", PathError::syntax},
      {false, "FROM:<@a,b:c@d>", PathError::syntax},
      // missing_brackets
      {false, "FROM:a@b", PathError::missing_brackets},
      {false, "FROM:", PathError::missing_brackets},
      {false, "FROM:<a@b", PathError::missing_brackets},
      {false, "FROM:a@b>", PathError::missing_brackets},
      {false, "FROM:<\"a@b", PathError::missing_brackets},
      {false, "FROM:<@relay.example", PathError::missing_brackets},
      // lengths (RFC 5321 4.5.3.1)
      {false, "FROM:<" + local_of(65) + "@b>", PathError::local_part_too_long},
      {false, "FROM:<\"" + local_of(63) + "\"@b>", PathError::local_part_too_long},  // quotes count
      {false, "FROM:<a@" + domain_of(252) + "> ", PathError::none},                  // 256 with brackets
      {false, "FROM:<a@" + domain_of(253) + ">", PathError::address_too_long},       // 257
      {false, "FROM:<@" + domain_of(200) + ":a@" + domain_of(60) + ">", PathError::address_too_long},
      {false, "FROM:<@" + domain_of(240) + ",@" + domain_of(5) + ":a@b>", PathError::none},
      // bad_local_part
      {false, "FROM:<.a@b>", PathError::bad_local_part},
      {false, "FROM:<a.@b>", PathError::bad_local_part},
      {false, "FROM:<a..b@c>", PathError::bad_local_part},
      {false, "FROM:<a b@c>", PathError::bad_local_part},
      {false, "FROM:<a(b)@c>", PathError::bad_local_part},
      {false, "FROM:<@b>", PathError::syntax},  // "@" right after "<" starts a source route
      {false, "FROM:<\"a\"b@c>", PathError::bad_local_part},
      {false, "FROM:<\"a\"@b\"c\">", PathError::bad_domain},
      {false, "FROM:<\"a\\\xC3\xA9\"@b>", PathError::bad_local_part},  // quoted-pair is ASCII only
      {false, "FROM:<\"abc>", PathError::bad_local_part},               // unterminated quote
      {false, "FROM:<a\xC3@b>", PathError::bad_local_part},             // truncated UTF-8
      {false, "FROM:<a\xC0\xAF@b>", PathError::bad_local_part},         // overlong UTF-8
      {false, "FROM:<a\xED\xA0\x80@b>", PathError::bad_local_part},     // UTF-16 surrogate
      // bad_domain
      {false, "FROM:<a@>", PathError::bad_domain},
      {false, "FROM:<a@b..c>", PathError::bad_domain},
      {false, "FROM:<a@.b>", PathError::bad_domain},
      {false, "FROM:<a@b.>", PathError::bad_domain},
      {false, "FROM:<a@-b.c>", PathError::bad_domain},
      {false, "FROM:<a@b-.c>", PathError::bad_domain},
      {false, "FROM:<a@b_c.d>", PathError::bad_domain},
      {false, "FROM:<a@b@c>", PathError::bad_domain},
      {false, "FROM:<a@" + std::string(64, 'x') + ".com>", PathError::bad_domain},  // label > 63
      {false, "FROM:<a@b\xFF>", PathError::bad_domain},
      {false, "FROM:<a@[127.0.0.256]>", PathError::bad_domain},
      {false, "FROM:<a@[127.0.0]>", PathError::bad_domain},
      {false, "FROM:<a@[127.0.0.1>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:::1::2]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6::]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:1::2:3:4:5:6:7]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:::1.2.3]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:1.2.3.4::1]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:1:2:3:4:5:6:7]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:1:2:3:4:5:6:7::]>", PathError::bad_domain},  // RFC 5321: at most 6 with "::"
      {false, "FROM:<a@[IPv6:12345::1]>", PathError::bad_domain},
      {false, "FROM:<a@[IPv6:g::1]>", PathError::bad_domain},
      {false, "FROM:<a@[x-tag:foo]>", PathError::bad_domain},             // no registered general literal
      {false, "FROM:<@bad_domain:a@b>", PathError::bad_domain},
      // domain_too_long: reported before the path limit it also breaks
      {false, "FROM:<a@" + domain_of(256) + ">", PathError::domain_too_long},
      {true, "TO:<a@" + domain_of(300) + ">", PathError::domain_too_long},
      {false, "FROM:<@" + domain_of(256) + ":a@b>", PathError::domain_too_long},
      {false, "FROM:<a@" + domain_of(255) + ">", PathError::domain_too_long},   // over 253 (RFC 1035 text form)
      {false, "FROM:<a@" + domain_of(253) + ">", PathError::address_too_long},  // 253 is fine, 258 is not
      {true, "TO:<@" + domain_of(120) + ":a@" + domain_of(120) + ">", PathError::none},
      // null_not_allowed
      {true, "TO:<>", PathError::null_not_allowed},
      {true, "to: <> NOTIFY=NEVER", PathError::null_not_allowed},
      // bad_param
      {false, "FROM:<a@b> =1", PathError::bad_param},
      {false, "FROM:<a@b> SIZE=", PathError::bad_param},
      {false, "FROM:<a@b> -X=1", PathError::bad_param},
      {false, "FROM:<a@b> X_Y=1", PathError::bad_param},
      {false, "FROM:<a@b> X=a=b", PathError::bad_param},
      {false, "FROM:<a@b> X=\xC3", PathError::bad_param},
      {false, "FROM:<a@b> K\xC3\xA9=1", PathError::bad_param},
      // duplicate_param (RFC 1869 6)
      {false, "FROM:<a@b> SIZE=1 SIZE=2", PathError::duplicate_param},
      {false, "FROM:<a@b> SIZE=1 BODY=7BIT size=1", PathError::duplicate_param},
      {false, "FROM:<a@b> SMTPUTF8 smtputf8", PathError::duplicate_param},
  };
  for (const Row& r : rows) {
    CAPTURE(r.args);
    const PathResult p = r.rcpt ? parse_rcpt_to(r.args) : parse_mail_from(r.args);
    CHECK(to_string(p.error) == to_string(r.error));
    CHECK(p.path.has_value() == (r.error == PathError::none));
  }
}

TEST_CASE("path length limits at the boundary (RFC 5321 4.5.3.1)") {
  // Local part: 64 octets accepted, 65 rejected.
  CHECK(parse_mail_from("FROM:<" + local_of(64) + "@b>").ok());
  CHECK(parse_mail_from("FROM:<" + local_of(65) + "@b>").error == PathError::local_part_too_long);
  CHECK(parse_mail_from("FROM:<\"" + local_of(62) + "\"@b>").ok());
  // Whole path: 256 octets with brackets accepted, 257 rejected.
  const std::string p256 = "<" + local_of(64) + "@" + domain_of(189) + ">";
  const std::string p257 = "<" + local_of(64) + "@" + domain_of(190) + ">";
  REQUIRE(p256.size() == 256);
  REQUIRE(p257.size() == 257);
  CHECK(parse_mail_from("FROM:" + p256).ok());
  CHECK(parse_rcpt_to("TO:" + p256).ok());
  CHECK(parse_mail_from("FROM:" + p257).error == PathError::address_too_long);
  CHECK(parse_rcpt_to("TO:" + p257).error == PathError::address_too_long);
  // Domain: 253 octets, the most a name has in text form (conf::fixed::max_domain_length: RFC
  // 1035's 255 counts the length octets), is within its own limit (the path then is 258:
  // address_too_long); 254 is not, in the mailbox and in a source route alike.
  REQUIRE(fixed::max_domain_length == 253);
  REQUIRE(domain_of(253).size() == 253);
  REQUIRE(domain_of(254).size() == 254);
  CHECK(parse_mail_from("FROM:<a@" + domain_of(253) + ">").error == PathError::address_too_long);
  CHECK(parse_mail_from("FROM:<a@" + domain_of(254) + ">").error == PathError::domain_too_long);
  CHECK(parse_rcpt_to("TO:<a@" + domain_of(254) + ">").error == PathError::domain_too_long);
  CHECK(parse_mail_from("FROM:<@" + domain_of(253) + ":a@b>").error == PathError::address_too_long);
  CHECK(parse_mail_from("FROM:<@" + domain_of(254) + ":a@b>").error == PathError::domain_too_long);
  CHECK(parse_mail_from("FROM:<a@" + domain_of(256) + ">").error == PathError::domain_too_long);
  // A source route counts towards the path: 256 accepted, 257 rejected.
  CHECK(parse_mail_from("FROM:<@" + domain_of(249) + ":a@b>").ok());
  CHECK(parse_mail_from("FROM:<@" + domain_of(250) + ":a@b>").error == PathError::address_too_long);
}

TEST_CASE("parse_rcpt_to: Postmaster and ordinary recipients") {
  struct Row {
    std::string_view args;
    std::string_view address;
  };
  const Row rows[] = {
      {"TO:<Postmaster>", "Postmaster"},
      {"to:<postmaster>", "postmaster"},
      {"TO:<POSTMASTER> NOTIFY=NEVER", "POSTMASTER"},
      {"TO:<@relay:Postmaster>", "Postmaster"},
      {"TO:<Postmaster@example.com>", "Postmaster@example.com"},
      {"TO: <user@example.com>", "user@example.com"},
  };
  for (const Row& r : rows) {
    CAPTURE(r.args);
    const PathResult p = parse_rcpt_to(r.args);
    REQUIRE_MESSAGE(p.ok(), to_string(p.error));
    CHECK(p.path->address == r.address);
    CHECK_FALSE(p.path->null_path);
  }
  CHECK(parse_rcpt_to("TO:<Postmasterx>").error == PathError::syntax);
  CHECK(parse_rcpt_to("TO:<\"Postmaster\">").error == PathError::syntax);
}

TEST_CASE("params: parsed in order, views as sent, params_text preserved exactly") {
  const std::string args =
      "FROM:<a@b>  SIZE=12345   BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159  ";
  const PathResult p = parse_mail_from(args);
  REQUIRE(p.ok());
  CHECK(p.path->params_text == "SIZE=12345   BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ314159");
  struct Want {
    std::string_view keyword;
    std::optional<std::string_view> value;
  };
  const Want want[] = {{"SIZE", "12345"}, {"BODY", "8BITMIME"}, {"SMTPUTF8", std::nullopt},
                       {"RET", "HDRS"},   {"ENVID", "QQ314159"}};
  REQUIRE(p.path->params.size() == std::size(want));
  for (std::size_t i = 0; i < std::size(want); ++i) {
    CAPTURE(i);
    CHECK(p.path->params[i].keyword == want[i].keyword);
    CHECK(p.path->params[i].value == want[i].value);
    // The views point into the caller's text.
    CHECK(p.path->params[i].keyword.data() >= args.data());
    CHECK(p.path->params[i].keyword.data() < args.data() + args.size());
  }

  const PathResult r = parse_rcpt_to("TO:<c@d> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@x");
  REQUIRE(r.ok());
  CHECK(r.path->params_text == "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a+2Bb@x");
  REQUIRE(r.path->params.size() == 2);
  CHECK(r.path->params[0].keyword == "NOTIFY");
  CHECK(r.path->params[0].value == std::optional<std::string_view>("SUCCESS,DELAY"));
  CHECK(r.path->params[1].keyword == "ORCPT");
  CHECK(r.path->params[1].value == std::optional<std::string_view>("rfc822;a+2Bb@x"));

  const PathResult none = parse_mail_from("FROM:<a@b>");
  REQUIRE(none.ok());
  CHECK(none.path->params.empty());
  CHECK(none.path->params_text.empty());

  // Keyword case is kept as sent; a UTF-8 value is allowed (RFC 6531 3.3).
  const PathResult lc = parse_mail_from("FROM:<a@b> size=1 x-foo=\xC3\xA9 X-BAR");
  REQUIRE(lc.ok());
  REQUIRE(lc.path->params.size() == 3);
  CHECK(lc.path->params[0].keyword == "size");
  CHECK(lc.path->params[1].value == std::optional<std::string_view>("\xC3\xA9"));
  CHECK_FALSE(lc.path->params[2].value.has_value());
}

TEST_CASE("params: at most fixed::max_esmtp_params") {
  std::string args = "FROM:<a@b>";
  for (std::size_t i = 0; i < fixed::max_esmtp_params; ++i) args += " P" + std::to_string(i);
  CHECK(parse_mail_from(args).ok());
  args += " ONEMORE";
  CHECK(parse_mail_from(args).error == PathError::bad_param);
}

TEST_CASE("valid_param_value") {
  struct Row {
    std::string_view keyword;
    std::optional<std::string_view> value;
    bool valid;
  };
  const std::string envid100(100, 'E');
  const std::string envid101(101, 'E');
  const std::string orcpt500 = "rfc822;" + std::string(500, 'o');
  const std::string orcpt501 = "rfc822;" + std::string(501, 'o');
  const Row rows[] = {
      {"SIZE", "0", true},
      {"size", "10240000", true},
      {"SIZE", "18446744073709551615", true},
      {"SIZE", "18446744073709551616", false},
      {"SIZE", "000000000000000000001", false},  // 21 digits
      {"SIZE", "-1", false},
      {"SIZE", "1k", false},
      {"SIZE", std::nullopt, false},
      {"BODY", "7BIT", true},
      {"BODY", "8bitmime", true},
      {"BODY", "BINARYMIME", true},
      {"BODY", "8BIT", false},
      {"BODY", std::nullopt, false},
      {"RET", "FULL", true},
      {"ret", "hdrs", true},
      {"RET", "NONE", false},
      {"ENVID", "QQ314159", true},
      {"ENVID", "a+2Bb+3Dc", true},
      {"ENVID", "a+2bb", false},     // hex digits must be upper case
      {"ENVID", "a+2", false},
      {"ENVID", "a=b", false},
      {"ENVID", "a+0Ab", false},     // decoded LF is not printable
      {"ENVID", envid100, true},
      {"ENVID", envid101, false},
      {"ENVID", "+41+42", true},
      {"NOTIFY", "NEVER", true},
      {"NOTIFY", "never", true},
      {"NOTIFY", "SUCCESS", true},
      {"NOTIFY", "SUCCESS,FAILURE,DELAY", true},
      {"NOTIFY", "delay,failure", true},
      {"NOTIFY", "NEVER,SUCCESS", false},
      {"NOTIFY", "SUCCESS,NEVER", false},
      {"NOTIFY", "SUCCESS,", false},
      {"NOTIFY", ",SUCCESS", false},
      {"NOTIFY", "SOMETIMES", false},
      {"NOTIFY", std::nullopt, false},
      {"ORCPT", "rfc822;user@x", true},
      {"ORCPT", "rfc822;a+2Bb@x", true},
      {"ORCPT", "RFC822;a+2bb@x", false},
      {"ORCPT", "utf-8;user@x", true},
      {"ORCPT", "rfc822;", false},
      {"ORCPT", ";user@x", false},
      {"ORCPT", "user@x", false},
      {"ORCPT", "rfc 822;u@x", false},
      {"ORCPT", orcpt500, true},
      {"ORCPT", orcpt501, false},
      {"SMTPUTF8", std::nullopt, true},
      {"smtputf8", std::nullopt, true},
      {"SMTPUTF8", "yes", false},
      {"AUTH", "<>", false},  // not a parameter we know
      {"X-UNKNOWN", std::nullopt, false},
  };
  for (const Row& r : rows) {
    CAPTURE(r.keyword);
    CAPTURE(r.value.value_or("(none)"));
    CHECK(valid_param_value(r.keyword, r.value) == r.valid);
  }
}

TEST_CASE("decode_xtext") {
  CHECK(decode_xtext("a+2Bb@x") == std::optional<std::string>("a+b@x"));
  CHECK(decode_xtext("") == std::optional<std::string>(""));
  CHECK(decode_xtext("+3D+2B") == std::optional<std::string>("=+"));
  CHECK_FALSE(decode_xtext("a+2b").has_value());
  CHECK_FALSE(decode_xtext("a b").has_value());
}

TEST_CASE("parse_bdat (RFC 3030 2)") {
  struct Row {
    std::string_view args;
    std::optional<std::uint64_t> size;  // nullopt: rejected
    bool last;
  };
  const Row rows[] = {
      {"1234", 1234, false},
      {"1234 LAST", 1234, true},
      {"1234 last", 1234, true},
      {"1234   LaSt", 1234, true},
      {"0 LAST", 0, true},
      {"0", 0, false},
      {"12 ", 12, false},                        // trailing spaces (args not trimmed by the caller)
      {"12 LAST  ", 12, true},
      {"18446744073709551615", UINT64_MAX, false},
      {"00000000000000000001", 1, false},       // 20 digits
      {"18446744073709551616", std::nullopt, false},  // overflow
      {"99999999999999999999", std::nullopt, false},
      {"000000000000000000001", std::nullopt, false},  // 21 digits
      {"", std::nullopt, false},
      {"LAST", std::nullopt, false},
      {" 12", std::nullopt, false},
      {"12LAST", std::nullopt, false},
      {"12 LAST x", std::nullopt, false},
      {"12 34", std::nullopt, false},
      {"12 LASTX", std::nullopt, false},
      {"-12", std::nullopt, false},
      {"+12", std::nullopt, false},
      {"12\tLAST", std::nullopt, false},
      {"0x10", std::nullopt, false},
  };
  for (const Row& r : rows) {
    CAPTURE(r.args);
    const auto b = parse_bdat(r.args);
    REQUIRE(b.has_value() == r.size.has_value());
    if (b) {
      CHECK(b->size == *r.size);
      CHECK(b->last == r.last);
    }
  }
}

TEST_CASE("to_string(PathError) names are distinct") {
  const PathError all[] = {PathError::none,          PathError::syntax,
                           PathError::missing_brackets, PathError::address_too_long,
                           PathError::local_part_too_long, PathError::domain_too_long,
                           PathError::bad_local_part, PathError::bad_domain,
                           PathError::null_not_allowed, PathError::bad_param,
                           PathError::duplicate_param};
  for (std::size_t i = 0; i < std::size(all); ++i)
    for (std::size_t j = i + 1; j < std::size(all); ++j) CHECK(to_string(all[i]) != to_string(all[j]));
  CHECK(to_string(PathError::bad_domain) == "bad_domain");
}
