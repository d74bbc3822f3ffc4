// phase: which SMTP command may run when, as one pure table (OpenSMTPD's check/proceed split,
// Postfix smtpd.c's per-verb flags). A session describes where it stands (PhaseFacts); check(facts,
// verb) says go (nullopt) or which refusal applies, in the order RFC 5321 4.1.4 and 4.3.2, RFC 3030
// (BDAT), RFC 3207 (STARTTLS) and RFC 4954 (AUTH) give. verb_flags(verb) says what a session does
// around a command: whether it is a junk command (limits.commands_before_mail, Postfix
// smtpd_junk_command_limit) and whether the replies owed so far go out first.
// Pure: no I/O, no clock, no reply text (relay/replies.hpp maps a Refusal to its reply).
#pragma once

#include <optional>
#include <string_view>

#include "relay/smtp/command.hpp"

namespace batv::relay::smtp {

// Where a session stands, as far as the legality of the next command goes.
struct PhaseFacts {
  bool helo_seen = false;            // EHLO/HELO since the connection (or since STARTTLS)
  bool in_transaction = false;       // MAIL accepted, not yet ended by RSET, EHLO or the end of data
  bool bdat_used = false;            // a BDAT chunk of this transaction went: no RCPT, no DATA
  bool bdat_failed = false;          // one of them failed: no more BDAT
  bool recipients_accepted = false;  // the next hop accepted at least one RCPT
  bool recipients_tried = false;     // at least one RCPT was given
  bool tls_missing = false;          // the listener requires TLS (require_tls); not started yet
  bool auth_missing = false;         // the client must authenticate (allow_authenticated); has not
  bool chunking_offered = false;     // BDAT advertised (the next hop does CHUNKING)
  bool tls_offered = false;          // STARTTLS possible here: a server context, not implicit TLS
  bool tls_active = false;
  bool auth_offered = false;         // AUTH advertised to this client
  bool auth_needs_tls = false;       // not offered only for want of encryption: 538, not 502
  bool authenticated = false;
};

// Why a command may not run now. One reply each (relay/replies.hpp, replies::refusal).
enum class Refusal {
  tls_required,              // 530 5.7.0 Must issue a STARTTLS command first
  auth_required,             // 530 5.7.0
  need_helo,                 // 503
  nested_mail,               // 503 MAIL inside a transaction
  need_mail,                 // 503 RCPT before MAIL
  rcpt_after_bdat,           // 503 RFC 3030 2: the message data has begun
  need_mail_for_data,        // 503 DATA or BDAT before MAIL
  bdat_sequence,             // 503 DATA after BDAT, or BDAT after a failed chunk
  need_rcpt,                 // 503 DATA before any RCPT
  no_valid_recipients,       // 554 RCPTs given, none accepted (RFC 5321 3.3)
  bdat_not_offered,          // 502 CHUNKING not advertised
  starttls_not_offered,      // 502
  tls_already_active,        // 503 RFC 3207 4
  auth_not_offered,          // 502
  auth_encryption_required,  // 538 5.7.11 RFC 4954 6
  auth_already,              // 503 RFC 4954 4
  auth_in_transaction,       // 503 RFC 4954 4
};
std::string_view to_string(Refusal r);

struct VerbFlags {
  // Counts toward limits.commands_before_mail: everything but the transaction itself and QUIT,
  // inside a transaction too, so that MAIL/RSET or NOOP loops are bounded.
  bool junk = false;
  // The replies owed (and the pipelined next-hop commands) go first: the command's outcome depends
  // on the next hop's replies (DATA, BDAT), it changes what the connection is (EHLO, HELO,
  // STARTTLS, AUTH) or it ends it (QUIT). RFC 2920 3.1 lists them as the end of a pipelined group.
  bool flush_first = false;
};

constexpr VerbFlags verb_flags(Verb v) {
  switch (v) {
    case Verb::helo:
    case Verb::ehlo:
    case Verb::starttls:
    case Verb::auth: return {.junk = true, .flush_first = true};
    case Verb::mail:
    case Verb::rcpt: return {.junk = false, .flush_first = false};
    case Verb::data:
    case Verb::bdat:
    case Verb::quit: return {.junk = false, .flush_first = true};
    case Verb::rset:
    case Verb::noop:
    case Verb::vrfy:
    case Verb::expn:
    case Verb::help:
    case Verb::unknown: return {.junk = true, .flush_first = false};
  }
  return {};
}

// Go (nullopt) or the first refusal that applies to `v` given `f`. Verbs without preconditions
// (HELO, EHLO, RSET, NOOP, VRFY, EXPN, HELP, QUIT, unknown) always go; their argument syntax is
// not a matter of phase and is checked where they are handled.
std::optional<Refusal> check(const PhaseFacts& f, Verb v);

}  // namespace batv::relay::smtp
