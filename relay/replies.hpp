// replies: every SMTP reply batv-relay writes itself, in one place (OpenSMTPD / Postfix style).
//
// Each reply carries an RFC 3463 enhanced status code. Replies that come from the next hop are not
// here: they are passed through sanitised (relay/smtp/reply.hpp). Functions return the wire form,
// CRLF included. Host names inserted here come from our own config, never from a peer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/prvs.hpp"
#include "relay/session_end.hpp"
#include "relay/smtp/params.hpp"
#include "relay/smtp/phase.hpp"
#include "relay/smtp/reply.hpp"

namespace batv::relay::replies {

inline std::string line(int code, std::string_view text) {
  return std::to_string(code) + " " + std::string(text) + "\r\n";
}

// --- Connection ------------------------------------------------------------------------------------
inline std::string greeting(std::string_view host) { return line(220, std::string(host) + " ESMTP batv-relay"); }
// A load balancer's health check (PROXY v2 LOCAL, v1 UNKNOWN: relay/server.cpp): answered, closed.
inline std::string proxy_health_check(std::string_view host) {
  return line(221, "2.0.0 " + std::string(host) + " health check: closing connection");
}
inline std::string access_denied(std::string_view client) {
  return line(554, "5.7.1 Client " + std::string(client) + " is not allowed to relay through this server");
}
inline std::string too_many_sessions(std::string_view host) {
  return line(421, "4.7.0 " + std::string(host) + " Too many connections, try again later");
}
inline std::string too_many_from_client(std::string_view host) {
  return line(421, "4.7.0 " + std::string(host) + " Too many connections from your address, try again later");
}
inline std::string upstream_unavailable(std::string_view host) {
  return line(421, "4.4.1 " + std::string(host) + " next hop unavailable, try again later");
}
inline std::string upstream_tls_unavailable(std::string_view host) {
  return line(421, "4.7.0 " + std::string(host) + " next hop TLS unavailable, try again later");
}
inline std::string upstream_tls_failed(std::string_view host) {
  return line(421, "4.4.2 " + std::string(host) + " next hop TLS handshake failed, try again later");
}
inline std::string upstream_lost_closing(std::string_view host) {
  return line(421, "4.4.2 " + std::string(host) + " Next hop connection lost, closing");
}
inline std::string idle_timeout(std::string_view host) {
  return line(421, "4.4.2 " + std::string(host) + " Error: timeout exceeded");
}
inline std::string session_timeout(std::string_view host) {
  return line(421, "4.4.2 " + std::string(host) + " Error: session too long, closing");
}
inline std::string data_timeout(std::string_view host) {
  return line(421, "4.4.2 " + std::string(host) + " Error: DATA took too long, closing");
}
inline std::string too_many_errors(std::string_view) { return line(421, "4.7.0 Too many errors, closing"); }
inline std::string too_many_commands(std::string_view host) {
  return line(421, "4.7.0 " + std::string(host) + " Too many commands without a mail transaction, closing");
}
inline std::string shutting_down(std::string_view host) {
  return line(421, "4.3.2 " + std::string(host) + " Service shutting down, closing");
}
inline std::string bye() { return line(221, "2.0.0 Bye"); }

// --- Commands --------------------------------------------------------------------------------------
inline std::string ok() { return line(250, "2.0.0 OK"); }
inline std::string sender_ok() { return line(250, "2.1.0 Sender OK"); }
inline std::string helo(std::string_view host) { return line(250, host); }

// What our EHLO reply advertises: what we and the next hop both do (the session decides).
struct EhloOffer {
  bool pipelining = false;           // RFC 2920
  std::uint64_t size = 0;            // RFC 1870 4: always advertised; 0 = no fixed maximum
  bool eightbitmime = false;         // RFC 6152
  bool smtputf8 = false;             // RFC 6531
  bool enhancedstatuscodes = false;  // RFC 2034
  bool dsn = false;                  // RFC 3461
  bool chunking = false;             // RFC 3030
  bool starttls = false;             // RFC 3207
  std::vector<std::string> auth;     // RFC 4954 mechanisms, as the next hop named them; empty = no AUTH
};
// RFC 5321 4.1.1.1: "250-host", then one extension per line in this fixed order, the last line
// "250 ". The lines go through smtp::format_reply (mechanism names come from the next hop).
inline std::string ehlo(std::string_view host, const EhloOffer& o) {
  std::vector<std::string> lines{std::string(host)};
  if (o.pipelining) lines.emplace_back("PIPELINING");
  lines.push_back("SIZE " + std::to_string(o.size));
  if (o.eightbitmime) lines.emplace_back("8BITMIME");
  if (o.smtputf8) lines.emplace_back("SMTPUTF8");
  if (o.enhancedstatuscodes) lines.emplace_back("ENHANCEDSTATUSCODES");
  if (o.dsn) lines.emplace_back("DSN");
  if (o.chunking) lines.emplace_back("CHUNKING");
  if (o.starttls) lines.emplace_back("STARTTLS");
  if (!o.auth.empty()) {
    std::string auth = "AUTH";
    for (const auto& m : o.auth) auth.append(" ").append(m);
    lines.push_back(std::move(auth));
  }
  return smtp::format_reply(250, lines);
}
inline std::string help() { return line(214, "2.0.0 batv-relay: see RFC 5321"); }
inline std::string vrfy_cannot() {
  return line(252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery");
}
inline std::string vrfy_disabled() { return line(502, "5.5.1 VRFY and EXPN are disabled"); }
inline std::string ready_for_tls() { return line(220, "2.0.0 Ready to start TLS"); }
inline std::string auth_required() { return line(530, "5.7.0 Authentication required"); }
inline std::string auth_already() { return line(503, "5.5.1 Already authenticated"); }
inline std::string auth_in_transaction() { return line(503, "5.5.1 AUTH not permitted during a mail transaction"); }
inline std::string auth_cancelled() { return line(501, "5.7.0 Authentication cancelled"); }
inline std::string auth_line_too_long() { return line(500, "5.5.6 Authentication Exchange line is too long"); }
inline std::string auth_encryption_required() {
  return line(538, "5.7.11 Encryption required for requested authentication mechanism");
}
inline std::string tls_required() { return line(530, "5.7.0 Must issue a STARTTLS command first"); }
inline std::string tls_already_active() { return line(503, "5.5.1 TLS already active"); }
inline std::string starttls_syntax() { return line(501, "5.5.4 Syntax: STARTTLS"); }
inline std::string auth_syntax() { return line(501, "5.5.4 Syntax: AUTH mechanism [initial-response]"); }
inline std::string start_data() { return line(354, "End data with <CR><LF>.<CR><LF>"); }

// --- Client errors (RFC 5321 4.2.2; enhanced codes RFC 3463 3.6) ----------------------------------
inline std::string unknown_command() { return line(500, "5.5.1 Command unrecognized"); }
inline std::string line_too_long() { return line(500, "5.5.2 Line too long"); }
inline std::string nul_in_command() { return line(500, "5.5.2 NUL character in command"); }
inline std::string not_implemented(std::string_view what) {
  return line(502, "5.5.1 " + std::string(what) + " not available");
}
inline std::string helo_syntax(bool esmtp) {
  return line(501, esmtp ? "5.5.4 Syntax: EHLO hostname" : "5.5.4 Syntax: HELO hostname");
}
inline std::string need_helo() { return line(503, "5.5.1 Send HELO/EHLO first"); }
inline std::string nested_mail() { return line(503, "5.5.1 Sender already specified"); }
inline std::string need_mail() { return line(503, "5.5.1 Need MAIL before RCPT"); }
inline std::string need_mail_for_data() { return line(503, "5.5.1 Need MAIL command"); }  // DATA, BDAT
inline std::string need_rcpt() { return line(503, "5.5.1 Need RCPT before DATA"); }
inline std::string no_valid_recipients() { return line(554, "5.5.1 No valid recipients"); }
inline std::string bdat_sequence() { return line(503, "5.5.1 Cannot mix DATA and BDAT, or BDAT after a failed chunk"); }
inline std::string rcpt_after_bdat() { return line(503, "5.5.1 No RCPT after BDAT: the message data has begun"); }
inline std::string mail_syntax() { return line(501, "5.5.4 Syntax: MAIL FROM:<address> [parameters]"); }
inline std::string rcpt_syntax() { return line(501, "5.5.4 Syntax: RCPT TO:<address> [parameters]"); }
inline std::string bdat_syntax() { return line(501, "5.5.4 Syntax: BDAT size [LAST]"); }
inline std::string bad_sender(std::string_view why) { return line(501, "5.1.7 Bad sender address syntax: " + std::string(why)); }
inline std::string bad_recipient(std::string_view why) {
  return line(501, "5.1.3 Bad recipient address syntax: " + std::string(why));
}
inline std::string null_recipient() { return line(501, "5.1.3 Null recipient not allowed"); }
inline std::string param_unsupported(std::string_view kw) {
  return line(555, "5.5.4 Unsupported parameter " + std::string(kw));
}
inline std::string param_invalid(std::string_view kw) { return line(501, "5.5.4 Invalid value for " + std::string(kw)); }
inline std::string needs_smtputf8() { return line(553, "5.6.7 Address needs SMTPUTF8 (RFC 6531)"); }
inline std::string size_exceeded() { return line(552, "5.3.4 Message size exceeds fixed limit"); }
inline std::string too_many_recipients() { return line(452, "4.5.3 Too many recipients"); }
inline std::string separate_transaction() {
  return line(452, "4.5.3 This recipient needs a separate transaction (different envelope sender), try again");
}
inline std::string bare_newline() {
  return line(554, "5.6.0 Message contains a bare CR or LF (RFC 5321 2.3.8), rejected");
}

// The reply for each refusal of the phase table (relay/smtp/phase.hpp).
inline std::string refusal(smtp::Refusal r) {
  switch (r) {
    case smtp::Refusal::tls_required: return tls_required();
    case smtp::Refusal::auth_required: return auth_required();
    case smtp::Refusal::need_helo: return need_helo();
    case smtp::Refusal::nested_mail: return nested_mail();
    case smtp::Refusal::need_mail: return need_mail();
    case smtp::Refusal::rcpt_after_bdat: return rcpt_after_bdat();
    case smtp::Refusal::need_mail_for_data: return need_mail_for_data();
    case smtp::Refusal::bdat_sequence: return bdat_sequence();
    case smtp::Refusal::need_rcpt: return need_rcpt();
    case smtp::Refusal::no_valid_recipients: return no_valid_recipients();
    case smtp::Refusal::bdat_not_offered: return not_implemented("BDAT");
    case smtp::Refusal::starttls_not_offered: return not_implemented("STARTTLS");
    case smtp::Refusal::tls_already_active: return tls_already_active();
    case smtp::Refusal::auth_not_offered: return not_implemented("AUTH");
    case smtp::Refusal::auth_encryption_required: return auth_encryption_required();
    case smtp::Refusal::auth_already: return auth_already();
    case smtp::Refusal::auth_in_transaction: return auth_in_transaction();
  }
  return unknown_command();
}

// --- Inbound tag checks (the verdict named in the text, so a sender's NDR explains itself) --------
inline std::string_view verdict_text(crypto::Verdict v) {
  switch (v) {
    case crypto::Verdict::valid: return "valid tag";
    case crypto::Verdict::bad_signature: return "bad signature";
    case crypto::Verdict::expired: return "tag expired";
    case crypto::Verdict::unknown_key: return "unknown key";
    case crypto::Verdict::malformed: return "malformed tag";
    case crypto::Verdict::untagged: return "address not tagged";
  }
  return "?";
}
inline std::string bounce_refused(crypto::Verdict v) {
  return line(550, "5.7.1 bounce refused: " + std::string(verdict_text(v)));
}
inline std::string tag_not_verified(crypto::Verdict v) {
  return line(550, "5.7.1 tag does not verify: " + std::string(verdict_text(v)));
}
inline std::string too_many_invalid_recipients() { return line(421, "4.7.0 Too many invalid recipients, closing"); }

// --- Next-hop trouble (temporary: the client keeps the message and retries) ------------------------
inline std::string upstream_failed() { return line(451, "4.4.2 Next hop connection lost, try again later"); }
inline std::string upstream_timeout() { return line(451, "4.4.2 Next hop timed out, try again later"); }
inline std::string upstream_garbled() { return line(451, "4.4.0 Next hop sent an invalid reply, try again later"); }
inline std::string upstream_unreachable() { return line(451, "4.4.1 Next hop unavailable, try again later"); }
// The client was offered CHUNKING at EHLO, but the next hop reached since (a new connection)
// does not offer it: RFC 3463 X.3.3, system not capable of selected features.
inline std::string upstream_no_chunking() {
  return line(451, "4.3.3 Next hop does not offer BDAT (CHUNKING) now, try again later");
}
// The same for a MAIL or RCPT parameter (BODY=8BITMIME, SMTPUTF8, RET/ENVID/NOTIFY/ORCPT) that the
// client was offered from what the next hop offered before (upstream_connect = "mail"), but that
// the next hop reached at MAIL does not offer: temporary, since the next EHLO no longer offers it.
inline std::string upstream_lacks(std::string_view extension) {
  return line(451, "4.3.3 Next hop does not offer " + std::string(extension) + " now, try again later");
}

// The reply for each refusal of a MAIL/RCPT parameter (relay/smtp/params.hpp).
inline std::string param_refusal(const smtp::ParamProblem& p) {
  switch (p.why) {
    case smtp::ParamRefusal::unsupported: return param_unsupported(p.name);
    case smtp::ParamRefusal::invalid: return param_invalid(p.name);
    case smtp::ParamRefusal::size_exceeded: return size_exceeded();
    case smtp::ParamRefusal::needs_smtputf8: return needs_smtputf8();
    case smtp::ParamRefusal::next_hop_lacks: return upstream_lacks(p.name);
  }
  return param_unsupported(p.name);
}

// A next hop opened at MAIL (upstream_connect = "mail") whose TLS policy could not be met: that
// MAIL fails, the session goes on (at connect the same trouble is a 421, upstream_tls_unavailable).
inline std::string upstream_tls_unavailable_mail() {
  return line(451, "4.7.0 Next hop TLS unavailable, try again later");
}
inline std::string upstream_tls_failed_mail() {
  return line(451, "4.4.2 Next hop TLS handshake failed, try again later");
}

// --- How a proxy session ends (relay/session.hpp, Session::finish) ---------------------------------
// The final reply per SessionEnd, in one table: empty = nothing to write (the client is gone, the
// value belongs to a no-hop role, or the TLS layer never came up). `client` is the client's IP
// address (access_denied names it). Two ends have variants the session names itself: the
// per-client session limit (too_many_from_client) and a next hop unreachable at connect for a TLS
// reason (upstream_tls_unavailable, upstream_tls_failed).
inline std::string final_reply(SessionEnd e, std::string_view host, std::string_view client) {
  switch (e) {
    case SessionEnd::quit: return bye();
    case SessionEnd::idle_timeout: return idle_timeout(host);
    case SessionEnd::data_timeout: return data_timeout(host);
    case SessionEnd::too_many_errors: return too_many_errors(host);
    case SessionEnd::too_many_commands: return too_many_commands(host);
    case SessionEnd::too_many_invalid_recipients: return too_many_invalid_recipients();
    case SessionEnd::session_timeout: return session_timeout(host);
    case SessionEnd::upstream_lost: return upstream_lost_closing(host);
    case SessionEnd::upstream_unavailable: return upstream_unavailable(host);
    case SessionEnd::shutdown: return shutting_down(host);
    case SessionEnd::access_denied: return access_denied(client);
    case SessionEnd::too_many_sessions: return too_many_sessions(host);
    case SessionEnd::none:
    case SessionEnd::client_closed:
    case SessionEnd::tls_failed:
    case SessionEnd::io_error:
    case SessionEnd::protocol_error:
    case SessionEnd::request_too_large: return {};
  }
  return {};
}

}  // namespace batv::relay::replies
