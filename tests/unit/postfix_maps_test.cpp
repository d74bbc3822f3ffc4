// The Postfix no-hop roles' pure parts: netstrings, policy request framing and parsing, the policy
// service's answers and the socketmap's answers (every verdict x bounce/normal x mode x option).
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "conf/config.hpp"
#include "relay/postfix/netstring.hpp"
#include "relay/postfix/policy_request.hpp"
#include "relay/postfix/policy_service.hpp"
#include "relay/postfix/socketmap.hpp"
#include "relay/replies.hpp"
#include "tests/unit/fixtures.hpp"

using namespace batv;
using namespace batv::relay::postfix;
using test::T1;

namespace {

const char* const kValid = "prvs=368291fcbb=user@example.com";
const char* const kBadSig = "prvs=368291fcbc=user@example.com";
const char* const kUnknown = "prvs=468291fcbb=user@example.com";
const char* const kMalformed = "prvs=36829=user@example.com";
const char* const kUntagged = "user@example.com";
constexpr std::int64_t kExpiredNow = 1700611200;  // the day after the tag's last day

conf::Config config_from(const std::string& extra) {
  return test::config_from("inbound", "[\"example.com\", \"example.org\"]", extra);
}

}  // namespace

// --- netstrings ------------------------------------------------------------------------------------

TEST_CASE("netstring: decode complete, incomplete and broken input") {
  using S = NetstringResult::Status;
  struct Case {
    std::string in;
    std::size_t max;
    S status;
    std::string payload;     // when complete
    std::size_t consumed;    // when complete
    NetstringError error;    // when error
  };
  const std::vector<Case> cases = {
      {"0:,", 100, S::complete, "", 3, NetstringError::none},
      {"5:hello,", 100, S::complete, "hello", 8, NetstringError::none},
      {"5:hello,6:second,", 100, S::complete, "hello", 8, NetstringError::none},  // one at a time
      {"12:strip a@b.cd,", 100, S::complete, "strip a@b.cd", 16, NetstringError::none},
      {std::string("3:a\0b,", 6), 100, S::complete, std::string("a\0b", 3), 6, NetstringError::none},
      {"3::,:,", 100, S::complete, ":,:", 6, NetstringError::none},  // payload bytes are opaque
      {"100:" + std::string(100, 'x') + ",", 100, S::complete, std::string(100, 'x'), 105, NetstringError::none},
      // Not there yet.
      {"", 100, S::need_more, "", 0, NetstringError::none},
      {"1", 100, S::need_more, "", 0, NetstringError::none},
      {"12", 100, S::need_more, "", 0, NetstringError::none},
      {"5:", 100, S::need_more, "", 0, NetstringError::none},
      {"5:hell", 100, S::need_more, "", 0, NetstringError::none},
      {"5:hello", 100, S::need_more, "", 0, NetstringError::none},
      // Broken, whatever follows.
      {":", 100, S::error, "", 0, NetstringError::empty_length},
      {":x,", 100, S::error, "", 0, NetstringError::empty_length},
      {"x", 100, S::error, "", 0, NetstringError::not_a_digit},
      {"-1:x,", 100, S::error, "", 0, NetstringError::not_a_digit},
      {" 1:x,", 100, S::error, "", 0, NetstringError::not_a_digit},
      {"1 :x,", 100, S::error, "", 0, NetstringError::not_a_digit},
      {"+1:x,", 100, S::error, "", 0, NetstringError::not_a_digit},
      {"01:x,", 100, S::error, "", 0, NetstringError::leading_zero},
      {"00", 100, S::error, "", 0, NetstringError::leading_zero},
      {"5:hello;", 100, S::error, "", 0, NetstringError::missing_comma},
      {"5:hello\n", 100, S::error, "", 0, NetstringError::missing_comma},
      {"0:x", 100, S::error, "", 0, NetstringError::missing_comma},
      // Too long: refused from the digits alone, before any payload is buffered.
      {"101:", 100, S::error, "", 0, NetstringError::too_long},
      {"101", 100, S::error, "", 0, NetstringError::too_long},
      {"1000", 100, S::error, "", 0, NetstringError::too_long},
      {"10001", 10000, S::error, "", 0, NetstringError::too_long},
      {"99999999999999999999999999:", 10000, S::error, "", 0, NetstringError::too_long},
      {"10000:" + std::string(10000, 'k') + ",", 10000, S::complete, std::string(10000, 'k'), 10007,
       NetstringError::none},
  };
  for (const Case& c : cases) {
    CAPTURE(c.in);
    const NetstringResult r = decode_netstring(c.in, c.max);
    REQUIRE(static_cast<int>(r.status) == static_cast<int>(c.status));
    if (c.status == S::complete) {
      CHECK(r.payload == c.payload);
      CHECK(r.consumed == c.consumed);
    }
    if (c.status == S::error) CHECK(to_string(r.error) == to_string(c.error));
  }
}

TEST_CASE("netstring: encode round-trips, and every prefix of a valid netstring needs more") {
  for (const std::string& payload : {std::string(), std::string("NOTFOUND "), std::string("OK user@example.com"),
                                    std::string(1234, 'z'), std::string("a,b:c\0d", 7)}) {
    const std::string wire = encode_netstring(payload);
    const NetstringResult r = decode_netstring(wire, 10000);
    REQUIRE(r.complete());
    CHECK(r.payload == payload);
    CHECK(r.consumed == wire.size());
    for (std::size_t n = 0; n < wire.size(); ++n) {
      CAPTURE(n);
      CHECK(decode_netstring(std::string_view(wire).substr(0, n), 10000).status == NetstringResult::Status::need_more);
    }
  }
  std::string two;
  append_netstring(two, "first");
  append_netstring(two, "");
  CHECK(two == "5:first,0:,");
}

// --- policy requests -----------------------------------------------------------------------------------

TEST_CASE("policy framer: the request ends at the first empty line, LF or CRLF") {
  using S = PolicyFrame::Status;
  struct Case {
    std::string in;
    std::size_t max;
    S status;
    std::size_t length;
  };
  const std::vector<Case> cases = {
      {"request=smtpd_access_policy\n\n", 1000, S::complete, 29},
      {"request=smtpd_access_policy\r\n\r\n", 1000, S::complete, 31},
      {"a=1\nb=2\n\nc=3\n\n", 1000, S::complete, 9},  // the first request only
      {"a=1\r\n\n", 1000, S::complete, 6},
      {"a=1\n\r\n", 1000, S::complete, 6},
      {"\n", 1000, S::complete, 1},                     // an empty request (the parser decides)
      {"\r\n", 1000, S::complete, 2},
      {"", 1000, S::need_more, 0},
      {"a=1", 1000, S::need_more, 0},
      {"a=1\n", 1000, S::need_more, 0},
      {"a=1\n\r", 1000, S::need_more, 0},              // "\r" may be the start of "\r\n"
      {"a=1\n\rb=2\n", 1000, S::need_more, 0},          // "\rb=2" is a (bad) line, not the end
      {"a=1\r\r\n", 1000, S::need_more, 0},
      {"a=1\nb=2\n\n", 9, S::complete, 9},              // exactly the bound
      {"a=1\nb=2\n\n", 8, S::too_large, 0},
      {"a=1\nb=2\n", 8, S::too_large, 0},
      {std::string(5000, 'x'), 4096, S::too_large, 0},
  };
  for (const Case& c : cases) {
    CAPTURE(c.in);
    PolicyFramer f(c.max);
    const PolicyFrame r = f.next(c.in);
    CHECK(static_cast<int>(r.status) == static_cast<int>(c.status));
    if (c.status == S::complete) CHECK(r.length == c.length);
  }
}

TEST_CASE("policy framer: byte-by-byte arrival frames exactly as a whole buffer does") {
  const std::string wire = "request=smtpd_access_policy\r\nprotocol_state=RCPT\nsender=\n\r\nnext=1\n\n";
  PolicyFramer f(1000);
  std::size_t n = 0;
  PolicyFrame r;
  for (n = 1; n <= wire.size(); ++n) {
    r = f.next(std::string_view(wire).substr(0, n));
    if (r.status != PolicyFrame::Status::need_more) break;
  }
  REQUIRE(r.status == PolicyFrame::Status::complete);
  CHECK(r.length == wire.find("next="));
  CHECK(n == r.length);
  f.reset();
  const std::string_view rest = std::string_view(wire).substr(r.length);
  const PolicyFrame r2 = f.next(rest);
  REQUIRE(r2.status == PolicyFrame::Status::complete);
  CHECK(rest.substr(0, r2.length) == "next=1\n\n");
}

TEST_CASE("policy request: attributes parsed as views, in order; typed errors") {
  const PolicyLimits lim{1000, 5, 40};
  {
    const std::string in = "request=smtpd_access_policy\nprotocol_state=RCPT\r\nsender=\nx=a=b\n\n";
    const PolicyParse p = parse_policy_request(in, lim);
    REQUIRE(p.ok());
    REQUIRE(p.request.attributes.size() == 4);
    CHECK(p.request.find("request") == "smtpd_access_policy");
    CHECK(p.request.find("protocol_state") == "RCPT");  // CR removed
    CHECK(p.request.find("sender") == "");               // present and empty
    CHECK(p.request.find("x") == "a=b");                 // value after the first "="
    CHECK_FALSE(p.request.find("recipient").has_value());
    CHECK_FALSE(p.request.find("Sender").has_value());   // names are exact
  }
  struct Bad {
    std::string in;
    PolicyError error;
    std::size_t line;
  };
  const std::vector<Bad> bad = {
      {"a=1\nnoequals\n\n", PolicyError::missing_equals, 2},
      {"=1\n\n", PolicyError::empty_name, 1},
      {"a b=1\n\n", PolicyError::bad_name, 1},
      {"a\r=1\n\n", PolicyError::bad_name, 1},
      {"\xc3\xa9=1\n\n", PolicyError::bad_name, 1},
      {std::string("a=1\0\n\n", 6), PolicyError::nul_byte, 1},
      {"a=1\nb=2\na=3\n\n", PolicyError::duplicate_attribute, 3},
      {"a=1\nb=2\nc=3\nd=4\ne=5\nf=6\n\n", PolicyError::too_many_attributes, 6},
      {"a=" + std::string(39, 'v') + "\n\n", PolicyError::attribute_too_long, 1},
      {"\rx=1\n\n", PolicyError::bad_name, 1},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.in);
    const PolicyParse p = parse_policy_request(b.in, lim);
    CHECK(to_string(p.error) == to_string(b.error));
    CHECK(p.line == b.line);
    CHECK(p.request.attributes.empty());
  }
  // At the bounds exactly: fine. Values may hold any byte but NUL (UTF-8, tabs, a lone CR).
  CHECK(parse_policy_request("a=" + std::string(38, 'v') + "\n\n", lim).ok());
  CHECK(parse_policy_request("a=" + std::string(37, 'v') + "\r\n\r\n", lim).ok());
  CHECK(parse_policy_request("a=1\nb=2\nc=3\nd=4\ne=5\n\n", lim).ok());
  CHECK(parse_policy_request("sender=j\xc3\xb6rg@example.com\nhelo_name=a\tb\rc\n\n", lim).ok());
  // Anything after the empty line is not part of the request.
  const PolicyParse p = parse_policy_request("a=1\n\nthis is not=looked at\n", lim);
  REQUIRE(p.ok());
  CHECK(p.request.attributes.size() == 1);
}

// --- the policy service's answers ----------------------------------------------------------------------

namespace {

std::string request(std::string_view state, std::string_view sender, std::string_view recipient,
                    std::string_view client = "192.0.2.7") {
  std::string r = "request=smtpd_access_policy\nprotocol_state=" + std::string(state) +
                  "\nprotocol_name=ESMTP\nhelo_name=mx.remote.example\nqueue_id=\nsender=" + std::string(sender) +
                  "\nrecipient=" + std::string(recipient) + "\nrecipient_count=0\nclient_address=" +
                  std::string(client) + "\nclient_name=mx.remote.example\ninstance=123.456.7\n\n";
  return r;
}

struct PolicyCase {
  std::string req;
  std::int64_t now;
  PolicyAnswer answer;
  std::string action;
};

void check_policy(const conf::Config& cfg, const std::vector<PolicyCase>& cases) {
  const auto keys = test::spec_ring();
  for (const PolicyCase& c : cases) {
    CAPTURE(c.req);
    const PolicyParse p = parse_policy_request(c.req, policy_limits(cfg));
    REQUIRE(p.ok());
    const PolicyDecision d = decide_policy(cfg, keys, relay::prvs_params(cfg), p.request, c.now);
    CHECK(d.error.empty());
    CHECK(to_string(d.answer) == to_string(c.answer));
    CHECK(d.action == c.action);
  }
}

std::string refused(crypto::Verdict v) {
  std::string r = relay::replies::bounce_refused(v);
  r.resize(r.size() - 2);
  return r;
}

}  // namespace

TEST_CASE("policy: bounces in enforce mode get the proxy's 550 text; valid tags DUNNO") {
  using crypto::Verdict;
  check_policy(config_from(""), {
      {request("RCPT", "", kValid), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", kBadSig), T1, PolicyAnswer::reject, "550 5.7.1 bounce refused: bad signature"},
      {request("RCPT", "", kValid), kExpiredNow, PolicyAnswer::reject, "550 5.7.1 bounce refused: tag expired"},
      {request("RCPT", "", kUnknown), T1, PolicyAnswer::reject, refused(Verdict::unknown_key)},
      {request("RCPT", "", kMalformed), T1, PolicyAnswer::reject, refused(Verdict::malformed)},
      {request("RCPT", "", kUntagged), T1, PolicyAnswer::reject, "550 5.7.1 bounce refused: address not tagged"},
      {request("rcpt", "", kUntagged), T1, PolicyAnswer::reject, refused(Verdict::untagged)},  // any case
      // Not our domain: Postfix decides.
      {request("RCPT", "", "someone@elsewhere.org"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", ""), T1, PolicyAnswer::dunno, "DUNNO"},
      // Exempt local parts (postmaster always), any case, also behind a broken tag.
      {request("RCPT", "", "postmaster@example.com"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", "Abuse@Example.com"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", "prvs=368291fcbc=postmaster@example.com"), T1, PolicyAnswer::dunno, "DUNNO"},
      // MAILER-DAEMON is a normal sender unless configured otherwise.
      {request("RCPT", "MAILER-DAEMON@remote.example", kUntagged), T1, PolicyAnswer::dunno, "DUNNO"},
  });
}

TEST_CASE("policy: only RCPT is decided; every other state gets DUNNO") {
  const auto cfg = config_from("");
  std::vector<PolicyCase> cases;
  for (const char* state : {"CONNECT", "EHLO", "HELO", "MAIL", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN", "BDAT"})
    cases.push_back({request(state, "", kUntagged), T1, PolicyAnswer::dunno, "DUNNO"});
  check_policy(cfg, cases);
}

TEST_CASE("policy: normal senders get DUNNO, except bad tags with bad_signature = reject") {
  for (const char* opt : {"", "[inbound]\nbad_signature = \"strip\"\n", "[inbound]\nbad_signature = \"keep\"\n"}) {
    CAPTURE(opt);
    check_policy(config_from(opt), {
        {request("RCPT", "bart@remote.example", kValid), T1, PolicyAnswer::dunno, "DUNNO"},
        {request("RCPT", "bart@remote.example", kValid), kExpiredNow, PolicyAnswer::dunno, "DUNNO"},
        {request("RCPT", "bart@remote.example", kBadSig), T1, PolicyAnswer::dunno, "DUNNO"},
        {request("RCPT", "bart@remote.example", kUnknown), T1, PolicyAnswer::dunno, "DUNNO"},
        {request("RCPT", "bart@remote.example", kMalformed), T1, PolicyAnswer::dunno, "DUNNO"},
        {request("RCPT", "bart@remote.example", kUntagged), T1, PolicyAnswer::dunno, "DUNNO"},
    });
  }
  check_policy(config_from("[inbound]\nbad_signature = \"reject\"\n"), {
      {request("RCPT", "bart@remote.example", kValid), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "bart@remote.example", kValid), kExpiredNow, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "bart@remote.example", kBadSig), T1, PolicyAnswer::reject,
       "550 5.7.1 tag does not verify: bad signature"},
      {request("RCPT", "bart@remote.example", kUnknown), T1, PolicyAnswer::reject,
       "550 5.7.1 tag does not verify: unknown key"},
      {request("RCPT", "bart@remote.example", kMalformed), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "bart@remote.example", kUntagged), T1, PolicyAnswer::dunno, "DUNNO"},
  });
}

TEST_CASE("policy: monitor mode prepends the verdict; per-domain modes; exemptions") {
  check_policy(config_from("[inbound]\nmode = \"monitor\"\n"), {
      {request("RCPT", "", kValid), T1, PolicyAnswer::prepend, "PREPEND X-BATV-Status: valid"},
      {request("RCPT", "", kBadSig), T1, PolicyAnswer::prepend, "PREPEND X-BATV-Status: bad_signature"},
      {request("RCPT", "", kValid), kExpiredNow, PolicyAnswer::prepend, "PREPEND X-BATV-Status: expired"},
      {request("RCPT", "", kUntagged), T1, PolicyAnswer::prepend, "PREPEND X-BATV-Status: untagged"},
      {request("RCPT", "", "postmaster@example.com"), T1, PolicyAnswer::dunno, "DUNNO"},  // exempt: no header
      {request("RCPT", "bart@remote.example", kBadSig), T1, PolicyAnswer::dunno, "DUNNO"},
  });
  // example.org monitored, example.com enforced, and a domain switched off.
  const auto cfg = test::config_from("inbound", "[\"example.com\", \"example.org\", \"example.net\"]",
                                     "[inbound.domain_mode]\n\"example.org\" = \"monitor\"\n\"example.net\" = \"off\"\n");
  check_policy(cfg, {
      {request("RCPT", "", "user@example.org"), T1, PolicyAnswer::prepend, "PREPEND X-BATV-Status: untagged"},
      {request("RCPT", "", kUntagged), T1, PolicyAnswer::reject, "550 5.7.1 bounce refused: address not tagged"},
      {request("RCPT", "", "user@example.net"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", "prvs=368291fcbc=user@example.net"), T1, PolicyAnswer::dunno, "DUNNO"},
  });
  // accept_untagged_from matches client_address (IPv4 and IPv6 as Postfix writes them).
  const auto ex = config_from("[inbound]\naccept_untagged_from = [\"192.0.2.0/24\", \"2001:db8::/32\"]\n");
  check_policy(ex, {
      {request("RCPT", "", kUntagged, "192.0.2.7"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", kBadSig, "2001:db8::25"), T1, PolicyAnswer::dunno, "DUNNO"},
      {request("RCPT", "", kUntagged, "198.51.100.1"), T1, PolicyAnswer::reject, refused(crypto::Verdict::untagged)},
      {request("RCPT", "", kUntagged, "not-an-ip"), T1, PolicyAnswer::reject, refused(crypto::Verdict::untagged)},
  });
  // MAILER-DAEMON counts as a bounce when configured.
  check_policy(config_from("[inbound]\nmailer_daemon_is_bounce = true\n"), {
      {request("RCPT", "MAILER-DAEMON@remote.example", kUntagged), T1, PolicyAnswer::reject,
       refused(crypto::Verdict::untagged)},
      {request("RCPT", "mailer-daemon@remote.example", kValid), T1, PolicyAnswer::dunno, "DUNNO"},
  });
}

TEST_CASE("policy: requests that break the protocol get no answer") {
  const auto cfg = config_from("");
  const auto keys = test::spec_ring();
  struct Case {
    std::string req;
    std::string_view error;
  };
  const std::vector<Case> cases = {
      {"protocol_state=RCPT\nsender=\nrecipient=user@example.com\n\n", "not_smtpd_access_policy"},
      {"request=junk\nprotocol_state=RCPT\nsender=\nrecipient=user@example.com\n\n", "not_smtpd_access_policy"},
      {"request=smtpd_access_policy\nsender=\nrecipient=user@example.com\n\n", "missing_protocol_state"},
      {"request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=user@example.com\n\n", "missing_sender"},
      {"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\n\n", "missing_recipient"},
      {"\n", "not_smtpd_access_policy"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.req);
    const PolicyParse p = parse_policy_request(c.req, policy_limits(cfg));
    REQUIRE(p.ok());
    CHECK(decide_policy(cfg, keys, relay::prvs_params(cfg), p.request, T1).error == c.error);
  }
  std::string out;
  append_policy_answer(out, "DUNNO");
  CHECK(out == "action=DUNNO\n\n");
}

// --- the socketmap's answers ---------------------------------------------------------------------------

namespace {
struct MapCase {
  std::string query;
  std::int64_t now;
  MapAnswer answer;
  std::string reply;
};
void check_map(const conf::Config& cfg, const std::vector<MapCase>& cases) {
  const auto keys = test::spec_ring();
  for (const MapCase& c : cases) {
    CAPTURE(c.query);
    const SocketmapDecision d = decide_socketmap(cfg, keys, relay::prvs_params(cfg), c.query, c.now);
    CHECK(to_string(d.answer) == to_string(c.answer));
    CHECK(d.reply == c.reply);
  }
}
std::string strip(std::string_view key) { return "strip " + std::string(key); }
}  // namespace

TEST_CASE("socketmap: the proxy's non-bounce rules; default bad_signature = strip") {
  check_map(config_from(""), {
      {strip(kValid), T1, MapAnswer::found, "OK user@example.com"},
      {strip(kValid), kExpiredNow, MapAnswer::found, "OK user@example.com"},
      {strip(kBadSig), T1, MapAnswer::found, "OK user@example.com"},
      {strip(kUnknown), T1, MapAnswer::found, "OK user@example.com"},
      {strip(kMalformed), T1, MapAnswer::notfound, "NOTFOUND "},
      {strip(kUntagged), T1, MapAnswer::notfound, "NOTFOUND "},
      {strip("prvs=368291fcbb=user@elsewhere.org"), T1, MapAnswer::notfound, "NOTFOUND "},
      {strip("prvs=368291fcbb=user@EXAMPLE.COM"), T1, MapAnswer::found, "OK user@EXAMPLE.COM"},
      {strip(""), T1, MapAnswer::notfound, "NOTFOUND "},
      {strip("no at sign"), T1, MapAnswer::notfound, "NOTFOUND "},
      // A tag whose stripped address is no mailbox is malformed, as in the proxy.
      {strip("prvs=368291fcbb=.x@example.com"), T1, MapAnswer::notfound, "NOTFOUND "},
  });
}

TEST_CASE("socketmap: bad tags with keep or reject are NOTFOUND; mode off strips only good tags") {
  for (const char* opt : {"[inbound]\nbad_signature = \"keep\"\n", "[inbound]\nbad_signature = \"reject\"\n"}) {
    CAPTURE(opt);
    check_map(config_from(opt), {
        {strip(kValid), T1, MapAnswer::found, "OK user@example.com"},
        {strip(kValid), kExpiredNow, MapAnswer::found, "OK user@example.com"},
        {strip(kBadSig), T1, MapAnswer::notfound, "NOTFOUND "},
        {strip(kUnknown), T1, MapAnswer::notfound, "NOTFOUND "},
    });
  }
  // Monitor mode changes nothing for the map (it is about bounces, decided at RCPT).
  check_map(config_from("[inbound]\nmode = \"monitor\"\n"), {
      {strip(kValid), T1, MapAnswer::found, "OK user@example.com"},
      {strip(kBadSig), T1, MapAnswer::found, "OK user@example.com"},
  });
  check_map(config_from("[inbound]\nmode = \"off\"\n"), {
      {strip(kValid), T1, MapAnswer::found, "OK user@example.com"},
      {strip(kValid), kExpiredNow, MapAnswer::found, "OK user@example.com"},
      {strip(kBadSig), T1, MapAnswer::notfound, "NOTFOUND "},
  });
}

TEST_CASE("socketmap: unknown map names and malformed queries are PERM") {
  check_map(config_from(""), {
      {"other " + std::string(kValid), T1, MapAnswer::perm, "PERM unknown map name"},
      {"Strip " + std::string(kValid), T1, MapAnswer::perm, "PERM unknown map name"},
      {" " + std::string(kValid), T1, MapAnswer::perm, "PERM unknown map name"},
      {"strip", T1, MapAnswer::perm, "PERM malformed query"},
      {"", T1, MapAnswer::perm, "PERM malformed query"},
      {std::string(kValid), T1, MapAnswer::perm, "PERM malformed query"},
  });
}
