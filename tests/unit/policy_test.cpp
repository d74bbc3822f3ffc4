// The outbound signing decision: every "not signed" reason, in order, and the tag it makes.
#include <doctest/doctest.h>

#include "conf/config.hpp"
#include "tests/unit/fixtures.hpp"
#include "relay/policy.hpp"

using namespace batv;

namespace {

conf::Config config_from(const std::string& extra) {
  return test::config_from("outbound", "[\"example.com\", \"Example.NET\"]", extra);
}
crypto::Keyring ring() { return test::spec_ring(); }
using test::T1;

}  // namespace

TEST_CASE("decide_sender: signs our domains with the spec's tag") {
  const auto cfg = config_from("");
  const auto keys = ring();
  const auto d = relay::decide_sender(cfg, keys, relay::prvs_params(cfg), "user@example.com", "x@elsewhere.org", T1);
  CHECK(d.sign);
  CHECK(d.key_id == 3);
  CHECK(d.upstream_from == "prvs=368291fcbb=user@example.com");
  // Domain match is case-insensitive, both ways.
  CHECK(relay::decide_sender(cfg, keys, relay::prvs_params(cfg), "user@EXAMPLE.com", "x@y", T1).upstream_from ==
        "prvs=368291fcbb=user@example.com");
  CHECK(relay::decide_sender(cfg, keys, relay::prvs_params(cfg), "a@example.net", "x@y", T1).sign);
}

TEST_CASE("decide_sender: each reason not to sign") {
  const auto cfg = config_from(
      "[signing]\nexempt_senders = [\"noreply@example.com\", \"@example.net\"]\n"
      "exempt_destinations = [\"list@lists.example.org\", \"@checks-sender.example\"]\n");
  const auto keys = ring();
  const auto p = relay::prvs_params(cfg);
  struct Case {
    const char* sender;
    const char* rcpt;
    crypto::NoSignReason why;
  };
  const Case cases[] = {
      {"", "x@y", crypto::NoSignReason::null_sender},
      {"nodomain", "x@y", crypto::NoSignReason::malformed_address},
      {"user@other.org", "x@y", crypto::NoSignReason::not_our_domain},
      {"user@sub.example.com", "x@y", crypto::NoSignReason::not_our_domain},
      {"noreply@example.com", "x@y", crypto::NoSignReason::exempt_sender},
      {"anyone@example.net", "x@y", crypto::NoSignReason::exempt_sender},
      {"user@example.com", "list@lists.example.org", crypto::NoSignReason::exempt_destination},
      {"user@example.com", "bob@CHECKS-SENDER.example", crypto::NoSignReason::exempt_destination},
      {"prvs=368291fcbb=user@example.com", "x@y", crypto::NoSignReason::already_tagged},
      {"SRS0=a=b=c=d@example.com", "x@y", crypto::NoSignReason::already_tagged},
      {"\"a b\"@example.com", "x@y", crypto::NoSignReason::quoted_local_part},
      {"a234567890123456789012345678901234567890123456789@example.com", "x@y", crypto::NoSignReason::too_long},
  };
  for (const Case& c : cases) {
    CAPTURE(c.sender);
    const auto d = relay::decide_sender(cfg, keys, p, c.sender, c.rcpt, T1);
    CHECK_FALSE(d.sign);
    CHECK(crypto::to_string(d.reason) == crypto::to_string(c.why));
    CHECK(d.upstream_from == c.sender);  // passed on untouched
  }
  // NoReply with another case is a different local part: signed.
  CHECK(relay::decide_sender(cfg, keys, p, "NoReply@example.com", "x@y", T1).sign);
}
