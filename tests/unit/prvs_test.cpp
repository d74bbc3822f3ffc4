// prvs sign/verify: the spec's Exim vectors (tests/data/prvs_*.tsv) and edge cases.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "tests/unit/tsv.hpp"

using namespace batv::crypto;

namespace {

Keyring ring_of(std::vector<std::pair<int, std::string>> keys, int signer) {
  std::vector<KeyMaterial> mats;
  for (auto& [id, secret] : keys) mats.push_back({id, id == signer, Secret(std::string_view(secret))});
  std::string err;
  auto ring = Keyring::build(mats, err);
  REQUIRE_MESSAGE(ring.has_value(), err);
  return std::move(*ring);
}

constexpr std::int64_t T1 = 1700000000;  // 2023-11-14 22:13:20 UTC, day 19675, DDD 682

}  // namespace

TEST_CASE("sign: spec vectors") {
  const auto rows = batv::test::read_tsv("tests/data/prvs_sign.tsv");
  REQUIRE(rows.size() >= 20);
  for (const auto& r : rows) {
    REQUIRE(r.fields.size() == 5);
    CAPTURE(r.line);
    const int id = std::stoi(r.fields[1]);
    const Keyring ring = ring_of({{id, r.fields[0]}}, id);
    std::string addr = r.fields[3] == "<>" ? "" : r.fields[3];
    const SignResult s = sign(ring, addr, std::stoll(r.fields[2]));
    const std::string& want = r.fields[4];
    if (want.rfind("not_signed:", 0) == 0) {
      CHECK_FALSE(s.tagged.has_value());
      CHECK(to_string(s.reason) == want.substr(11));
    } else {
      REQUIRE(s.tagged.has_value());
      CHECK(*s.tagged == want);
      CHECK(s.key_id == id);
    }
  }
}

TEST_CASE("verify: spec vectors") {
  const Keyring ring = ring_of({{3, "secretkey"}}, 3);
  const auto rows = batv::test::read_tsv("tests/data/prvs_verify.tsv");
  REQUIRE(rows.size() >= 40);
  for (const auto& r : rows) {
    REQUIRE(r.fields.size() == 4);
    CAPTURE(r.line);
    CAPTURE(r.fields[1]);
    const VerifyResult v = verify(ring, r.fields[1], std::stoll(r.fields[0]));
    CHECK(to_string(v.verdict) == r.fields[2]);
    CHECK((v.original.empty() ? std::string("-") : v.original) == r.fields[3]);
  }
}

TEST_CASE("sign then verify round trip over every key id and the wrap") {
  for (int id = 0; id <= 9; ++id) {
    const Keyring ring = ring_of({{id, "k" + std::to_string(id)}}, id);
    for (std::int64_t day = 19985; day <= 20010; ++day) {
      const std::int64_t now = day * 86400 + 12345;
      const auto s = sign(ring, "Some.One+x@Example.ORG", now);
      REQUIRE(s.tagged);
      CHECK(s.tagged->substr(0, 6) == "prvs=" + std::to_string(id));
      CHECK(s.tagged->ends_with("=Some.One+x@example.org"));
      // Valid on every day from signing through the expiry day, expired the day after.
      for (int later = 0; later <= 7; ++later) {
        const auto v = verify(ring, *s.tagged, now + later * 86400);
        CHECK(v.verdict == Verdict::valid);
        CHECK(v.original == "Some.One+x@example.org");
      }
      CHECK(verify(ring, *s.tagged, now + 8 * 86400).verdict == Verdict::expired);
      CHECK(verify(ring, *s.tagged, now - 86400).verdict == Verdict::expired);
    }
  }
}

TEST_CASE("expiry window is the modular distance, inclusive, with no 999 loophole") {
  // DDD 999 never expires in Exim; here it is valid only for the 7 days before and on day 999.
  static_assert((19999 % 1000) == 999);
  CHECK(ddd_in_window(999, 19999LL * 86400, 7));
  CHECK(ddd_in_window(999, 19992LL * 86400, 7));
  CHECK_FALSE(ddd_in_window(999, 19991LL * 86400, 7));
  CHECK_FALSE(ddd_in_window(999, 20000LL * 86400, 7));
  CHECK_FALSE(ddd_in_window(999, 20325LL * 86400, 7));  // 325 days later: Exim says valid
  CHECK(ddd_in_window(0, 19999LL * 86400, 7));           // across the wrap
  CHECK(ddd_in_window(6, 19999LL * 86400, 7));
  CHECK_FALSE(ddd_in_window(7, 19999LL * 86400, 7));
  CHECK(ddd_in_window(30, 0, 30));
  CHECK_FALSE(ddd_in_window(31, 0, 30));
}

TEST_CASE("day arithmetic floors negative times") {
  CHECK(day_number(0) == 0);
  CHECK(day_number(86399) == 0);
  CHECK(day_number(86400) == 1);
  CHECK(day_number(-1) == -1);
  CHECK(day_number(-86400) == -1);
  CHECK(day_number(-86401) == -2);
  CHECK(expiry_ddd(-1, 7) == 6);
  CHECK(expiry_ddd(-86400LL * 10, 7) == 997);
  CHECK(expiry_ddd(T1, 7) == 682);
}

TEST_CASE("a tag verifies only under its own key; other keys are unknown") {
  const Keyring ring = ring_of({{1, "one"}, {2, "two"}}, 2);
  const auto s = sign(ring, "a@example.com", T1);
  REQUIRE(s.tagged);
  CHECK(s.key_id == 2);
  CHECK(verify(ring, *s.tagged, T1).verdict == Verdict::valid);
  std::string as_one = *s.tagged;
  as_one[5] = '1';  // same signature under key 1: the key id is hashed
  CHECK(verify(ring, as_one, T1).verdict == Verdict::bad_signature);
  std::string as_five = *s.tagged;
  as_five[5] = '5';
  const auto v = verify(ring, as_five, T1);
  CHECK(v.verdict == Verdict::unknown_key);
  CHECK(v.key_id == 5);
}

TEST_CASE("every single-character change of the signature is rejected") {
  const Keyring ring = ring_of({{3, "secretkey"}}, 3);
  const std::string good = "prvs=368291fcbb=user@example.com";
  for (std::size_t pos = 9; pos < 15; ++pos) {
    for (char c : std::string("0123456789abcdef")) {
      std::string t = good;
      if (t[pos] == c) continue;
      t[pos] = c;
      CAPTURE(t);
      CHECK(verify(ring, t, T1).verdict == Verdict::bad_signature);
    }
  }
}

TEST_CASE("hash mode lowercase-local survives case smashing and still reads exact tags") {
  const Keyring ring = ring_of({{1, "secretkey"}}, 1);
  PrvsParams lc;
  lc.hash = HashMode::lowercase_local;
  const auto s = sign(ring, "John.Doe@Example.COM", T1, lc);
  REQUIRE(s.tagged);
  // The local part's case is kept in the address but not hashed: the HMAC is the one of
  // john.doe@example.com (spec vector prvs=1682d14978).
  CHECK(*s.tagged == "prvs=1682d14978=John.Doe@example.com");
  CHECK(verify(ring, "prvs=1682d14978=JOHN.DOE@EXAMPLE.COM", T1, lc).verdict == Verdict::valid);
  CHECK(verify(ring, "prvs=1682d14978=JOHN.DOE@EXAMPLE.COM", T1).verdict ==
        Verdict::bad_signature);
  // A tag made in exact mode still verifies after switching to lowercase-local.
  const auto exact = sign(ring, "John.Doe@example.com", T1);
  REQUIRE(exact.tagged);
  CHECK(*exact.tagged == "prvs=1682e2342c=John.Doe@example.com");
  CHECK(verify(ring, *exact.tagged, T1, lc).verdict == Verdict::valid);
}

TEST_CASE("lifetime is a parameter") {
  const Keyring ring = ring_of({{3, "secretkey"}}, 3);
  PrvsParams p30;
  p30.lifetime_days = 30;
  const auto s = sign(ring, "user@example.com", T1, p30);
  REQUIRE(s.tagged);
  CHECK(s.tagged->substr(5, 4) == "3705");  // 19675 + 30 = 19705
  CHECK(verify(ring, *s.tagged, T1 + 30 * 86400, p30).verdict == Verdict::valid);
  CHECK(verify(ring, *s.tagged, T1 + 31 * 86400, p30).verdict == Verdict::expired);
  // The same tag checked with a 7-day window is out of range: expired, not valid forever.
  CHECK(verify(ring, *s.tagged, T1, PrvsParams{}).verdict == Verdict::expired);
}

TEST_CASE("tag meta-syntax detection") {
  CHECK(has_tag_meta_syntax("prvs=1234567890=x"));
  CHECK(has_tag_meta_syntax("SRS0=a=b=c=d"));
  CHECK(has_tag_meta_syntax("btv1==x"));
  CHECK(has_tag_meta_syntax("my-tag=v="));
  CHECK_FALSE(has_tag_meta_syntax("user=x"));
  CHECK_FALSE(has_tag_meta_syntax("=a=b"));
  CHECK_FALSE(has_tag_meta_syntax("a.b=c=d"));  // "." is not a tag-type character
  CHECK_FALSE(has_tag_meta_syntax("plain"));
}

TEST_CASE("tagged path length: 254 octets is the most a path may carry") {
  const Keyring ring = ring_of({{3, "secretkey"}}, 3);
  const std::string local = "u";
  std::string domain(254 - 16 - 2, 'd');  // 16 + 1 + 1 + 236 = 254
  CHECK(sign(ring, local + "@" + domain, T1).tagged.has_value());
  domain += 'd';
  const auto s = sign(ring, local + "@" + domain, T1);
  CHECK_FALSE(s.tagged.has_value());
  CHECK(s.reason == NoSignReason::too_long);
}

TEST_CASE("parse_tag exposes the parts") {
  const auto p = parse_tag("PRVS=9123abcDEF=local.part@Dom.example");
  REQUIRE(p.status == ParseStatus::ok);
  CHECK(p.tag.key_id == 9);
  CHECK(p.tag.expiry_day == 123);
  CHECK(p.tag.signature == "abcDEF");
  CHECK(p.tag.local == "local.part");
  CHECK(p.tag.domain == "Dom.example");
  // Splits at the last "@": a quoted local part may contain one.
  const auto q = parse_tag("prvs=9123abcdef=\"a@b\"@example.com");
  REQUIRE(q.status == ParseStatus::ok);
  CHECK(q.tag.local == "\"a@b\"");
}

TEST_CASE("sign follows a staged key's activation time; verify takes both keys throughout") {
  std::vector<KeyMaterial> mats;
  mats.push_back({3, true, Secret(std::string_view("secretkey"))});
  mats.push_back({4, false, Secret(std::string_view("newsecret")), T1 + 3600});
  std::string err;
  auto ring = Keyring::build(mats, err);
  REQUIRE_MESSAGE(ring.has_value(), err);
  const SignResult before = sign(*ring, "user@example.com", T1 + 3599);
  const SignResult at = sign(*ring, "user@example.com", T1 + 3600);
  REQUIRE(before.tagged);
  REQUIRE(at.tagged);
  CHECK(before.key_id == 3);
  CHECK(*before.tagged == "prvs=368291fcbb=user@example.com");  // the spec vector of key 3
  CHECK(at.key_id == 4);
  CHECK(at.tagged->rfind("prvs=4682", 0) == 0);
  for (const std::int64_t now : {T1, T1 + 3599, T1 + 3600, T1 + 86400}) {
    CAPTURE(now);
    CHECK(verify(*ring, *before.tagged, now).verdict == Verdict::valid);
    CHECK(verify(*ring, *at.tagged, now).verdict == Verdict::valid);
  }
}
