// policy: how one envelope sender leaves the outbound relay. Pure: config + keyring + clock in,
// decision out; no I/O, no logging.
//
// The decision is taken once per transaction, at its first recipient (destination exemptions
// need one): later recipients whose decision differs get 452 4.5.3 from the session.
// Order of the "not signed" reasons: null_sender, malformed_address, not_our_domain,
// exempt_sender, exempt_destination, then the structural crypto rules (already_tagged,
// quoted_local_part, too_long).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

namespace batv::relay {

struct SenderDecision {
  bool sign = false;
  crypto::NoSignReason reason{};  // when !sign
  std::string upstream_from;      // the reverse-path to send (tagged or as received)
  int key_id = -1;                // when sign
};

SenderDecision decide_sender(const conf::Config& cfg, const crypto::Keyring& keys,
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
};
std::string_view to_string(RcptAction a);

struct RcptDecision {
  RcptAction action = RcptAction::passed;
  crypto::Verdict verdict = crypto::Verdict::untagged;
  bool ours = false;         // domain in domains.verify (verdict meaningful)
  bool monitor = false;      // a bounce recipient in monitor mode: its verdict goes in X-BATV-Status
  std::string upstream;      // the forward-path to send (when not refused)
  std::string reply;         // the 550 reply (when refused)
};

// Pure. `client_exempt`: the client IP is in inbound.accept_untagged_from.
RcptDecision decide_recipient(const conf::Config& cfg, const crypto::Keyring& keys,
                              const crypto::PrvsParams& params, bool bounce, bool client_exempt,
                              std::string_view recipient, std::int64_t now);

// Monitor header verdict order: the worse of two verdicts (bad_signature > unknown_key >
// malformed > expired > untagged > valid).
crypto::Verdict worse(crypto::Verdict a, crypto::Verdict b);

}  // namespace batv::relay
