// socketmap: role = "socketmap", a Postfix socketmap table (socketmap_table(5), Postfix >= 2.10)
// with one map, `strip`, for recipient_canonical_maps (recipient_canonical_classes =
// envelope_recipient). A match both rewrites the recipient and makes the tagged address "known"
// to Postfix's recipient checks (smtpd check_rcpt_maps consults the canonical maps).
//
// What it answers (decide_socketmap, pure). A query is one netstring "<name> <key>":
//   - name `strip`, key a recipient in domains.verify whose tag the inbound proxy would strip for
//     a NORMAL sender: "OK <address without the tag>". Canonical maps see every message, bounce
//     or not, and only the address, so the socketmap takes the proxy's non-bounce decision
//     (relay/policy.hpp decide_recipient with bounce = false); bounces were already decided at
//     RCPT by the policy service, which refused the bad ones in enforce mode. Hence:
//       valid                      -> OK (stripped)
//       expired                    -> OK (stripped: mail from a correspondent replying to an
//                                     old message still arrives; a bounce to it was refused)
//       bad_signature, unknown_key -> per inbound.bad_signature: "strip" (default) -> OK;
//                                     "keep" or "reject" -> NOTFOUND (Postfix handles the tagged
//                                     address as is: normally "User unknown"; with "reject" the
//                                     policy service has already refused it at RCPT)
//       malformed, untagged        -> NOTFOUND
//     A domain in mode "off" strips valid and expired tags only (as the proxy does).
//   - any other key (not one of our domains, no tag): "NOTFOUND ".
//   - another map name: "PERM unknown map name" (a configuration error Postfix logs).
//   - a query without the space between name and key: "PERM malformed query".
// The connection (make_socketmap_connection): netstrings of at most
// conf::fixed::socketmap_max_query octets (larger, or a broken netstring: the connection closes
// without an answer, session_end reason request_too_large / protocol_error, and Postfix's lookup
// fails with a temporary error), many queries per connection, pipelined queries answered in
// order, an idle timeout between queries (timeouts.socketmap_idle) and a deadline for one query
// to arrive and its answer to be written (timeouts.socketmap_request). Logs `event=socketmap` per
// lookup of a verify-domain key (info; other keys at debug, PERM answers at warning);
// metrics: answer(socketmap, found|notfound|perm) per answered query. Lookups are not counted as
// recipients or verdicts: Postfix looks an address up more than once (smtpd at RCPT, cleanup).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "relay/connection.hpp"
#include "relay/policy.hpp"

namespace batv::relay::postfix {

inline constexpr std::string_view kStripMap = "strip";

enum class MapAnswer { found, notfound, perm };
std::string_view to_string(MapAnswer a);

struct SocketmapDecision {
  MapAnswer answer = MapAnswer::notfound;
  std::string reply;         // the payload to send as a netstring: "OK x@y", "NOTFOUND ", "PERM ..."
  std::string_view key;      // the key (a view into the query), when the name was `strip`
  RcptDecision recipient_decision;  // for the `strip` map
};

// Pure. `query`: one netstring's payload. `now`: unix seconds.
SocketmapDecision decide_socketmap(const conf::Config& cfg, KeyringsRef keys,
                                   const crypto::PrvsParams& params, std::string_view query, std::int64_t now);

// The connection of a socketmap listener (relay/roles.cpp): see the top of this file.
std::shared_ptr<Connection> make_socketmap_connection(LocalSocket sock, ConnContext ctx);

}  // namespace batv::relay::postfix
