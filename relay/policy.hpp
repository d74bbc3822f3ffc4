// policy: how one envelope sender leaves the outbound relay, what happens to one inbound recipient,
// and which keyring an address uses. Pure: config + keyrings + clock in,
// decision out; no I/O, no logging.
//
// The decision is taken once per transaction, at its first recipient (destination exemptions
// need one): later recipients whose decision differs get 452 4.5.3 from the session.
// Order of the "not signed" reasons: null_sender, malformed_address, not_our_domain,
// exempt_sender, exempt_destination, then the structural crypto rules (already_tagged,
// quoted_local_part, too_long).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

namespace batv::relay {

// --- Keyrings: which ring signs and verifies an address -------------------------------------------

// One keyring and what it is for: the default ring (key_file) or one [[domain_keys]] entry.
struct Ring {
  std::string name;                  // "default", or the entry's first domain: the metrics label ring=
  std::vector<std::string> domains;  // lowercase; empty for the default ring
  std::string key_file;              // where it was read from (logs, --check-config)
  crypto::Keyring keyring;
  std::size_t key_count = 0;
  std::vector<std::pair<int, std::int64_t>> key_created;  // (key id, created unix seconds), for metrics
};

// Every ring of a runtime. The one rule of selection, used by every role (outbound signing,
// inbound verification, milter, policy service, socketmap): the [[domain_keys]] ring that lists
// the address's domain, else the default ring. Domains are compared exactly and case-insensitively,
// as [domains] compares them (a subdomain is not matched). Immutable once built; a lookup is a
// binary search over the listed domains, without allocation.
class Keyrings {
 public:
  // A single default ring (for callers and tests without [[domain_keys]]).
  Keyrings(crypto::Keyring only);  // NOLINT(google-explicit-constructor): a ring is a ring set of one
  // rings[0] is the default ring (its domains are ignored). A domain listed by two rings belongs to
  // the first (the config loader refuses that).
  explicit Keyrings(std::vector<Ring> rings);

  [[nodiscard]] const Ring& for_domain(std::string_view domain) const;
  // The ring of the domain after the last '@' (the default ring when there is none). A tagged
  // address ("prvs=...=user@domain") has the domain of its original.
  [[nodiscard]] const Ring& for_address(std::string_view address) const;
  [[nodiscard]] const Ring& default_ring() const { return rings_.front(); }
  [[nodiscard]] const std::vector<Ring>& rings() const { return rings_; }

 private:
  void index();
  std::vector<Ring> rings_;
  std::vector<std::pair<std::string, std::size_t>> by_domain_;  // sorted: domain -> ring index
};

// What the decisions below take: a whole ring set, or one keyring for every domain (the fuzzers'
// and unit tests' single ring). Either converts implicitly; a view, cheap to pass by value.
class KeyringsRef {
 public:
  KeyringsRef(const Keyrings& set) : set_(&set) {}           // NOLINT(google-explicit-constructor)
  KeyringsRef(const crypto::Keyring& one) : one_(&one) {}    // NOLINT(google-explicit-constructor)
  [[nodiscard]] const crypto::Keyring& for_address(std::string_view address) const {
    return set_ ? set_->for_address(address).keyring : *one_;
  }

 private:
  const Keyrings* set_ = nullptr;
  const crypto::Keyring* one_ = nullptr;
};

struct SenderDecision {
  bool sign = false;
  crypto::NoSignReason reason{};  // when !sign
  std::string upstream_from;      // the reverse-path to send (tagged or as received)
  int key_id = -1;                // when sign
};

// Signs with the ring of the sender's domain.
SenderDecision decide_sender(const conf::Config& cfg, KeyringsRef keys,
                             const crypto::PrvsParams& params, std::string_view sender,
                             std::string_view first_recipient, std::int64_t now);

// True when `domain` (any case) is one of `list` (lowercase).
bool domain_in(const std::vector<std::string>& list, std::string_view domain);

crypto::PrvsParams prvs_params(const conf::Config& cfg);

// --- Inbound: what happens to one recipient -------------------------------------------------------

// True when MAIL FROM makes the transaction a bounce: <>, or MAILER-DAEMON@... when configured.
bool is_bounce(const conf::Config& cfg, std::string_view sender);

enum class RcptAction {
  accepted,   // bounce with a valid tag: tag stripped, passed on
  exempt,     // bounce without a valid tag, but an exempt local part or client network
  refused,    // 550 5.7.1, nothing sent upstream
  monitored,  // monitor mode: passed on whatever the verdict, the verdict goes in a header
  stripped,   // normal sender: tag stripped
  kept,       // normal sender, bad tag, policy "keep": passed as received
  passed,     // not one of our verify domains, or no tag to act on: passed as received
  relayed,    // outbound: the next hop accepted the RCPT (never a decide_recipient result; a
              // next-hop refusal counts as refused)
};
// One more than the last value; a value appended without raising it fails the static_assert.
inline constexpr std::size_t rcpt_action_count = static_cast<std::size_t>(RcptAction::relayed) + 1;
constexpr std::string_view to_string(RcptAction a) {
  switch (a) {
    case RcptAction::accepted: return "accepted";
    case RcptAction::exempt: return "exempt";
    case RcptAction::refused: return "refused";
    case RcptAction::monitored: return "monitored";
    case RcptAction::stripped: return "stripped";
    case RcptAction::kept: return "kept";
    case RcptAction::passed: return "passed";
    case RcptAction::relayed: return "relayed";
  }
  return "?";
}
static_assert(to_string(static_cast<RcptAction>(rcpt_action_count)) == "?",
              "rcpt_action_count must be one more than the last RcptAction");

struct RcptDecision {
  RcptAction action = RcptAction::passed;
  crypto::Verdict verdict = crypto::Verdict::untagged;
  bool ours = false;         // domain in domains.verify (verdict meaningful)
  bool monitor = false;      // a bounce recipient in monitor mode: its verdict goes in X-BATV-Status
  std::string upstream;      // the forward-path to send (when not refused)
  std::string reply;         // the 550 reply (when refused)
};

// Pure. `client_exempt`: the client IP is in inbound.accept_untagged_from. Verifies with the ring
// of the recipient's domain: a tag made with another ring's key is unknown_key or bad_signature.
RcptDecision decide_recipient(const conf::Config& cfg, KeyringsRef keys,
                              const crypto::PrvsParams& params, bool bounce, bool client_exempt,
                              std::string_view recipient, std::int64_t now);

// Monitor header verdict order: the worse of two verdicts (bad_signature > unknown_key >
// malformed > expired > untagged > valid).
crypto::Verdict worse(crypto::Verdict a, crypto::Verdict b);

}  // namespace batv::relay
