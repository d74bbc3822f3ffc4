// prvs sign/verify: see prvs.hpp and ../shared/docs/batv-spec.md.
#include "crypto/prvs.hpp"

#include <openssl/crypto.h>

#include <array>
#include <cstring>

#include "conf/limits.hpp"
#include "crypto/keyring.hpp"
#include "conf/ascii.hpp"

namespace batv::crypto {

namespace {

constexpr std::string_view tag_prefix = "prvs=";
// "prvs=" K DDD SSSSSS "=": the octets a tag adds to the local part (the format, not a bound).
constexpr std::size_t tag_overhead = tag_prefix.size() + 1 + 3 + 6 + 1;
static_assert(tag_overhead == 16);
// The tagged address must stay a valid path (RFC 5321 4.5.3.1.1 local part, 4.5.3.1.3 path).
constexpr std::size_t max_local_part = conf::fixed::max_local_part_length;
constexpr std::size_t max_address = conf::fixed::max_address_length;

using text::is_alnum;
using text::is_digit;

int hex_value(char c) {
  if (is_digit(c)) return c - '0';
  c = text::lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

struct Split {
  std::string_view local, domain;
  bool has_at;
};
Split split_address(std::string_view address) {
  auto at = address.rfind('@');
  if (at == std::string_view::npos) return {address, {}, false};
  return {address.substr(0, at), address.substr(at + 1), true};
}

// K DDD address, the HMAC input.
std::string mac_message(int key_id, std::string_view ddd, std::string_view local,
                        std::string_view domain) {
  std::string m;
  m.reserve(4 + local.size() + 1 + domain.size());
  m += static_cast<char>('0' + key_id);
  m += ddd;
  m += local;
  m += '@';
  m += domain;
  return m;
}

void three_digits(int v, char out[3]) {
  out[0] = static_cast<char>('0' + v / 100);
  out[1] = static_cast<char>('0' + v / 10 % 10);
  out[2] = static_cast<char>('0' + v % 10);
}

}  // namespace

std::int64_t day_number(std::int64_t now) {
  std::int64_t d = now / 86400;
  if (now % 86400 != 0 && now < 0) --d;  // floor, not truncation
  return d;
}

int expiry_ddd(std::int64_t now, int lifetime_days) {
  std::int64_t v = (day_number(now) + lifetime_days) % 1000;
  if (v < 0) v += 1000;
  return static_cast<int>(v);
}

bool ddd_in_window(int ddd, std::int64_t now, int lifetime_days) {
  std::int64_t today = day_number(now) % 1000;
  if (today < 0) today += 1000;
  // Signed arithmetic then a non-negative modulus: never (unsigned)(a - b) % 1000.
  std::int64_t delta = ((ddd - today) % 1000 + 1000) % 1000;
  return delta <= lifetime_days;
}

bool has_tag_meta_syntax(std::string_view local) {
  auto eq = local.find('=');
  if (eq == 0 || eq == std::string_view::npos) return false;
  for (std::size_t i = 0; i < eq; ++i)
    if (!is_alnum(local[i]) && local[i] != '-') return false;
  return local.find('=', eq + 1) != std::string_view::npos;
}

std::optional<NoSignReason> check_signable(std::string_view address) {
  if (address.empty()) return NoSignReason::null_sender;
  Split s = split_address(address);
  if (!s.has_at || s.local.empty() || s.domain.empty()) return NoSignReason::malformed_address;
  if (s.local.front() == '"') return NoSignReason::quoted_local_part;
  if (has_tag_meta_syntax(s.local) || text::istarts_with(s.local, tag_prefix)) return NoSignReason::already_tagged;
  if (s.local.size() + tag_overhead > max_local_part ||
      address.size() + tag_overhead > max_address)
    return NoSignReason::too_long;
  return std::nullopt;
}

SignResult sign(const Keyring& keys, std::string_view address, std::int64_t now,
                const PrvsParams& params) {
  SignResult r;
  if (auto why = check_signable(address)) {
    r.reason = *why;
    return r;
  }
  Split s = split_address(address);
  const std::string domain = text::lower(s.domain);
  const int k = keys.signing_id(now);
  char ddd[3];
  three_digits(expiry_ddd(now, params.lifetime_days), ddd);
  const std::string_view ddd_view(ddd, 3);

  std::array<std::uint8_t, 20> mac{};
  const std::string message =
      params.hash == HashMode::lowercase_local
          ? mac_message(k, ddd_view, text::lower(s.local), domain)
          : mac_message(k, ddd_view, s.local, domain);
  if (!keys.hmac_sha1(k, message, mac)) {
    r.reason = NoSignReason::malformed_address;  // unreachable with a built keyring
    return r;
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(tag_overhead + address.size());
  out += tag_prefix;
  out += static_cast<char>('0' + k);
  out += ddd_view;
  for (int i = 0; i < 3; ++i) {
    out += hex[mac[i] >> 4];
    out += hex[mac[i] & 15];
  }
  out += '=';
  out += s.local;
  out += '@';
  out += domain;
  r.tagged = std::move(out);
  r.key_id = k;
  return r;
}

ParseResult parse_tag(std::string_view address) {
  ParseResult r;
  Split s = split_address(address);
  std::string_view local = s.local;
  if (!text::istarts_with(local, tag_prefix)) return r;  // untagged
  r.status = ParseStatus::malformed;
  // prvs= K DDD SSSSSS = original-local
  if (local.size() < tag_overhead + 1) return r;
  if (!is_digit(local[5])) return r;
  for (std::size_t i = 6; i < 9; ++i)
    if (!is_digit(local[i])) return r;
  for (std::size_t i = 9; i < 15; ++i)
    if (hex_value(local[i]) < 0) return r;
  if (local[15] != '=') return r;
  if (!s.has_at || s.domain.empty()) return r;
  r.status = ParseStatus::ok;
  r.tag.key_id = local[5] - '0';
  r.tag.ddd = local.substr(6, 3);
  r.tag.expiry_day = (local[6] - '0') * 100 + (local[7] - '0') * 10 + (local[8] - '0');
  r.tag.signature = local.substr(9, 6);
  r.tag.local = local.substr(tag_overhead);
  r.tag.domain = s.domain;
  return r;
}

VerifyResult verify(const Keyring& keys, std::string_view address, std::int64_t now,
                    const PrvsParams& params) {
  VerifyResult r;
  ParseResult p = parse_tag(address);
  if (p.status == ParseStatus::untagged) return r;
  if (p.status == ParseStatus::malformed) {
    r.verdict = Verdict::malformed;
    return r;
  }
  const ParsedTag& t = p.tag;
  r.key_id = t.key_id;
  r.expiry_day = t.expiry_day;
  r.original.reserve(t.local.size() + 1 + t.domain.size());
  r.original.append(t.local).append("@").append(t.domain);
  if (!keys.has(t.key_id)) {
    r.verdict = Verdict::unknown_key;
    return r;
  }
  std::uint8_t expected[3];
  for (int i = 0; i < 3; ++i)
    expected[i] = static_cast<std::uint8_t>(hex_value(t.signature[2 * i]) << 4 |
                                            hex_value(t.signature[2 * i + 1]));

  // Candidate HMAC inputs, in order of likelihood (see prvs.hpp), tried until one matches. The
  // common case (exact mode, lowercase domain) costs one HMAC and no allocation but `original`.
  enum class Fold { none, domain, all };
  auto matches = [&](Fold fold) {
    std::array<char, 4 + max_address + 1> stack;
    std::string heap;
    const std::size_t len = 4 + t.local.size() + 1 + t.domain.size();
    char* m = stack.data();
    if (len > stack.size()) {
      heap.resize(len);
      m = heap.data();
    }
    m[0] = static_cast<char>('0' + t.key_id);
    std::memcpy(m + 1, t.ddd.data(), 3);
    std::memcpy(m + 4, t.local.data(), t.local.size());
    m[4 + t.local.size()] = '@';
    std::memcpy(m + 5 + t.local.size(), t.domain.data(), t.domain.size());
    const std::size_t domain_at = 5 + t.local.size();
    for (std::size_t i = (fold == Fold::all ? 4 : domain_at); fold != Fold::none && i < len; ++i)
      m[i] = text::lower(m[i]);
    std::array<std::uint8_t, 20> mac{};
    return keys.hmac_sha1(t.key_id, std::string_view(m, len), mac) &&
           CRYPTO_memcmp(mac.data(), expected, 3) == 0;
  };
  const bool match = (params.hash == HashMode::lowercase_local && matches(Fold::all)) ||
                     matches(Fold::domain) || (text::has_upper(t.domain) && matches(Fold::none));
  if (!match) {
    r.verdict = Verdict::bad_signature;
    return r;
  }
  r.verdict = ddd_in_window(t.expiry_day, now, params.lifetime_days) ? Verdict::valid
                                                                      : Verdict::expired;
  return r;
}

}  // namespace batv::crypto
