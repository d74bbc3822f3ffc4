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

}  // namespace batv::relay
