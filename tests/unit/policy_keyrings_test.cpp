// relay/policy, relay::Keyrings ([[domain_keys]]): the one selection rule, and each role signing
// and verifying with the ring of the address's domain: outbound policy, inbound policy, milter,
// policy service, socketmap. The loader's checks of [[domain_keys]]: config_domain_keys_test.cpp.
//
// Rings of these tests: default = spec key 3 "secretkey"; ring A (a.example, www.a.example) =
// key 1 "ring-a-secret"; ring B (b.example) = key 2 "ring-b-secret" signing plus key 1
// "ring-b-old" verify-only, so a tag made with ring A's key 1 is a bad_signature at b.example
// (same id, other secret) and a tag made with ring B's key 2 is unknown_key at a.example.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "conf/config.hpp"
#include "conf/limits.hpp"
#include "crypto/prvs.hpp"
#include "relay/milter/codec.hpp"
#include "relay/milter/handler.hpp"
#include "relay/policy.hpp"
#include "relay/postfix/policy_request.hpp"
#include "relay/postfix/policy_service.hpp"
#include "relay/postfix/socketmap.hpp"
#include "relay/runtime.hpp"
#include "tests/unit/fixtures.hpp"

using namespace batv;
using test::T1;

namespace {

std::string all_errors(const conf::LoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += conf::format(e) + "\n";
  return s;
}

crypto::Keyring ring_of(std::vector<std::pair<int, std::string>> keys) {
  std::vector<crypto::KeyMaterial> m;
  for (std::size_t i = 0; i < keys.size(); ++i)
    m.push_back({keys[i].first, i == 0, crypto::Secret(std::string_view(keys[i].second))});
  std::string err;
  auto r = crypto::Keyring::build(m, err);
  REQUIRE_MESSAGE(r.has_value(), err);
  return std::move(*r);
}

relay::Keyrings three_rings() {
  std::vector<relay::Ring> rings;
  rings.push_back({"default", {}, "/k/default.toml", test::spec_ring(), 1, {}});
  rings.push_back({"a.example", {"a.example", "www.a.example"}, "/k/a.toml", ring_of({{1, "ring-a-secret"}}), 1, {}});
  rings.push_back({"b.example", {"b.example"}, "/k/b.toml", ring_of({{2, "ring-b-secret"}, {1, "ring-b-old"}}), 2, {}});
  return relay::Keyrings(std::move(rings));
}

// The tag ring `ring` makes for `address` at T1.
std::string tag_with(const crypto::Keyring& ring, const std::string& address) {
  const auto s = crypto::sign(ring, address, T1);
  REQUIRE(s.tagged.has_value());
  return *s.tagged;
}

}  // namespace

// --- the selection rule ----------------------------------------------------------------------------------

TEST_CASE("Keyrings: the listing ring by exact domain, any case; everything else the default ring") {
  const relay::Keyrings k = three_rings();
  CHECK(k.rings().size() == 3);
  CHECK(k.default_ring().name == "default");
  struct Case {
    std::string address;
    std::string ring;
  };
  const Case cases[] = {
      {"user@a.example", "a.example"},
      {"user@A.EXAMPLE", "a.example"},
      {"user@www.a.example", "a.example"},
      {"prvs=1123456789=user@b.example", "b.example"},  // a tagged address: its domain's ring
      {"\"a@b.example\"@a.example", "a.example"},      // the domain follows the last '@'
      {"user@b.example", "b.example"},
      {"user@mail.b.example", "default"},  // no suffix match
      {"user@example", "default"},
      {"user@example.com", "default"},
      {"user@", "default"},
      {"no-at-sign", "default"},
      {"user@" + std::string(300, 'a'), "default"},  // longer than any domain
  };
  for (const Case& c : cases) {
    CAPTURE(c.address);
    CHECK(k.for_address(c.address).name == c.ring);
  }
  CHECK(k.for_domain("B.Example").name == "b.example");
  CHECK(k.for_domain("").name == "default");
  // A single ring answers for every domain.
  const relay::Keyrings one(test::spec_ring());
  CHECK(&one.for_address("user@a.example") == &one.default_ring());
}

// --- the roles ---------------------------------------------------------------------------------------------

TEST_CASE("decide_sender / decide_recipient: each domain signs and verifies with its own ring only") {
  const conf::Config cfg = test::config_from(
      "outbound", "[\"example.com\", \"a.example\", \"www.a.example\", \"b.example\"]", "");
  const relay::Keyrings k = three_rings();
  const auto& ring_a = k.rings()[1].keyring;
  const auto& ring_b = k.rings()[2].keyring;
  const auto params = relay::prvs_params(cfg);

  const auto sa = relay::decide_sender(cfg, k, params, "user@a.example", "x@elsewhere.org", T1);
  REQUIRE(sa.sign);
  CHECK(sa.key_id == 1);
  CHECK(sa.upstream_from == tag_with(ring_a, "user@a.example"));
  const auto sb = relay::decide_sender(cfg, k, params, "user@b.example", "x@elsewhere.org", T1);
  REQUIRE(sb.sign);
  CHECK(sb.key_id == 2);
  CHECK(sb.upstream_from == tag_with(ring_b, "user@b.example"));
  const auto sd = relay::decide_sender(cfg, k, params, "user@example.com", "x@elsewhere.org", T1);
  CHECK(sd.key_id == 3);
  CHECK(sd.upstream_from == "prvs=368291fcbb=user@example.com");  // the spec's tag: the default ring

  struct Case {
    std::string rcpt;
    crypto::Verdict verdict;
    relay::RcptAction action;
  };
  const Case cases[] = {
      {tag_with(ring_a, "user@a.example"), crypto::Verdict::valid, relay::RcptAction::accepted},
      {tag_with(ring_b, "user@b.example"), crypto::Verdict::valid, relay::RcptAction::accepted},
      // Ring A's key 1 at b.example: ring B's key 1 has another secret.
      {tag_with(ring_a, "user@b.example"), crypto::Verdict::bad_signature, relay::RcptAction::refused},
      // Ring B's key 2 at a.example: ring A has no key 2.
      {tag_with(ring_b, "user@a.example"), crypto::Verdict::unknown_key, relay::RcptAction::refused},
      // The default ring's tag at a customer domain, and a customer's tag at a default domain.
      {"prvs=368291fcbb=user@a.example", crypto::Verdict::unknown_key, relay::RcptAction::refused},
      {tag_with(ring_a, "user@example.com"), crypto::Verdict::unknown_key, relay::RcptAction::refused},
      {"prvs=368291fcbb=user@example.com", crypto::Verdict::valid, relay::RcptAction::accepted},
  };
  for (const Case& c : cases) {
    CAPTURE(c.rcpt);
    const auto d = relay::decide_recipient(cfg, k, params, /*bounce=*/true, false, c.rcpt, T1);
    CHECK(crypto::to_string(d.verdict) == crypto::to_string(c.verdict));
    CHECK(relay::to_string(d.action) == relay::to_string(c.action));
  }
}

TEST_CASE("milter: signs each sender with its domain's ring; verify mode refuses another ring's tag") {
  const std::string text =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\", \"a.example\", \"b.example\"]\n"
      "[[listener]]\nrole = \"milter\"\nlisten = \"127.0.0.1:0\"\nverify = true\n";
  auto r = conf::load_config_string(text, "t.toml", "");
  REQUIRE_MESSAGE(r.config.has_value(), all_errors(r));
  const auto params = relay::prvs_params(*r.config);
  auto rt = std::make_shared<const relay::Runtime>(
      relay::Runtime{std::move(*r.config), three_rings(), params, "mx.test", {}, {}});
  const auto& ring_a = rt->keys.rings()[1].keyring;
  const auto& ring_b = rt->keys.rings()[2].keyring;

  auto str = [](std::initializer_list<std::string_view> parts) {
    std::string d;
    for (auto p : parts) d.append(p).push_back('\0');
    return d;
  };
  auto be32 = [](std::uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  struct Driver {
    relay::milter::Handler h;
    std::vector<relay::milter::Reply> send(char cmd, const std::string& data = {}) {
      const std::string wire = relay::milter::encode(cmd, data);
      auto f = relay::milter::parse_packet(wire, 65536);
      REQUIRE(f.ok);
      std::string out;
      h.on_packet(f.packet, out);
      return relay::milter::split_replies(out);
    }
  };
  auto start = [&](std::string_view client) {
    auto d = std::make_unique<Driver>(Driver{relay::milter::Handler(rt, 0, "t", [] { return T1; })});
    REQUIRE(d->send('O', be32(6) + be32(0x1ff) + be32(0x1fffff)).at(0).cmd == 'O');
    d->send('D', "M" + str({"{client_addr}", client, "{auth_authen}", "", "{daemon_name}", "smtpd",
                            "{client_name}", "c.example"}));
    return d;
  };
  for (const auto& [sender, ring] : {std::pair{"user@a.example", &ring_a}, std::pair{"user@b.example", &ring_b}}) {
    CAPTURE(sender);
    auto d = start("127.0.0.1");
    d->send('M', str({std::string("<") + sender + ">"}));
    CHECK(d->send('R', str({"<x@elsewhere.org>"})).at(0).cmd == 'c');
    auto e = d->send('E');
    REQUIRE(e.size() == 2);
    CHECK(e[0].cmd == 'e');
    CHECK(e[0].data == str({"<" + tag_with(*ring, sender) + ">"}));
  }
  // A bounce to b.example carrying a tag made with ring A's secret: 550 at RCPT.
  auto d = start("192.0.2.9");
  d->send('M', str({"<>"}));
  auto bad = d->send('R', str({"<" + tag_with(ring_a, "user@b.example") + ">"}));
  CHECK(bad.at(0).cmd == 'y');
  CHECK(bad.at(0).data.find("550 5.7.1") == 0);
  CHECK(d->send('R', str({"<" + tag_with(ring_b, "user@b.example") + ">"})).at(0).cmd == 'c');
}

TEST_CASE("policy service and socketmap: the recipient's ring decides") {
  using namespace relay::postfix;
  const conf::Config cfg = test::config_from("inbound", "[\"example.com\", \"a.example\", \"b.example\"]", "");
  const relay::Keyrings k = three_rings();
  const auto& ring_a = k.rings()[1].keyring;
  const auto& ring_b = k.rings()[2].keyring;
  const auto params = relay::prvs_params(cfg);
  auto policy = [&](const std::string& rcpt) {
    const std::string req = "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nsender=\n"
                            "recipient=" + rcpt + "\nclient_address=192.0.2.7\n\n";
    const PolicyParse p = parse_policy_request(req, policy_limits(cfg));
    REQUIRE(p.ok());
    return decide_policy(cfg, k, params, p.request, T1);
  };
  CHECK(policy(tag_with(ring_b, "user@b.example")).answer == PolicyAnswer::dunno);
  const PolicyDecision forged = policy(tag_with(ring_a, "user@b.example"));
  CHECK(forged.answer == PolicyAnswer::reject);
  CHECK(forged.recipient_decision.verdict == crypto::Verdict::bad_signature);
  CHECK(policy(tag_with(ring_a, "user@a.example")).answer == PolicyAnswer::dunno);

  const std::string a_tag = tag_with(ring_a, "user@a.example");
  const SocketmapDecision good = decide_socketmap(cfg, k, params, "strip " + a_tag, T1);
  CHECK(good.answer == MapAnswer::found);
  CHECK(good.reply == "OK user@a.example");
  CHECK(good.recipient_decision.verdict == crypto::Verdict::valid);
  const SocketmapDecision other = decide_socketmap(cfg, k, params, "strip " + tag_with(ring_b, "user@a.example"), T1);
  CHECK(other.recipient_decision.verdict == crypto::Verdict::unknown_key);
}
