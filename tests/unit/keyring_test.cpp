// Keyring construction rules, the HMAC primitive and Secret hygiene.
#include <doctest/doctest.h>

#include <string>
#include <type_traits>
#include <vector>

#include "crypto/keyring.hpp"

using namespace batv::crypto;

namespace {
std::string build_error(std::vector<KeyMaterial> mats) {
  std::string err;
  auto ring = Keyring::build(mats, err);
  return ring ? std::string("ok") : err;
}
KeyMaterial km(int id, bool signing, std::string_view s) { return {id, signing, Secret(s)}; }

std::string hex(const std::array<std::uint8_t, 20>& mac) {
  static constexpr char h[] = "0123456789abcdef";
  std::string out;
  for (auto b : mac) {
    out += h[b >> 4];
    out += h[b & 15];
  }
  return out;
}

// Detects operator<< for a type, to prove Secret cannot be streamed.
template <class T, class = void>
struct streamable : std::false_type {};
template <class T>
struct streamable<T, std::void_t<decltype(std::declval<std::ostream&>() << std::declval<T>())>>
    : std::true_type {};
}  // namespace

TEST_CASE("keyring rules: ids 0-9, unique, 1-64 byte secrets, exactly one signer") {
  std::vector<KeyMaterial> v;
  v.push_back(km(0, true, "a"));
  CHECK(build_error(std::move(v)) == "ok");

  v.clear();
  v.push_back(km(10, true, "a"));
  CHECK(build_error(std::move(v)) == "key 10: id must be 0-9 (the tag has one digit for it)");

  v.clear();
  v.push_back(km(-1, true, "a"));
  CHECK(build_error(std::move(v)).starts_with("key -1: id must be 0-9"));

  v.clear();
  v.push_back(km(1, true, "a"));
  v.push_back(km(1, false, "b"));
  CHECK(build_error(std::move(v)) == "key 1: id used twice");

  v.clear();
  v.push_back(km(1, true, ""));
  CHECK(build_error(std::move(v)) == "key 1: secret is empty");

  v.clear();
  v.push_back(km(1, true, std::string(65, 'x')));
  CHECK(build_error(std::move(v)) == "key 1: secret is longer than 64 bytes");

  v.clear();
  v.push_back(km(1, true, std::string(64, 'x')));
  CHECK(build_error(std::move(v)) == "ok");

  v.clear();
  v.push_back(km(1, true, "a"));
  v.push_back(km(2, true, "b"));
  CHECK(build_error(std::move(v)).starts_with("key 2: more than one signing key"));

  v.clear();
  v.push_back(km(1, false, "a"));
  CHECK(build_error(std::move(v)).starts_with("no signing key"));

  CHECK(build_error({}) == "no keys");
}

TEST_CASE("hmac_sha1 matches RFC 2202 test case 2 and the one-shot HMAC") {
  std::vector<KeyMaterial> v;
  v.push_back(km(4, true, "Jefe"));
  std::string err;
  auto ring = Keyring::build(v, err);
  REQUIRE(ring);
  std::array<std::uint8_t, 20> mac{};
  REQUIRE(ring->hmac_sha1(4, "what do ya want for nothing?", mac));
  CHECK(hex(mac) == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
  std::array<std::uint8_t, 20> mac2{};
  REQUIRE(hmac_sha1_oneshot(Secret(std::string_view("Jefe")), "what do ya want for nothing?", mac2));
  CHECK(mac == mac2);
  // Repeated use does not disturb the keyed template.
  REQUIRE(ring->hmac_sha1(4, "what do ya want for nothing?", mac));
  CHECK(hex(mac) == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
  CHECK_FALSE(ring->hmac_sha1(5, "x", mac));
  CHECK(ring->ids() == std::vector<int>{4});
  CHECK(ring->signing_id(0) == 4);
  CHECK(ring->staged_id() == -1);
  CHECK_FALSE(ring->next_switch(0));
}

TEST_CASE("Secret: no printing, no implicit copies, wiped on move") {
  static_assert(!streamable<Secret>::value, "a Secret must not be printable");
  static_assert(!std::is_copy_constructible_v<Secret>);
  static_assert(!std::is_copy_assignable_v<Secret>);
  Secret a(std::string_view("hunter2"));
  Secret b = std::move(a);
  CHECK(b.size() == 7);
  CHECK(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is defined as wiped
  const auto bytes = b.clone();
  CHECK(std::string_view(reinterpret_cast<const char*>(bytes.bytes().data()), bytes.size()) ==
        "hunter2");
  Secret big(std::string_view(std::string(100, 'x')));
  CHECK(big.truncated());
}

TEST_CASE("generated secrets are 32 random bytes; fingerprints are stable and short") {
  auto a = generate_secret();
  auto b = generate_secret();
  REQUIRE(a);
  REQUIRE(b);
  CHECK(a->size() == 32);
  CHECK(fingerprint(*a) != fingerprint(*b));
  CHECK(fingerprint(*a).size() == 12);
  CHECK(fingerprint(Secret(std::string_view("secretkey"))) ==
        fingerprint(Secret(std::string_view("secretkey"))));
  CHECK_FALSE(generate_secret(0));
  CHECK_FALSE(generate_secret(65));
}

TEST_CASE("a staged key verifies at once and signs from its activation time on") {
  constexpr std::int64_t t = 1700000000;
  std::vector<KeyMaterial> v;
  v.push_back(km(1, true, "old-secret"));
  KeyMaterial staged = km(2, false, "new-secret");
  staged.activate_at = t;
  v.push_back(std::move(staged));
  std::string err;
  auto ring = Keyring::build(v, err);
  REQUIRE_MESSAGE(ring, err);
  CHECK(ring->has(2));
  CHECK(ring->staged_id() == 2);
  CHECK(ring->signing_id(t - 1) == 1);
  CHECK(ring->signing_id(t) == 2);
  CHECK(ring->signing_id(t + 86400) == 2);
  CHECK(ring->next_switch(t - 1) == std::optional<std::int64_t>(t));
  CHECK_FALSE(ring->next_switch(t));

  // At most one staged key, and it is not the signer too.
  std::vector<KeyMaterial> two;
  two.push_back(km(1, true, "a"));
  for (int id : {2, 3}) {
    KeyMaterial k = km(id, false, "b");
    k.activate_at = t + id;
    two.push_back(std::move(k));
  }
  CHECK(build_error(std::move(two)).find("a second staged key (key 2") != std::string::npos);
  std::vector<KeyMaterial> both;
  KeyMaterial k = km(1, true, "a");
  k.activate_at = t;
  both.push_back(std::move(k));
  CHECK(build_error(std::move(both)).find("cannot also be the signing key") != std::string::npos);
  // A staged key alone does not make a ring: something must sign until it activates.
  std::vector<KeyMaterial> alone;
  KeyMaterial s = km(4, false, "a");
  s.activate_at = t;
  alone.push_back(std::move(s));
  CHECK(build_error(std::move(alone)).starts_with("no signing key"));
}
