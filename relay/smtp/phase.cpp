#include "relay/smtp/phase.hpp"

namespace batv::relay::smtp {

namespace {

// DATA (bdat = false) and BDAT share their preconditions but for the BDAT sequence rules.
std::optional<Refusal> data_check(const PhaseFacts& f, bool bdat) {
  if (bdat && !f.chunking_offered) return Refusal::bdat_not_offered;
  if (f.tls_missing) return Refusal::tls_required;
  if (!f.helo_seen) return Refusal::need_helo;
  if (!f.in_transaction) return Refusal::need_mail_for_data;
  if (!bdat && f.bdat_used) return Refusal::bdat_sequence;
  if (bdat && f.bdat_failed) return Refusal::bdat_sequence;
  if (!f.recipients_accepted) return f.recipients_tried ? Refusal::no_valid_recipients : Refusal::need_rcpt;
  return std::nullopt;
}

}  // namespace

std::optional<Refusal> check(const PhaseFacts& f, Verb v) {
  switch (v) {
    case Verb::mail:
      if (f.tls_missing) return Refusal::tls_required;
      if (f.auth_missing) return Refusal::auth_required;
      if (!f.helo_seen) return Refusal::need_helo;
      if (f.in_transaction) return Refusal::nested_mail;
      return std::nullopt;
    case Verb::rcpt:
      if (f.tls_missing) return Refusal::tls_required;
      if (!f.helo_seen) return Refusal::need_helo;
      if (!f.in_transaction) return Refusal::need_mail;
      if (f.bdat_used) return Refusal::rcpt_after_bdat;  // the next hop may be gone (a failed chunk)
      return std::nullopt;
    case Verb::data: return data_check(f, false);
    case Verb::bdat: return data_check(f, true);
    case Verb::starttls:
      if (!f.tls_offered) return Refusal::starttls_not_offered;
      if (f.tls_active) return Refusal::tls_already_active;
      return std::nullopt;
    case Verb::auth:
      if (!f.auth_offered) return f.auth_needs_tls ? Refusal::auth_encryption_required : Refusal::auth_not_offered;
      if (f.authenticated) return Refusal::auth_already;
      if (f.in_transaction) return Refusal::auth_in_transaction;
      return std::nullopt;
    case Verb::helo:
    case Verb::ehlo:
    case Verb::rset:
    case Verb::noop:
    case Verb::quit:
    case Verb::vrfy:
    case Verb::expn:
    case Verb::help:
    case Verb::unknown: return std::nullopt;
  }
  return std::nullopt;
}

std::string_view to_string(Refusal r) {
  switch (r) {
    case Refusal::tls_required: return "tls_required";
    case Refusal::auth_required: return "auth_required";
    case Refusal::need_helo: return "need_helo";
    case Refusal::nested_mail: return "nested_mail";
    case Refusal::need_mail: return "need_mail";
    case Refusal::rcpt_after_bdat: return "rcpt_after_bdat";
    case Refusal::need_mail_for_data: return "need_mail_for_data";
    case Refusal::bdat_sequence: return "bdat_sequence";
    case Refusal::need_rcpt: return "need_rcpt";
    case Refusal::no_valid_recipients: return "no_valid_recipients";
    case Refusal::bdat_not_offered: return "bdat_not_offered";
    case Refusal::starttls_not_offered: return "starttls_not_offered";
    case Refusal::tls_already_active: return "tls_already_active";
    case Refusal::auth_not_offered: return "auth_not_offered";
    case Refusal::auth_encryption_required: return "auth_encryption_required";
    case Refusal::auth_already: return "auth_already";
    case Refusal::auth_in_transaction: return "auth_in_transaction";
  }
  return "?";
}

}  // namespace batv::relay::smtp
