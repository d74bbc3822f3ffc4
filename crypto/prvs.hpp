// prvs: BATV "private signature" tags (draft-levine-smtp-batv-01, compatible with Exim's ${prvs}).
//
// Contract: pure functions over addresses and an injected clock (unix seconds); no I/O, no
// logging, no SMTP. Addresses are the text inside the angle brackets of a reverse-path or
// forward-path ("local@domain"); bytes are never re-encoded (UTF-8 local parts pass as raw bytes).
// Splits happen at the LAST "@". See ../shared/docs/batv-spec.md for the algorithm.
//
//   tagged = "prvs=" K DDD SSSSSS "=" local "@" domain
//   DDD    = (floor(now / 86400) + lifetime_days) mod 1000     (the day the tag EXPIRES)
//   SSSSSS = hex(first 3 bytes of HMAC-SHA1(secret, K DDD local "@" domain))
//
// Verification compares in constant time and checks expiry by modular distance
// ((DDD - today) mod 1000 <= lifetime), unlike Exim, which has no upper bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "conf/limits.hpp"  // numbers only: no config, no TOML

namespace batv::crypto {

class Keyring;

// How the address is fed to the HMAC.
enum class HashMode {
  exact,            // local part as sent, domain lowercased: byte-identical to Exim (default)
  lowercase_local,  // local part lowercased too: survives case-smashing relays, not Exim-compatible
};

struct PrvsParams {
  // The lifetime_days row of conf/limits.hpp (why 7, 1 and 30: see its note; 30 is far below
  // the 1000-day DDD wrap).
  static constexpr int default_lifetime_days = static_cast<int>(conf::limit("", "lifetime_days").def);
  static constexpr int min_lifetime_days = static_cast<int>(conf::limit("", "lifetime_days").min);
  static constexpr int max_lifetime_days = static_cast<int>(conf::limit("", "lifetime_days").max);
  int lifetime_days = default_lifetime_days;
  HashMode hash = HashMode::exact;
};

// --- Signing -------------------------------------------------------------------------------------

// Why an envelope sender is left untagged. The crypto layer decides the structural reasons
// (check_signable); the relay adds the policy ones (domain, exemptions) so all reasons share one
// list, one counter family and one log vocabulary.
enum class NoSignReason {
  null_sender,            // MAIL FROM:<>; bounces are never tagged
  malformed_address,      // no "@", empty local part or empty domain
  already_tagged,         // local part already has the tag meta-syntax "type=value=" (prvs, SRS0, ...)
  quoted_local_part,      // "quoted string"@domain: a tag would make an invalid address
  too_long,               // tagged local part > 64 octets, or tagged address > 254 (conf::fixed, RFC 5321 4.5.3.1)
  not_our_domain,         // policy: sender domain not in [domains].sign
  exempt_sender,          // policy: [signing].exempt_senders
  exempt_destination,     // policy: recipients in [signing].exempt_destinations
};
// One more than the last value; a value appended without raising it fails the static_assert.
inline constexpr std::size_t no_sign_reason_count = static_cast<std::size_t>(NoSignReason::exempt_destination) + 1;
constexpr std::string_view to_string(NoSignReason r) {
  switch (r) {
    case NoSignReason::null_sender: return "null_sender";
    case NoSignReason::malformed_address: return "malformed_address";
    case NoSignReason::already_tagged: return "already_tagged";
    case NoSignReason::quoted_local_part: return "quoted_local_part";
    case NoSignReason::too_long: return "too_long";
    case NoSignReason::not_our_domain: return "not_our_domain";
    case NoSignReason::exempt_sender: return "exempt_sender";
    case NoSignReason::exempt_destination: return "exempt_destination";
  }
  return "unknown";
}
static_assert(to_string(static_cast<NoSignReason>(no_sign_reason_count)) == "unknown",
              "no_sign_reason_count must be one more than the last NoSignReason");

// The structural "never sign" rules; std::nullopt when the address may be tagged.
std::optional<NoSignReason> check_signable(std::string_view address);

// True when `local` starts with the BATV/SRS meta-syntax "tag-type=tag-value=" where tag-type is
// 1*(ALPHA / DIGIT / "-"): prvs=..., msprvs1=..., SRS0=..., SRS1=..., btv1==...
bool has_tag_meta_syntax(std::string_view local);

struct SignResult {
  std::optional<std::string> tagged;  // set when signed
  NoSignReason reason{};              // meaningful only when !tagged
  int key_id = -1;                    // the signing key used
};

// Tags `address` with the keyring's signing key at time `now`. The domain is lowercased in the
// result (and in the hash). Applies check_signable first.
SignResult sign(const Keyring& keys, std::string_view address, std::int64_t now,
                const PrvsParams& params = {});

// --- Verification --------------------------------------------------------------------------------

enum class Verdict { valid, bad_signature, expired, unknown_key, malformed, untagged };
// One more than the last value; a value appended without raising it fails the static_assert.
inline constexpr std::size_t verdict_count = static_cast<std::size_t>(Verdict::untagged) + 1;
constexpr std::string_view to_string(Verdict v) {
  switch (v) {
    case Verdict::valid: return "valid";
    case Verdict::bad_signature: return "bad_signature";
    case Verdict::expired: return "expired";
    case Verdict::unknown_key: return "unknown_key";
    case Verdict::malformed: return "malformed";
    case Verdict::untagged: return "untagged";
  }
  return "unknown";
}
static_assert(to_string(static_cast<Verdict>(verdict_count)) == "unknown",
              "verdict_count must be one more than the last Verdict");

struct VerifyResult {
  Verdict verdict = Verdict::untagged;
  std::string original;  // the address with the tag removed; set for every verdict but untagged/malformed
  int key_id = -1;       // the K digit, when the tag parsed
  int expiry_day = -1;   // DDD, when the tag parsed
};

// The parts of a well-formed tag, with views into the input.
struct ParsedTag {
  int key_id;
  int expiry_day;               // DDD, 0..999
  std::string_view ddd;         // the three digits as received
  std::string_view signature;   // six hex digits, either case
  std::string_view local;       // original local part
  std::string_view domain;
};

enum class ParseStatus { ok, untagged, malformed };
struct ParseResult {
  ParseStatus status = ParseStatus::untagged;
  ParsedTag tag{};
};

// Pure syntax: "prvs=" (any case) + 1 digit + 3 digits + 6 hex + "=" + non-empty local "@" non-empty
// domain. Anything that starts with "prvs=" but does not fit is malformed.
ParseResult parse_tag(std::string_view address);

// Verifies a tagged recipient against the keyring at time `now`.
// Order of checks: syntax, key id known, signature (constant time), expiry.
// Signature candidates tried: the address with the domain lowercased (how we sign), the address
// bytes as received (Exim with a mixed-case domain), and in lowercase_local mode the fully
// lowercased address; at most three HMACs per call.
VerifyResult verify(const Keyring& keys, std::string_view address, std::int64_t now,
                    const PrvsParams& params = {});

// --- Helpers shared with the CLI and tests ---------------------------------------------------------

// floor(now / 86400): the UTC day number, correct for negative times too.
std::int64_t day_number(std::int64_t now);
// (floor(now/86400) + lifetime) mod 1000.
int expiry_ddd(std::int64_t now, int lifetime_days);
// True when a tag with expiry day `ddd` is still valid at `now`: (ddd - today) mod 1000 <= lifetime.
bool ddd_in_window(int ddd, std::int64_t now, int lifetime_days);

}  // namespace batv::crypto
