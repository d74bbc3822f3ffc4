// Unit tests for relay/smtp/params.hpp: MAIL/RCPT parameter acceptance, row by row. Each row names
// its input (the MAIL FROM / RCPT TO arguments as a client sends them, parsed by parse_mail_from /
// parse_rcpt_to, plus what was offered) and the outcome expected: accepted (with the SMTPUTF8 flag)
// or the refusal and the name its reply shows. Then the re-check against the next hop connected
// now, the parameter text forwarded with and without next-hop SIZE, and the reply of each refusal.
#include <doctest/doctest.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "relay/replies.hpp"
#include "relay/smtp/command.hpp"
#include "relay/smtp/params.hpp"

using batv::relay::smtp::Capabilities;
using batv::relay::smtp::MailParams;
using batv::relay::smtp::Param;
using batv::relay::smtp::ParamOffer;
using batv::relay::smtp::ParamProblem;
using batv::relay::smtp::ParamRefusal;
using batv::relay::smtp::Path;
using batv::relay::smtp::PathError;
using batv::relay::smtp::PathResult;
namespace smtp = batv::relay::smtp;
namespace replies = batv::relay::replies;

namespace {

constexpr std::uint64_t limit = 1000;  // the SIZE offered in these rows
constexpr std::uint64_t u64_max = std::numeric_limits<std::uint64_t>::max();

// SIZE is always offered; nothing else.
ParamOffer bare() {
  ParamOffer o;
  o.size = limit;
  return o;
}
ParamOffer everything() {
  ParamOffer o = bare();
  o.eightbitmime = o.smtputf8 = o.dsn = o.auth = true;
  return o;
}
template <class F>
ParamOffer offer(F change) {
  ParamOffer o = bare();
  change(o);
  return o;
}

std::optional<ParamProblem> refused(ParamRefusal why, std::string name = {}) { return ParamProblem{why, std::move(name)}; }
constexpr auto unsupported = ParamRefusal::unsupported;
constexpr auto invalid = ParamRefusal::invalid;
constexpr auto size_exceeded = ParamRefusal::size_exceeded;
constexpr auto needs_smtputf8 = ParamRefusal::needs_smtputf8;
constexpr auto next_hop_lacks = ParamRefusal::next_hop_lacks;

// The outcome as text ("accepted", "invalid SIZE", "next_hop_lacks DSN"): the refusal and its
// name, which is all a ParamProblem holds, readable when a row fails.
std::string describe(const std::optional<ParamProblem>& p) {
  if (!p) return "accepted";
  return std::string(smtp::to_string(p->why)) + (p->name.empty() ? "" : " " + p->name);
}

// The text must outlive the Path (its params are views into it).
Path parse(bool rcpt, const std::string& args) {
  const PathResult r = rcpt ? smtp::parse_rcpt_to(args) : smtp::parse_mail_from(args);
  REQUIRE_MESSAGE(r.ok(), args << ": " << smtp::to_string(r.error));
  return *r.path;
}

// --- MAIL FROM against what was offered ---------------------------------------------------------

struct MailRow {
  const char* name;
  std::string args;
  ParamOffer offered;
  std::optional<ParamProblem> want;
  bool smtputf8 = false;
};

std::vector<MailRow> mail_rows() {
  const auto dsn = offer([](ParamOffer& o) { o.dsn = true; });
  const auto mime8 = offer([](ParamOffer& o) { o.eightbitmime = true; });
  const auto utf8 = offer([](ParamOffer& o) { o.smtputf8 = true; });
  const auto auth = offer([](ParamOffer& o) { o.auth = true; });
  const auto huge = offer([](ParamOffer& o) { o.size = u64_max; });
  const std::string envid100(100, 'e');
  return {
      {"no parameters", "FROM:<a@example.com>", bare(), std::nullopt},
      {"null sender, no parameters", "FROM:<>", bare(), std::nullopt},
      // SIZE (RFC 1870): always offered, whatever else is.
      {"SIZE under the limit", "FROM:<a@example.com> SIZE=999", bare(), std::nullopt},
      {"SIZE equal to the limit", "FROM:<a@example.com> SIZE=1000", bare(), std::nullopt},
      {"SIZE one over the limit", "FROM:<a@example.com> SIZE=1001", bare(), refused(size_exceeded)},
      {"SIZE=0", "FROM:<a@example.com> SIZE=0", bare(), std::nullopt},
      {"SIZE with leading zeros, equal to the limit", "FROM:<a@example.com> SIZE=0001000", bare(), std::nullopt},
      {"SIZE lower-case keyword", "FROM:<a@example.com> size=1000", bare(), std::nullopt},
      {"SIZE mixed-case keyword, over", "FROM:<a@example.com> Size=1001", bare(), refused(size_exceeded)},
      {"SIZE the largest std::uint64_t, over the limit", "FROM:<a@example.com> SIZE=18446744073709551615", bare(),
       refused(size_exceeded)},
      {"SIZE the largest std::uint64_t, limit the same", "FROM:<a@example.com> SIZE=18446744073709551615", huge,
       std::nullopt},
      {"SIZE one past std::uint64_t", "FROM:<a@example.com> SIZE=18446744073709551616", huge, refused(invalid, "SIZE")},
      {"SIZE absurd (20 nines)", "FROM:<a@example.com> SIZE=99999999999999999999", bare(), refused(invalid, "SIZE")},
      {"SIZE of 21 digits, small", "FROM:<a@example.com> SIZE=" + std::string(20, '0') + "1", bare(),
       refused(invalid, "SIZE")},
      {"SIZE not a number", "FROM:<a@example.com> SIZE=ten", bare(), refused(invalid, "SIZE")},
      {"SIZE negative", "FROM:<a@example.com> SIZE=-1", bare(), refused(invalid, "SIZE")},
      {"SIZE with a sign", "FROM:<a@example.com> SIZE=+1", bare(), refused(invalid, "SIZE")},
      {"SIZE without a value", "FROM:<a@example.com> SIZE", bare(), refused(invalid, "SIZE")},
      {"size without a value: the name is upper-cased", "FROM:<a@example.com> size", bare(), refused(invalid, "SIZE")},
      // BODY (RFC 6152; RFC 3030 3).
      {"BODY=7BIT, nothing offered", "FROM:<a@example.com> BODY=7BIT", bare(), std::nullopt},
      {"body=7bit lower-case", "FROM:<a@example.com> body=7bit", bare(), std::nullopt},
      {"BODY=8BITMIME offered", "FROM:<a@example.com> BODY=8BITMIME", mime8, std::nullopt},
      {"BODY=8bitmime lower-case value, offered", "FROM:<a@example.com> BODY=8bitmime", mime8, std::nullopt},
      {"BODY=8BITMIME not offered", "FROM:<a@example.com> BODY=8BITMIME", bare(), refused(unsupported, "BODY")},
      {"bOdY=8BITMIME not offered: upper-cased name", "FROM:<a@example.com> bOdY=8BITMIME", dsn,
       refused(unsupported, "BODY")},
      {"BODY=BINARYMIME never, everything offered", "FROM:<a@example.com> BODY=BINARYMIME", everything(),
       refused(unsupported, "BODY")},
      {"BODY=binarymime never", "FROM:<a@example.com> BODY=binarymime", mime8, refused(unsupported, "BODY")},
      {"BODY with an unknown value: unsupported, not invalid", "FROM:<a@example.com> BODY=9BIT", everything(),
       refused(unsupported, "BODY")},
      {"BODY without a value", "FROM:<a@example.com> BODY", everything(), refused(unsupported, "BODY")},
      // SMTPUTF8 (RFC 6531 3.4).
      {"SMTPUTF8 offered", "FROM:<a@example.com> SMTPUTF8", utf8, std::nullopt, true},
      {"smtputf8 lower-case, offered", "FROM:<a@example.com> smtputf8", utf8, std::nullopt, true},
      {"SMTPUTF8 not offered", "FROM:<a@example.com> SMTPUTF8", bare(), refused(unsupported, "SMTPUTF8")},
      {"SMTPUTF8 with a value", "FROM:<a@example.com> SMTPUTF8=YES", utf8, refused(invalid, "SMTPUTF8")},
      {"non-ASCII sender with SMTPUTF8", "FROM:<j\xc3\xb6rg@example.com> SMTPUTF8", utf8, std::nullopt, true},
      {"non-ASCII sender without SMTPUTF8, offered", "FROM:<j\xc3\xb6rg@example.com>", utf8, refused(needs_smtputf8)},
      {"non-ASCII sender without SMTPUTF8, not offered", "FROM:<j\xc3\xb6rg@example.com>", bare(),
       refused(needs_smtputf8)},
      {"non-ASCII sender, SMTPUTF8 not offered: the parameter first",
       "FROM:<j\xc3\xb6rg@example.com> SMTPUTF8", bare(), refused(unsupported, "SMTPUTF8")},
      {"non-ASCII sender, a bad SIZE: the parameter first", "FROM:<j\xc3\xb6rg@example.com> SIZE=x", utf8,
       refused(invalid, "SIZE")},
      {"non-ASCII domain with SMTPUTF8", "FROM:<a@b\xc3\xbc\x63her.example> SMTPUTF8", utf8, std::nullopt, true},
      // RET / ENVID (RFC 3461 4.3, 4.4).
      {"RET=FULL, DSN offered", "FROM:<a@example.com> RET=FULL", dsn, std::nullopt},
      {"ret=hdrs lower-case, DSN offered", "FROM:<a@example.com> ret=hdrs", dsn, std::nullopt},
      {"RET=FULL, DSN not offered", "FROM:<a@example.com> RET=FULL", mime8, refused(unsupported, "RET")},
      {"RET=PARTIAL", "FROM:<a@example.com> RET=PARTIAL", dsn, refused(invalid, "RET")},
      {"RET without a value", "FROM:<a@example.com> RET", dsn, refused(invalid, "RET")},
      {"RET invalid and not offered: unsupported first", "FROM:<a@example.com> RET=PARTIAL", bare(),
       refused(unsupported, "RET")},
      {"ENVID, DSN offered", "FROM:<a@example.com> ENVID=QQ314159", dsn, std::nullopt},
      {"ENVID with xtext escapes", "FROM:<a@example.com> ENVID=a+2Bb+3Dc", dsn, std::nullopt},
      {"envid lower-case keyword", "FROM:<a@example.com> envid=x", dsn, std::nullopt},
      {"ENVID, DSN not offered", "FROM:<a@example.com> ENVID=QQ314159", bare(), refused(unsupported, "ENVID")},
      {"ENVID bad xtext (lower-case hex)", "FROM:<a@example.com> ENVID=a+2b", dsn, refused(invalid, "ENVID")},
      {"ENVID bad xtext (short escape)", "FROM:<a@example.com> ENVID=a+2", dsn, refused(invalid, "ENVID")},
      {"ENVID of 100 characters", "FROM:<a@example.com> ENVID=" + envid100, dsn, std::nullopt},
      {"ENVID of 101 characters", "FROM:<a@example.com> ENVID=" + envid100 + "e", dsn, refused(invalid, "ENVID")},
      {"ENVID without a value", "FROM:<a@example.com> ENVID", dsn, refused(invalid, "ENVID")},
      // AUTH= (RFC 4954 5): only when AUTH is offered to this client.
      {"AUTH=<> offered", "FROM:<a@example.com> AUTH=<>", auth, std::nullopt},
      {"auth=<> lower-case keyword, offered", "FROM:<a@example.com> auth=<>", auth, std::nullopt},
      {"AUTH=xtext offered", "FROM:<a@example.com> AUTH=user+40example.com", auth, std::nullopt},
      {"AUTH=<> not offered", "FROM:<a@example.com> AUTH=<>", bare(), refused(unsupported, "AUTH")},
      {"auth=<> not offered: upper-cased name", "FROM:<a@example.com> auth=<>", dsn, refused(unsupported, "AUTH")},
      {"AUTH bad xtext, offered", "FROM:<a@example.com> AUTH=user+4", auth, refused(invalid, "AUTH")},
      {"AUTH bad xtext, not offered: unsupported first", "FROM:<a@example.com> AUTH=user+4", bare(),
       refused(unsupported, "AUTH")},
      {"AUTH without a value", "FROM:<a@example.com> AUTH", auth, refused(invalid, "AUTH")},
      {"AUTH=<x>: not <> but valid xtext", "FROM:<a@example.com> AUTH=<x>", auth, std::nullopt},
      // Unknown keywords, and the RCPT ones on MAIL.
      {"unknown keyword", "FROM:<a@example.com> FOO=bar", everything(), refused(unsupported, "FOO")},
      {"unknown keyword without a value, upper-cased", "FROM:<a@example.com> x-Custom", everything(),
       refused(unsupported, "X-CUSTOM")},
      {"NOTIFY on MAIL", "FROM:<a@example.com> NOTIFY=NEVER", everything(), refused(unsupported, "NOTIFY")},
      {"ORCPT on MAIL", "FROM:<a@example.com> ORCPT=rfc822;a@b", everything(), refused(unsupported, "ORCPT")},
      {"BINARYMIME as a keyword", "FROM:<a@example.com> BINARYMIME", everything(), refused(unsupported, "BINARYMIME")},
      // Several parameters: checked in the order sent, the first problem wins.
      {"all of them, everything offered", "FROM:<a@example.com> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x AUTH=<>",
       everything(), std::nullopt, true},
      {"SIZE over, then unknown: SIZE first", "FROM:<a@example.com> SIZE=2000 FOO=1", everything(),
       refused(size_exceeded)},
      {"unknown, then SIZE over: the unknown first", "FROM:<a@example.com> FOO=1 SIZE=2000", everything(),
       refused(unsupported, "FOO")},
      {"BODY not offered before an offered SMTPUTF8", "FROM:<a@example.com> BODY=8BITMIME SMTPUTF8", utf8,
       refused(unsupported, "BODY")},
      {"AUTH invalid before SIZE over", "FROM:<a@example.com> AUTH=+zz SIZE=2000", auth, refused(invalid, "AUTH")},
      {"SIZE over before AUTH not offered", "FROM:<a@example.com> SIZE=2000 AUTH=<>", bare(), refused(size_exceeded)},
  };
}

TEST_CASE("MAIL parameters against what was offered, row by row") {
  for (const MailRow& row : mail_rows()) {
    CAPTURE(row.name);
    CAPTURE(row.args);
    const Path path = parse(false, row.args);
    const MailParams got = smtp::check_mail_params(path, row.offered);
    CHECK(describe(got.problem) == describe(row.want));
    if (got.ok()) CHECK(got.smtputf8 == row.smtputf8);
  }
}

TEST_CASE("duplicate MAIL/RCPT parameters never reach the check: the parser refuses them") {
  // RFC 1869 6: a keyword given twice, in any case.
  for (const char* args : {"FROM:<a@example.com> SIZE=1 size=2", "FROM:<a@example.com> SMTPUTF8 SMTPUTF8",
                           "FROM:<a@example.com> BODY=7BIT SIZE=1 Body=8BITMIME", "FROM:<a@example.com> AUTH=<> auth=<>"}) {
    CAPTURE(args);
    CHECK(smtp::parse_mail_from(args).error == PathError::duplicate_param);
  }
  CHECK(smtp::parse_rcpt_to("TO:<a@example.com> NOTIFY=NEVER notify=SUCCESS").error == PathError::duplicate_param);
}

TEST_CASE("a Path built with duplicates anyway: each is checked, in order") {
  Path p;
  p.address = "a@example.com";
  p.params = {Param{"SIZE", "1"}, Param{"SIZE", "2000"}};
  CHECK(describe(smtp::check_mail_params(p, bare()).problem) == "size_exceeded");
  p.params = {Param{"SMTPUTF8", std::nullopt}, Param{"smtputf8", std::nullopt}};
  const MailParams twice = smtp::check_mail_params(p, everything());
  CHECK(twice.ok());
  CHECK(twice.smtputf8);
  p.params = {Param{"SMTPUTF8", std::nullopt}, Param{"SMTPUTF8", std::string_view("x")}};
  CHECK(describe(smtp::check_mail_params(p, everything()).problem) == "invalid SMTPUTF8");
}

// --- MAIL FROM against the next hop connected now -----------------------------------------------

struct RecheckRow {
  const char* name;
  std::string args;
  Capabilities now;
  std::optional<ParamProblem> want;
};

template <class F>
Capabilities caps(F change) {
  Capabilities c;
  change(c);
  return c;
}

std::vector<RecheckRow> recheck_rows() {
  const Capabilities none{};
  const auto all = caps([](Capabilities& c) {
    c.eightbitmime = c.smtputf8 = c.dsn = c.size_advertised = true;
    c.size = 4000;
    c.auth = {"PLAIN"};
  });
  const auto no_8bit = caps([&](Capabilities& c) { c = all; c.eightbitmime = false; });
  const auto no_utf8 = caps([&](Capabilities& c) { c = all; c.smtputf8 = false; });
  const auto no_dsn = caps([&](Capabilities& c) { c = all; c.dsn = false; });
  const auto size_unlimited = caps([&](Capabilities& c) { c = all; c.size = 0; });
  const auto size_unset = caps([&](Capabilities& c) { c = all; c.size = std::nullopt; });
  return {
      {"no parameters, next hop offers nothing", "FROM:<a@example.com>", none, std::nullopt},
      {"everything, next hop offers everything", "FROM:<a@example.com> SIZE=4000 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x",
       all, std::nullopt},
      {"BODY=8BITMIME, next hop without 8BITMIME", "FROM:<a@example.com> BODY=8BITMIME", no_8bit,
       refused(next_hop_lacks, "8BITMIME")},
      {"body=8bitmime lower-case, next hop without 8BITMIME", "FROM:<a@example.com> body=8bitmime", no_8bit,
       refused(next_hop_lacks, "8BITMIME")},
      {"BODY=7BIT needs nothing of the next hop", "FROM:<a@example.com> BODY=7BIT", none, std::nullopt},
      {"SMTPUTF8, next hop without it", "FROM:<a@example.com> SMTPUTF8", no_utf8, refused(next_hop_lacks, "SMTPUTF8")},
      {"RET, next hop without DSN", "FROM:<a@example.com> RET=FULL", no_dsn, refused(next_hop_lacks, "DSN")},
      {"ENVID, next hop without DSN", "FROM:<a@example.com> envid=x", no_dsn, refused(next_hop_lacks, "DSN")},
      {"SIZE equal to the next hop's limit", "FROM:<a@example.com> SIZE=4000", all, std::nullopt},
      {"SIZE one over the next hop's limit", "FROM:<a@example.com> SIZE=4001", all, refused(size_exceeded)},
      {"SIZE, next hop SIZE 0 (no fixed limit)", "FROM:<a@example.com> SIZE=99999", size_unlimited, std::nullopt},
      {"SIZE, next hop without a limit", "FROM:<a@example.com> SIZE=99999", size_unset, std::nullopt},
      {"SIZE, next hop without SIZE at all", "FROM:<a@example.com> SIZE=99999", none, std::nullopt},
      {"AUTH=<> is not checked against the next hop again", "FROM:<a@example.com> AUTH=<>", none, std::nullopt},
      {"first problem wins: SIZE before SMTPUTF8", "FROM:<a@example.com> SIZE=5000 SMTPUTF8",
       no_utf8, refused(size_exceeded)},
      {"first problem wins: SMTPUTF8 before SIZE", "FROM:<a@example.com> SMTPUTF8 SIZE=5000",
       no_utf8, refused(next_hop_lacks, "SMTPUTF8")},
      {"first problem wins: DSN before 8BITMIME", "FROM:<a@example.com> RET=HDRS BODY=8BITMIME", none,
       refused(next_hop_lacks, "DSN")},
  };
}

TEST_CASE("MAIL parameters against the next hop connected now, row by row") {
  for (const RecheckRow& row : recheck_rows()) {
    CAPTURE(row.name);
    CAPTURE(row.args);
    const Path path = parse(false, row.args);
    const auto got = smtp::recheck_mail_params(path, row.now);
    CHECK(describe(got) == describe(row.want));
  }
}

// --- The MAIL parameters as forwarded ------------------------------------------------------------

struct ForwardRow {
  const char* name;
  std::string args;
  bool next_hop_size;  // the next hop advertised SIZE
  std::string want;
};

std::vector<ForwardRow> forward_rows() {
  return {
      {"no parameters, next hop SIZE", "FROM:<a@example.com>", true, ""},
      {"no parameters, no next-hop SIZE", "FROM:<a@example.com>", false, ""},
      {"SIZE only, next hop SIZE", "FROM:<a@example.com> SIZE=100", true, "SIZE=100"},
      {"SIZE only, no next-hop SIZE: nothing left", "FROM:<a@example.com> SIZE=100", false, ""},
      {"SIZE and BODY, next hop SIZE", "FROM:<a@example.com> SIZE=100 BODY=8BITMIME", true, "SIZE=100 BODY=8BITMIME"},
      {"SIZE and BODY, no next-hop SIZE", "FROM:<a@example.com> SIZE=100 BODY=8BITMIME", false, "BODY=8BITMIME"},
      {"SIZE in the middle, no next-hop SIZE", "FROM:<a@example.com> BODY=7BIT SIZE=100 SMTPUTF8", false,
       "BODY=7BIT SMTPUTF8"},
      {"lower-case size dropped, case of the rest kept", "FROM:<a@example.com> size=100 body=7bit Ret=Full", false,
       "body=7bit Ret=Full"},
      {"spacing kept as sent when SIZE goes on", "FROM:<a@example.com>   BODY=7BIT   SIZE=100   SMTPUTF8  ", true,
       "BODY=7BIT   SIZE=100   SMTPUTF8"},
      {"single spaces when SIZE is dropped", "FROM:<a@example.com>   BODY=7BIT   SIZE=100   SMTPUTF8  ", false,
       "BODY=7BIT SMTPUTF8"},
      {"without SIZE, unchanged in content", "FROM:<a@example.com> AUTH=<> ENVID=a+2Bb", false, "AUTH=<> ENVID=a+2Bb"},
      {"values kept byte for byte", "FROM:<a@example.com> AUTH=user+40example.com", true, "AUTH=user+40example.com"},
  };
}

TEST_CASE("MAIL parameters as forwarded, with and without next-hop SIZE") {
  for (const ForwardRow& row : forward_rows()) {
    CAPTURE(row.name);
    CAPTURE(row.args);
    const Path path = parse(false, row.args);
    Capabilities next_hop;
    next_hop.size_advertised = row.next_hop_size;
    CHECK(smtp::forward_mail_params(path, next_hop) == row.want);
  }
}

TEST_CASE("next-hop SIZE advertised without a limit still gets SIZE as sent") {
  const std::string args = "FROM:<a@example.com> SIZE=100";
  const Path path = parse(false, args);
  Capabilities c;
  c.size_advertised = true;  // "SIZE" or "SIZE 0": no fixed limit, but the parameter may be used
  c.size = std::nullopt;
  CHECK(smtp::forward_mail_params(path, c) == "SIZE=100");
}

// --- RCPT TO -------------------------------------------------------------------------------------

struct RcptRow {
  const char* name;
  std::string args;
  ParamOffer offered;
  std::optional<Capabilities> now;  // nullopt: no next hop connected
  bool tx_smtputf8;
  std::optional<ParamProblem> want;
};

std::vector<RcptRow> rcpt_rows() {
  const auto dsn = offer([](ParamOffer& o) { o.dsn = true; });
  const auto hop_dsn = caps([](Capabilities& c) { c.dsn = true; });
  const Capabilities hop_bare{};
  const std::string orcpt500 = "ORCPT=rfc822;" + std::string(500, 'o');
  return {
      {"no parameters", "TO:<b@example.net>", bare(), hop_bare, false, std::nullopt},
      {"NOTIFY, DSN offered", "TO:<b@example.net> NOTIFY=SUCCESS,FAILURE,DELAY", dsn, hop_dsn, false, std::nullopt},
      {"notify=never lower-case", "TO:<b@example.net> notify=never", dsn, hop_dsn, false, std::nullopt},
      {"NOTIFY=success,delay lower-case values", "TO:<b@example.net> NOTIFY=success,delay", dsn, hop_dsn, false,
       std::nullopt},
      {"NOTIFY, DSN not offered", "TO:<b@example.net> NOTIFY=SUCCESS", bare(), hop_dsn, false,
       refused(unsupported, "NOTIFY")},
      {"NOTIFY=NEVER with others", "TO:<b@example.net> NOTIFY=NEVER,SUCCESS", dsn, hop_dsn, false,
       refused(invalid, "NOTIFY")},
      {"NOTIFY unknown value", "TO:<b@example.net> NOTIFY=ALWAYS", dsn, hop_dsn, false, refused(invalid, "NOTIFY")},
      {"NOTIFY without a value", "TO:<b@example.net> NOTIFY", dsn, hop_dsn, false, refused(invalid, "NOTIFY")},
      {"ORCPT, DSN offered", "TO:<b@example.net> ORCPT=rfc822;b+40example.net", dsn, hop_dsn, false, std::nullopt},
      {"orcpt lower-case keyword", "TO:<b@example.net> orcpt=rfc822;b@example.net", dsn, hop_dsn, false, std::nullopt},
      {"ORCPT, DSN not offered: upper-cased name", "TO:<b@example.net> orcpt=rfc822;b@example.net", bare(), hop_dsn,
       false, refused(unsupported, "ORCPT")},
      {"ORCPT without addr-type", "TO:<b@example.net> ORCPT=b@example.net", dsn, hop_dsn, false,
       refused(invalid, "ORCPT")},
      {"ORCPT bad xtext", "TO:<b@example.net> ORCPT=rfc822;b+4", dsn, hop_dsn, false, refused(invalid, "ORCPT")},
      {"ORCPT of 500 characters", "TO:<b@example.net> " + orcpt500, dsn, hop_dsn, false, std::nullopt},
      {"ORCPT of 501 characters", "TO:<b@example.net> " + orcpt500 + "o", dsn, hop_dsn, false,
       refused(invalid, "ORCPT")},
      {"SIZE is a MAIL parameter", "TO:<b@example.net> SIZE=1", dsn, hop_dsn, false, refused(unsupported, "SIZE")},
      {"RET is a MAIL parameter", "TO:<b@example.net> RET=FULL", dsn, hop_dsn, false, refused(unsupported, "RET")},
      {"SMTPUTF8 is a MAIL parameter", "TO:<b@example.net> SMTPUTF8", everything(), hop_dsn, true,
       refused(unsupported, "SMTPUTF8")},
      {"unknown keyword", "TO:<b@example.net> X-FOO=1", dsn, hop_dsn, false, refused(unsupported, "X-FOO")},
      // The next hop connected now.
      {"NOTIFY, next hop without DSN", "TO:<b@example.net> NOTIFY=NEVER", dsn, hop_bare, false,
       refused(next_hop_lacks, "DSN")},
      {"NOTIFY, no next hop connected yet", "TO:<b@example.net> NOTIFY=NEVER", dsn, std::nullopt, false, std::nullopt},
      {"no parameters, next hop without DSN", "TO:<b@example.net>", dsn, hop_bare, false, std::nullopt},
      {"a valid first parameter, then the next hop's DSN before the second's value",
       "TO:<b@example.net> NOTIFY=NEVER ORCPT=bad", dsn, hop_bare, false, refused(next_hop_lacks, "DSN")},
      {"an invalid first parameter before the next hop's DSN", "TO:<b@example.net> ORCPT=bad NOTIFY=NEVER", dsn,
       hop_bare, false, refused(invalid, "ORCPT")},
      {"not offered before the next hop's DSN", "TO:<b@example.net> NOTIFY=NEVER", bare(), hop_bare, false,
       refused(unsupported, "NOTIFY")},
      {"both, all fine", "TO:<b@example.net> NOTIFY=FAILURE ORCPT=rfc822;b@example.net", dsn, hop_dsn, false,
       std::nullopt},
      // A non-ASCII forward-path needs the transaction's SMTPUTF8 (RFC 6531 3.4).
      {"non-ASCII recipient, MAIL had SMTPUTF8", "TO:<j\xc3\xb6rg@example.net>", bare(), hop_bare, true, std::nullopt},
      {"non-ASCII recipient, MAIL without SMTPUTF8", "TO:<j\xc3\xb6rg@example.net>", everything(), hop_dsn, false,
       refused(needs_smtputf8)},
      {"non-ASCII recipient, a bad parameter first", "TO:<j\xc3\xb6rg@example.net> NOTIFY=x", dsn, hop_dsn, false,
       refused(invalid, "NOTIFY")},
      {"non-ASCII recipient, next hop's DSN first", "TO:<j\xc3\xb6rg@example.net> NOTIFY=NEVER", dsn, hop_bare, false,
       refused(next_hop_lacks, "DSN")},
      {"Postmaster without a domain", "TO:<Postmaster> NOTIFY=NEVER", dsn, hop_dsn, false, std::nullopt},
  };
}

TEST_CASE("RCPT parameters, row by row") {
  for (const RcptRow& row : rcpt_rows()) {
    CAPTURE(row.name);
    CAPTURE(row.args);
    const Path path = parse(true, row.args);
    const auto got = smtp::check_rcpt_params(path, row.offered, row.now ? &*row.now : nullptr, row.tx_smtputf8);
    CHECK(describe(got) == describe(row.want));
  }
}

// --- The reply of each refusal -------------------------------------------------------------------

TEST_CASE("each parameter refusal has its reply in relay/replies.hpp") {
  CHECK(replies::param_refusal({ParamRefusal::unsupported, "BODY"}) == replies::param_unsupported("BODY"));
  CHECK(replies::param_refusal({ParamRefusal::unsupported, "BODY"}) == "555 5.5.4 Unsupported parameter BODY\r\n");
  CHECK(replies::param_refusal({ParamRefusal::invalid, "SIZE"}) == "501 5.5.4 Invalid value for SIZE\r\n");
  CHECK(replies::param_refusal({ParamRefusal::size_exceeded, ""}) == replies::size_exceeded());
  CHECK(replies::param_refusal({ParamRefusal::needs_smtputf8, ""}) == replies::needs_smtputf8());
  CHECK(replies::param_refusal({ParamRefusal::next_hop_lacks, "DSN"}) == replies::upstream_lacks("DSN"));
  CHECK(replies::param_refusal({ParamRefusal::next_hop_lacks, "8BITMIME"}) ==
        "451 4.3.3 Next hop does not offer 8BITMIME now, try again later\r\n");
}

TEST_CASE("parameter refusals have distinct names") {
  const std::vector<ParamRefusal> all = {ParamRefusal::unsupported, ParamRefusal::invalid, ParamRefusal::size_exceeded,
                                         ParamRefusal::needs_smtputf8, ParamRefusal::next_hop_lacks};
  for (std::size_t i = 0; i < all.size(); ++i) {
    CHECK(smtp::to_string(all[i]) != "?");
    for (std::size_t j = i + 1; j < all.size(); ++j) CHECK(smtp::to_string(all[i]) != smtp::to_string(all[j]));
  }
}

}  // namespace
