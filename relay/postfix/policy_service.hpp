// policy_service: role = "policy", a Postfix SMTP access policy delegation service
// (check_policy_service, SMTPD_POLICY_README) that verifies BATV tags at RCPT.
//
// What it answers (decide_policy, pure: config + keyring + request + clock in, answer out):
//   - protocol_state other than RCPT (CONNECT, HELO, MAIL, DATA, END-OF-MESSAGE, VRFY, ETRN):
//     DUNNO. The decision is per recipient; put check_policy_service in
//     smtpd_recipient_restrictions.
//   - RCPT, a bounce (empty `sender`, or MAILER-DAEMON@... with inbound.mailer_daemon_is_bounce)
//     to a recipient in domains.verify: relay/policy.hpp decide_recipient, the inbound proxy's
//     decision, with the same per-domain modes and [inbound] exemptions (local parts;
//     `client_address` in accept_untagged_from). Refused: "550 5.7.1 bounce refused: <verdict
//     text>", the proxy's own reply text (relay/replies.hpp bounce_refused). Monitor mode:
//     "PREPEND X-BATV-Status: <verdict>" (one header per monitored recipient: Postfix prepends
//     each RCPT's header). Accepted or exempt: DUNNO (Postfix's own checks go on; the socketmap
//     strips the tag).
//   - RCPT, a normal sender: DUNNO (the socketmap strips), except that a bad_signature or
//     unknown_key tag with inbound.bad_signature = "reject" is refused as the proxy refuses it
//     ("550 5.7.1 tag does not verify: <verdict text>").
//   - A request that breaks the protocol (not request=smtpd_access_policy, no protocol_state, an
//     RCPT request without sender or recipient): no answer at all (PolicyDecision::error); the
//     connection closes and Postfix applies smtpd_policy_service_default_action, a tempfail by
//     default, never an accept.
// The connection (make_policy_connection): many requests per connection, pipelined requests
// answered in order, an idle timeout between requests (timeouts.policy_idle) and a deadline for
// one request to arrive and its answer to be written (timeouts.policy_request); an oversized or
// malformed request closes the connection without an answer (session_end reason
// request_too_large / protocol_error). Logs `event=policy` per RCPT request to a verify domain
// (info; a refusal at warning; other requests at debug); metrics: answer(policy, ...) per answered request, verdict(domain, verdict) and
// recipient(policy, action) for bounce decisions (and for a normal-sender refusal), so bounce
// verdict counts mean what they mean for the inbound proxy.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "relay/connection.hpp"
#include "relay/policy.hpp"
#include "relay/postfix/policy_request.hpp"

namespace batv::relay::postfix {

enum class PolicyAnswer { dunno, reject, prepend };
std::string_view to_string(PolicyAnswer a);

struct PolicyDecision {
  std::string_view error;   // non-empty: a protocol violation (snake_case name); no answer is sent
  PolicyAnswer answer = PolicyAnswer::dunno;
  std::string action;       // the value of "action=": "DUNNO", "550 5.7.1 ...", "PREPEND ..."
  bool rcpt = false;        // protocol_state RCPT
  bool bounce = false;      // RCPT: the sender makes it a bounce
  std::string_view sender, recipient;  // RCPT: as sent (views into the request)
  RcptDecision recipient_decision;     // RCPT: the proxy's decision for this recipient
};

// Pure. `now`: unix seconds.
PolicyDecision decide_policy(const conf::Config& cfg, KeyringsRef keys,
                             const crypto::PrvsParams& params, const PolicyRequest& request,
                             std::int64_t now);

// The wire form of one answer: "action=<action>\n\n".
void append_policy_answer(std::string& out, std::string_view action);

// Limits of the request parser from the config ([limits] policy_*).
PolicyLimits policy_limits(const conf::Config& cfg);

// The connection of a policy listener (relay/roles.cpp): see the top of this file.
std::shared_ptr<Connection> make_policy_connection(LocalSocket sock, ConnContext ctx);

}  // namespace batv::relay::postfix
