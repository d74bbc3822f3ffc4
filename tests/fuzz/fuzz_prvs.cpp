// Fuzz target: the prvs parser, verifier and signer (crypto/prvs) on arbitrary addresses.
// Invariants:
//  - parse_tag and verify agree (a tag-level verdict iff the tag parses; `original` is the tag's
//    local part "@" domain); parsed fields are in range.
//  - sign tags exactly the addresses check_signable allows, never an address that already looks
//    tagged (no double tag), and the tagged address is at most 64 octets of local part and 254 of
//    address; it re-parses to the same local part, the lowercased domain, the signing key id and
//    today's expiry day.
//  - a fresh tag verifies valid now, on its last day, with the domain in another case, and expires
//    the day after; any changed signature digit gives bad_signature and an unknown K unknown_key.
//  - lowercase_local mode: a tag survives the whole address being upper-cased.
//  - ddd_in_window accepts a tag's own expiry day throughout its lifetime and not a day later,
//    for any clock value (the 8 leading input bytes, bounded).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

using namespace batv::crypto;

namespace {

constexpr int kSigner = 3;
constexpr std::int64_t kNow = 1700000000;

const Keyring& ring() {
  static const Keyring r = [] {
    std::vector<KeyMaterial> m;
    m.push_back({kSigner, true, Secret(std::string_view("secretkey"))});
    m.push_back({5, false, Secret(std::string_view("other"))});
    std::string err;
    auto k = Keyring::build(m, err);
    if (!k) std::abort();
    return std::move(*k);
  }();
  return r;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
  return out;
}
std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return out;
}

void check_parse_verify(std::string_view in, const PrvsParams& params) {
  const ParseResult p = parse_tag(in);
  const VerifyResult v = verify(ring(), in, kNow, params);
  const bool tag_level = v.verdict == Verdict::valid || v.verdict == Verdict::expired ||
                         v.verdict == Verdict::bad_signature || v.verdict == Verdict::unknown_key;
  if (tag_level != (p.status == ParseStatus::ok)) std::abort();
  if ((v.verdict == Verdict::malformed) != (p.status == ParseStatus::malformed)) std::abort();
  if ((v.verdict == Verdict::untagged) != (p.status == ParseStatus::untagged)) std::abort();
  if (p.status == ParseStatus::ok) {
    const ParsedTag& t = p.tag;
    if (t.key_id < 0 || t.key_id > 9 || t.expiry_day < 0 || t.expiry_day > 999) std::abort();
    if (t.local.empty() || t.domain.empty() || t.signature.size() != 6 || t.ddd.size() != 3) std::abort();
    if (v.original != std::string(t.local) + "@" + std::string(t.domain)) std::abort();
    if (v.original.size() + 16 != in.size()) std::abort();
    if (v.key_id != t.key_id || v.expiry_day != t.expiry_day) std::abort();
    if (v.verdict == Verdict::unknown_key && ring().has(t.key_id)) std::abort();
  } else if (!v.original.empty()) {
    std::abort();
  }
}

void check_fresh_tag(std::string_view address, const PrvsParams& params) {
  const SignResult s = sign(ring(), address, kNow, params);
  const auto why = check_signable(address);
  if (s.tagged.has_value() == why.has_value()) std::abort();
  if (!s.tagged) {
    if (s.reason != *why) std::abort();
    return;
  }
  // Never a second tag on an address that already carries one (or looks like it does).
  if (parse_tag(address).status != ParseStatus::untagged) std::abort();
  const std::string& tagged = *s.tagged;
  const auto at = tagged.rfind('@');
  if (at == std::string::npos || at > 64 || tagged.size() > 254) std::abort();
  if (s.key_id != kSigner) std::abort();

  const auto in_at = address.rfind('@');
  const std::string_view local = address.substr(0, in_at);
  const std::string domain = lower(address.substr(in_at + 1));
  const ParseResult p = parse_tag(tagged);
  if (p.status != ParseStatus::ok || p.tag.local != local || p.tag.domain != domain) std::abort();
  if (p.tag.key_id != kSigner || p.tag.expiry_day != expiry_ddd(kNow, params.lifetime_days)) std::abort();

  const std::int64_t day = 86400;
  const std::int64_t last = kNow + params.lifetime_days * day;
  const VerifyResult ok = verify(ring(), tagged, kNow, params);
  if (ok.verdict != Verdict::valid || ok.original != std::string(local) + "@" + domain) std::abort();
  if (verify(ring(), tagged, last, params).verdict != Verdict::valid) std::abort();
  if (verify(ring(), tagged, last + day, params).verdict != Verdict::expired) std::abort();
  // The domain in another case (a mixed-case bounce address) still verifies.
  const std::string shouted = tagged.substr(0, at + 1) + upper(tagged.substr(at + 1));
  if (verify(ring(), shouted, kNow, params).verdict != Verdict::valid) std::abort();
  // Each changed signature digit breaks it (exact mode: one HMAC candidate, so no chance match);
  // an unknown key id is reported as such.
  for (std::size_t i = 9; i < 15 && params.hash == HashMode::exact; ++i) {
    std::string bad = tagged;
    bad[i] = bad[i] == '0' ? '1' : '0';
    if (verify(ring(), bad, kNow, params).verdict != Verdict::bad_signature) std::abort();
  }
  std::string unknown = tagged;
  unknown[5] = '7';
  if (verify(ring(), unknown, kNow, params).verdict != Verdict::unknown_key) std::abort();
  // Case-smashing relays: in lowercase_local mode the upper-cased address still verifies.
  if (params.hash == HashMode::lowercase_local &&
      verify(ring(), upper(tagged), kNow, params).verdict != Verdict::valid)
    std::abort();
}

void check_window(const std::uint8_t* data, std::size_t size) {
  if (size < 8) return;
  std::int64_t now = 0;
  std::memcpy(&now, data, sizeof now);
  now %= (std::int64_t{1} << 40);  // +-34800 years: no overflow below
  for (int lifetime = PrvsParams::min_lifetime_days; lifetime <= PrvsParams::max_lifetime_days; ++lifetime) {
    const int ddd = expiry_ddd(now, lifetime);
    if (ddd < 0 || ddd > 999) std::abort();
    if (!ddd_in_window(ddd, now, lifetime) || !ddd_in_window(ddd, now + lifetime * 86400, lifetime)) std::abort();
    if (ddd_in_window(ddd, now + (lifetime + 1) * std::int64_t{86400}, lifetime)) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  PrvsParams exact;
  PrvsParams lc;
  lc.hash = HashMode::lowercase_local;
  lc.lifetime_days = size ? 1 + data[0] % PrvsParams::max_lifetime_days : 7;

  check_parse_verify(in, exact);
  check_parse_verify(in, lc);
  check_fresh_tag(in, exact);
  check_fresh_tag(in, lc);
  (void)has_tag_meta_syntax(in);
  check_window(data, size);
  return 0;
}
