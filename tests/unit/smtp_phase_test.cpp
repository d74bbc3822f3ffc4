// Unit tests for relay/smtp/phase.hpp: the phase table, row by row (facts, verb) -> refusal or go,
// and the per-verb flags (junk commands as Postfix smtpd_junk_command_limit counts them; the
// commands that end a pipelined group, RFC 2920 3.1).
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <vector>

#include "relay/replies.hpp"
#include "relay/smtp/phase.hpp"

using batv::relay::smtp::check;
using batv::relay::smtp::PhaseFacts;
using batv::relay::smtp::Refusal;
using batv::relay::smtp::Verb;
using batv::relay::smtp::verb_flags;

namespace {

// A client that said EHLO, on a listener without TLS or AUTH requirements.
PhaseFacts greeted() {
  PhaseFacts f;
  f.helo_seen = true;
  return f;
}
PhaseFacts in_tx() {
  PhaseFacts f = greeted();
  f.in_transaction = true;
  return f;
}
PhaseFacts ready_for_data() {
  PhaseFacts f = in_tx();
  f.recipients_tried = f.recipients_accepted = true;
  f.chunking_offered = true;
  return f;
}

struct Row {
  const char* name;
  PhaseFacts facts;
  Verb verb;
  std::optional<Refusal> want;
};

std::vector<Row> rows() {
  std::vector<Row> r;
  auto with = [](PhaseFacts f, auto change) {
    change(f);
    return f;
  };
  // MAIL
  r.push_back({"MAIL before EHLO", PhaseFacts{}, Verb::mail, Refusal::need_helo});
  r.push_back({"MAIL after EHLO", greeted(), Verb::mail, std::nullopt});
  r.push_back({"MAIL inside a transaction", in_tx(), Verb::mail, Refusal::nested_mail});
  r.push_back({"MAIL without the TLS the listener requires, even before EHLO",
               with(PhaseFacts{}, [](PhaseFacts& f) { f.tls_missing = f.auth_missing = true; }), Verb::mail,
               Refusal::tls_required});
  r.push_back({"MAIL without the AUTH the client needs, before EHLO too",
               with(PhaseFacts{}, [](PhaseFacts& f) { f.auth_missing = true; }), Verb::mail, Refusal::auth_required});
  // RCPT
  r.push_back({"RCPT before EHLO", PhaseFacts{}, Verb::rcpt, Refusal::need_helo});
  r.push_back({"RCPT before MAIL", greeted(), Verb::rcpt, Refusal::need_mail});
  r.push_back({"RCPT in a transaction", in_tx(), Verb::rcpt, std::nullopt});
  r.push_back({"RCPT without TLS", with(in_tx(), [](PhaseFacts& f) { f.tls_missing = true; }), Verb::rcpt,
               Refusal::tls_required});
  r.push_back({"RCPT needs no AUTH of its own (MAIL did)", with(in_tx(), [](PhaseFacts& f) { f.auth_missing = true; }),
               Verb::rcpt, std::nullopt});
  r.push_back({"RCPT after a BDAT chunk", with(in_tx(), [](PhaseFacts& f) { f.bdat_used = true; }), Verb::rcpt,
               Refusal::rcpt_after_bdat});
  // DATA
  r.push_back({"DATA before EHLO", PhaseFacts{}, Verb::data, Refusal::need_helo});
  r.push_back({"DATA before MAIL", greeted(), Verb::data, Refusal::need_mail_for_data});
  r.push_back({"DATA before RCPT", in_tx(), Verb::data, Refusal::need_rcpt});
  r.push_back({"DATA with every RCPT refused",
               with(in_tx(), [](PhaseFacts& f) { f.recipients_tried = true; }), Verb::data,
               Refusal::no_valid_recipients});
  r.push_back({"DATA with a recipient", ready_for_data(), Verb::data, std::nullopt});
  r.push_back({"DATA after BDAT", with(ready_for_data(), [](PhaseFacts& f) { f.bdat_used = true; }), Verb::data,
               Refusal::bdat_sequence});
  r.push_back({"DATA without TLS", with(ready_for_data(), [](PhaseFacts& f) { f.tls_missing = true; }), Verb::data,
               Refusal::tls_required});
  // BDAT
  r.push_back({"BDAT not offered comes first", with(PhaseFacts{}, [](PhaseFacts& f) { f.tls_missing = true; }),
               Verb::bdat, Refusal::bdat_not_offered});
  r.push_back({"BDAT before MAIL", with(greeted(), [](PhaseFacts& f) { f.chunking_offered = true; }), Verb::bdat,
               Refusal::need_mail_for_data});
  r.push_back({"BDAT with a recipient", ready_for_data(), Verb::bdat, std::nullopt});
  r.push_back({"BDAT after BDAT", with(ready_for_data(), [](PhaseFacts& f) { f.bdat_used = true; }), Verb::bdat,
               std::nullopt});
  r.push_back({"BDAT after a failed chunk",
               with(ready_for_data(), [](PhaseFacts& f) { f.bdat_used = f.bdat_failed = true; }), Verb::bdat,
               Refusal::bdat_sequence});
  r.push_back({"BDAT with every RCPT refused",
               with(ready_for_data(), [](PhaseFacts& f) { f.recipients_accepted = false; }), Verb::bdat,
               Refusal::no_valid_recipients});
  // STARTTLS
  r.push_back({"STARTTLS without a certificate (or on implicit TLS)", greeted(), Verb::starttls,
               Refusal::starttls_not_offered});
  r.push_back({"STARTTLS offered", with(greeted(), [](PhaseFacts& f) { f.tls_offered = true; }), Verb::starttls,
               std::nullopt});
  r.push_back({"STARTTLS offered, before EHLO too", with(PhaseFacts{}, [](PhaseFacts& f) { f.tls_offered = true; }),
               Verb::starttls, std::nullopt});
  r.push_back({"STARTTLS twice", with(greeted(), [](PhaseFacts& f) { f.tls_offered = f.tls_active = true; }),
               Verb::starttls, Refusal::tls_already_active});
  // AUTH
  r.push_back({"AUTH not offered", greeted(), Verb::auth, Refusal::auth_not_offered});
  r.push_back({"AUTH offered only over TLS", with(greeted(), [](PhaseFacts& f) { f.auth_needs_tls = true; }),
               Verb::auth, Refusal::auth_encryption_required});
  r.push_back({"AUTH offered", with(greeted(), [](PhaseFacts& f) { f.auth_offered = true; }), Verb::auth,
               std::nullopt});
  r.push_back({"AUTH twice", with(greeted(), [](PhaseFacts& f) { f.auth_offered = f.authenticated = true; }),
               Verb::auth, Refusal::auth_already});
  r.push_back({"AUTH inside a transaction", with(in_tx(), [](PhaseFacts& f) { f.auth_offered = true; }), Verb::auth,
               Refusal::auth_in_transaction});
  // Verbs without preconditions
  for (Verb v : {Verb::helo, Verb::ehlo, Verb::rset, Verb::noop, Verb::quit, Verb::vrfy, Verb::expn, Verb::help,
                 Verb::unknown}) {
    r.push_back({"no preconditions, fresh session", PhaseFacts{}, v, std::nullopt});
    r.push_back({"no preconditions, everything missing",
                 with(PhaseFacts{}, [](PhaseFacts& f) { f.tls_missing = f.auth_missing = true; }), v, std::nullopt});
  }
  return r;
}

}  // namespace

TEST_CASE("smtp::check: the phase table, row by row") {
  for (const Row& row : rows()) {
    CAPTURE(row.name);
    CAPTURE(batv::relay::smtp::to_string(row.verb));
    const auto got = check(row.facts, row.verb);
    CHECK(got.has_value() == row.want.has_value());
    if (got && row.want) CHECK(batv::relay::smtp::to_string(*got) == batv::relay::smtp::to_string(*row.want));
  }
}

TEST_CASE("smtp::check: every refusal has a 5xx reply with the command's code") {
  namespace replies = batv::relay::replies;
  CHECK(replies::refusal(Refusal::need_helo) == replies::need_helo());
  CHECK(replies::refusal(Refusal::no_valid_recipients).substr(0, 4) == "554 ");
  CHECK(replies::refusal(Refusal::auth_encryption_required).substr(0, 4) == "538 ");
  CHECK(replies::refusal(Refusal::bdat_not_offered) == replies::not_implemented("BDAT"));
  for (int i = 0; i <= static_cast<int>(Refusal::auth_in_transaction); ++i) {
    const auto r = static_cast<Refusal>(i);
    CAPTURE(batv::relay::smtp::to_string(r));
    CHECK(batv::relay::smtp::to_string(r) != "?");
    CHECK(replies::refusal(r)[0] == '5');
  }
}

TEST_CASE("smtp::verb_flags: junk commands and the end of a pipelined group") {
  // Postfix smtpd_junk_command_limit: everything but the transaction itself and QUIT.
  for (Verb v : {Verb::mail, Verb::rcpt, Verb::data, Verb::bdat, Verb::quit}) CHECK_FALSE(verb_flags(v).junk);
  for (Verb v : {Verb::helo, Verb::ehlo, Verb::rset, Verb::noop, Verb::vrfy, Verb::expn, Verb::help, Verb::starttls,
                 Verb::auth, Verb::unknown})
    CHECK(verb_flags(v).junk);
  // RFC 2920 3.1: EHLO, HELO, DATA, (BDAT,) QUIT, STARTTLS and AUTH end a group; MAIL, RCPT, RSET,
  // NOOP... may be pipelined behind one another.
  for (Verb v : {Verb::helo, Verb::ehlo, Verb::data, Verb::bdat, Verb::quit, Verb::starttls, Verb::auth})
    CHECK(verb_flags(v).flush_first);
  for (Verb v : {Verb::mail, Verb::rcpt, Verb::rset, Verb::noop, Verb::vrfy, Verb::expn, Verb::help, Verb::unknown})
    CHECK_FALSE(verb_flags(v).flush_first);
  static_assert(!verb_flags(Verb::mail).junk && verb_flags(Verb::noop).junk);
}
