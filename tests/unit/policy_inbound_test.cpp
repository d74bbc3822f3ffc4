// relay/policy, inbound side: recipient decisions (every verdict x bounce/normal x mode x
// exemption), bounce detection and the monitor verdict order. The outbound side (decide_sender)
// is policy_test.cpp.
#include <doctest/doctest.h>

#include "conf/config.hpp"
#include "tests/unit/fixtures.hpp"
#include "relay/policy.hpp"

using namespace batv;
using relay::RcptAction;

namespace {

conf::Config config_from(const std::string& extra) {
  return test::config_from("inbound", "[\"example.com\", \"example.org\"]", extra);
}
crypto::Keyring ring() { return test::spec_ring(); }
using test::T1;
const char* const kValid = "prvs=368291fcbb=user@example.com";
const char* const kBadSig = "prvs=368291fcbc=user@example.com";
const char* const kUnknown = "prvs=468291fcbb=user@example.com";
const char* const kMalformed = "prvs=36829=user@example.com";
const char* const kUntagged = "user@example.com";
constexpr std::int64_t kExpiredNow = 1700611200;  // the day after the tag's last day

struct Expect {
  const char* rcpt;
  std::int64_t now;
  bool bounce;
  RcptAction action;
  const char* upstream;  // "" when refused
  const char* reply;     // "" unless refused
};

void check_all(const conf::Config& cfg, bool client_exempt, std::initializer_list<Expect> cases) {
  const auto keys = ring();
  for (const Expect& e : cases) {
    CAPTURE(e.rcpt);
    CAPTURE(e.bounce);
    const auto d = relay::decide_recipient(cfg, keys, relay::prvs_params(cfg), e.bounce, client_exempt, e.rcpt, e.now);
    CHECK(relay::to_string(d.action) == relay::to_string(e.action));
    if (e.action == RcptAction::refused) CHECK(d.reply == std::string(e.reply) + "\r\n");
    else CHECK(d.upstream == e.upstream);
  }
}

}  // namespace

TEST_CASE("bounces in enforce mode: only a valid tag passes, stripped") {
  check_all(config_from(""), false,
            {
                {kValid, T1, true, RcptAction::accepted, "user@example.com", ""},
                {kBadSig, T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: bad signature"},
                {kValid, kExpiredNow, true, RcptAction::refused, "", "550 5.7.1 bounce refused: tag expired"},
                {kUnknown, T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: unknown key"},
                {kMalformed, T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: malformed tag"},
                {kUntagged, T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: address not tagged"},
                // Not one of our domains: the MX decides.
                {"someone@elsewhere.org", T1, true, RcptAction::passed, "someone@elsewhere.org", ""},
                {"prvs=368291fcbb=user@elsewhere.org", T1, true, RcptAction::passed, "prvs=368291fcbb=user@elsewhere.org", ""},
                // Exempt local parts, any case; postmaster always.
                {"postmaster@example.com", T1, true, RcptAction::exempt, "postmaster@example.com", ""},
                {"Abuse@Example.com", T1, true, RcptAction::exempt, "Abuse@Example.com", ""},
                // An exempt local part behind a broken tag still gets its mail, untagged.
                {"prvs=368291fcbc=postmaster@example.com", T1, true, RcptAction::exempt, "postmaster@example.com", ""},
            });
}

TEST_CASE("normal senders: valid and expired tags stripped; bad ones per policy") {
  check_all(config_from(""), false,
            {
                {kValid, T1, false, RcptAction::stripped, "user@example.com", ""},
                {kValid, kExpiredNow, false, RcptAction::stripped, "user@example.com", ""},
                {kBadSig, T1, false, RcptAction::stripped, "user@example.com", ""},
                {kUnknown, T1, false, RcptAction::stripped, "user@example.com", ""},
                {kMalformed, T1, false, RcptAction::passed, kMalformed, ""},
                {kUntagged, T1, false, RcptAction::passed, kUntagged, ""},
            });
  check_all(config_from("[inbound]\nbad_signature = \"keep\"\n"), false,
            {
                {kBadSig, T1, false, RcptAction::kept, kBadSig, ""},
                {kValid, T1, false, RcptAction::stripped, "user@example.com", ""},
            });
  check_all(config_from("[inbound]\nbad_signature = \"reject\"\n"), false,
            {
                {kBadSig, T1, false, RcptAction::refused, "", "550 5.7.1 tag does not verify: bad signature"},
                {kUnknown, T1, false, RcptAction::refused, "", "550 5.7.1 tag does not verify: unknown key"},
                {kValid, kExpiredNow, false, RcptAction::stripped, "user@example.com", ""},
            });
}

TEST_CASE("a tag that would strip to an invalid address counts as malformed (found by fuzz_smtp_path)") {
  // "prvs=...=.user" is a valid Dot-string, ".user" is not: the relay must not pass it on.
  const auto tagged = crypto::sign(ring(), ".user@example.com", T1);  // as Exim would sign it
  REQUIRE(tagged.tagged.has_value());
  const std::string bad = "prvs=368291fcbc=.user@example.com";
  check_all(config_from(""), false,
            {
                {tagged.tagged->c_str(), T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: malformed tag"},
                {tagged.tagged->c_str(), T1, false, RcptAction::passed, tagged.tagged->c_str(), ""},
                {bad.c_str(), T1, false, RcptAction::passed, bad.c_str(), ""},
            });
}

TEST_CASE("exempt client networks, monitor, off and per-domain modes") {
  check_all(config_from(""), true,
            {
                {kUntagged, T1, true, RcptAction::exempt, kUntagged, ""},
                {kBadSig, T1, true, RcptAction::exempt, "user@example.com", ""},
                {kValid, T1, true, RcptAction::accepted, "user@example.com", ""},
            });
  check_all(config_from("[inbound]\nmode = \"monitor\"\n"), false,
            {
                {kUntagged, T1, true, RcptAction::monitored, kUntagged, ""},
                {kBadSig, T1, true, RcptAction::monitored, "user@example.com", ""},
                {kValid, T1, true, RcptAction::accepted, "user@example.com", ""},
            });
  check_all(config_from("[inbound]\nmode = \"off\"\n"), false,
            {
                {kUntagged, T1, true, RcptAction::passed, kUntagged, ""},
                {kBadSig, T1, true, RcptAction::passed, kBadSig, ""},
                {kValid, T1, true, RcptAction::stripped, "user@example.com", ""},
            });
  check_all(config_from("[inbound.domain_mode]\n\"Example.ORG\" = \"monitor\"\n"), false,
            {
                {"lisa@example.org", T1, true, RcptAction::monitored, "lisa@example.org", ""},
                {kUntagged, T1, true, RcptAction::refused, "", "550 5.7.1 bounce refused: address not tagged"},
            });
}

TEST_CASE("domain_mode must name a verify domain and a known mode") {
  auto r = conf::load_config_string(
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n[[listener]]\nrole = \"inbound\"\n"
      "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n[inbound.domain_mode]\n\"other.org\" = \"monitor\"\n"
      "\"example.com\" = \"loud\"\n",
      "t.toml", "");
  REQUIRE(r.errors.size() == 2);
  CHECK(conf::format(r.errors[0]).find("other.org is not in domains.verify") != std::string::npos);
  CHECK(conf::format(r.errors[1]).find("inbound.domain_mode.example.com") != std::string::npos);
}

TEST_CASE("bounce detection and the monitor verdict order") {
  auto cfg = config_from("");
  CHECK(relay::is_bounce(cfg, ""));
  CHECK_FALSE(relay::is_bounce(cfg, "MAILER-DAEMON@remote.example"));
  cfg = config_from("[inbound]\nmailer_daemon_is_bounce = true\n");
  CHECK(relay::is_bounce(cfg, "mailer-daemon@remote.example"));
  CHECK_FALSE(relay::is_bounce(cfg, "mailer-daemon-x@remote.example"));
  using V = crypto::Verdict;
  CHECK(relay::worse(V::valid, V::untagged) == V::untagged);
  CHECK(relay::worse(V::expired, V::untagged) == V::expired);
  CHECK(relay::worse(V::malformed, V::expired) == V::malformed);
  CHECK(relay::worse(V::unknown_key, V::bad_signature) == V::bad_signature);
}
