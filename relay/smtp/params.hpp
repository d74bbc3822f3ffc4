// params: whether the ESMTP parameters of MAIL FROM and RCPT TO are acceptable (RFC 5321 4.1.1.11,
// RFC 1869 6), given what the session offered the client in its EHLO reply and what the next hop
// connected now offers; and the MAIL parameters as they go on to the next hop.
//
// Contract: pure functions over a parsed Path (relay/smtp/command.hpp: parse_mail_from /
// parse_rcpt_to checked the syntax and refused duplicates). They never do I/O, never log, never
// read a clock and build no reply text: a refusal is a ParamRefusal plus the name the reply shows,
// and relay/replies.hpp (replies::param_refusal) turns it into the reply. Never throw (but
// std::bad_alloc). The parameters are checked in the order sent; the first problem is reported.
//
// MAIL, against what was offered (check_mail_params):
//   SIZE      always offered (RFC 1870); 1*20DIGIT fitting std::uint64_t, else invalid; over
//             ParamOffer::size -> size_exceeded (equal to it is accepted)
//   BODY      7BIT always, 8BITMIME when offered (RFC 6152); any other value, BINARYMIME (RFC 3030
//             3, never offered) included, -> unsupported
//   SMTPUTF8  when offered (RFC 6531 3.4), no value; a non-ASCII reverse-path without it ->
//             needs_smtputf8 (after every parameter is checked)
//   RET ENVID when DSN is offered (RFC 3461 4.3, 4.4)
//   AUTH      when AUTH is offered (RFC 4954 5); "<>" or valid xtext, else invalid
//   any other keyword (NOTIFY and ORCPT included: they belong to RCPT) -> unsupported
// then, once a next hop is connected, against what it offers now (recheck_mail_params): BODY=
// 8BITMIME, SMTPUTF8, RET/ENVID (DSN) -> next_hop_lacks, SIZE over its fixed limit -> size_exceeded.
// RCPT (check_rcpt_params): NOTIFY and ORCPT when DSN is offered (RFC 3461 4.1, 4.2), any other
// keyword unsupported; the next hop connected now must offer DSN; a non-ASCII forward-path needs
// the transaction's SMTPUTF8.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "relay/smtp/command.hpp"
#include "relay/smtp/reply.hpp"

namespace batv::relay::smtp {

// What the session offered this client in its EHLO reply, as far as MAIL/RCPT parameters go.
struct ParamOffer {
  std::uint64_t size = 0;      // the SIZE limit advertised (RFC 1870 4); SIZE is always offered
  bool eightbitmime = false;   // RFC 6152
  bool smtputf8 = false;       // RFC 6531
  bool dsn = false;            // RFC 3461: RET, ENVID (MAIL), NOTIFY, ORCPT (RCPT)
  bool auth = false;           // AUTH offered to this client (RFC 4954 5: the AUTH= parameter)
};

// Why a parameter (or the path, for SMTPUTF8) is refused. One reply each (replies::param_refusal).
enum class ParamRefusal {
  unsupported,     // 555 5.5.4: not offered, not known, or a BODY value not offered
  invalid,         // 501 5.5.4: a value its keyword does not allow
  size_exceeded,   // 552 5.3.4: SIZE over the limit offered, or over the next hop's limit
  needs_smtputf8,  // 553 5.6.7: a non-ASCII path without SMTPUTF8 (RFC 6531 3.4)
  next_hop_lacks,  // 451 4.3.3: offered from an earlier EHLO of the next hop, not by this one
};
std::string_view to_string(ParamRefusal r);  // short snake_case name, e.g. "next_hop_lacks"

struct ParamProblem {
  ParamRefusal why = ParamRefusal::unsupported;
  // unsupported / invalid: the keyword, upper-cased (RFC 5321 2.4: keywords are case-insensitive);
  // next_hop_lacks: the extension missing ("8BITMIME", "SMTPUTF8" or "DSN"); otherwise empty.
  std::string name;
  friend bool operator==(const ParamProblem&, const ParamProblem&) = default;
};

struct MailParams {
  std::optional<ParamProblem> problem;  // set: refuse this MAIL
  bool smtputf8 = false;                // accepted with SMTPUTF8 (the transaction may use UTF-8)
  [[nodiscard]] bool ok() const { return !problem; }
};

// MAIL FROM against what the client was offered.
MailParams check_mail_params(const Path& mail, const ParamOffer& offered);

// MAIL FROM (already accepted by check_mail_params) against the next hop connected now: with
// upstream_connect = "mail" the client was offered what an earlier connection offered, and this
// one may offer less (RFC 3463 X.3.3: fail this MAIL rather than the message later). A SIZE over
// `now.size` (when set and not 0) is size_exceeded. AUTH= is not checked again here.
std::optional<ParamProblem> recheck_mail_params(const Path& mail, const Capabilities& now);

// The parameter text of the MAIL FROM for the next hop: exactly as sent (Path::params_text) when
// `next_hop` advertised SIZE; otherwise every parameter but SIZE (we offer SIZE ourselves and have
// checked it), as KEYWORD[=value] as sent, joined by single spaces. "" when nothing remains.
std::string forward_mail_params(const Path& mail, const Capabilities& next_hop);

// RCPT TO. `now` is the next hop connected now, nullptr when none is (upstream_connect = "mail"
// before the first MAIL opened one); `smtputf8` says whether the transaction's MAIL had SMTPUTF8.
// Order (kept from the session as it was): for each parameter, its own check, then whether `now`
// offers DSN; then the non-ASCII path. RCPT parameters go on exactly as sent (Path::params_text).
std::optional<ParamProblem> check_rcpt_params(const Path& rcpt, const ParamOffer& offered, const Capabilities* now,
                                              bool smtputf8);

}  // namespace batv::relay::smtp
