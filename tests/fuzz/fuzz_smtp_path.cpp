// Fuzz target: the path and ESMTP-parameter parsers (relay/smtp/command: parse_mail_from,
// parse_rcpt_to, valid_param_value, decode_xtext / encode_xtext) on arbitrary MAIL / RCPT
// argument text ("FROM:<a@b> SIZE=10").
// Invariants (tests/fuzz/path_checks.hpp, plus here):
//  - an accepted path holds no control byte, respects the RFC 5321 4.5.3.1 sizes at the last
//    "@", sets non_ascii exactly for bytes >= 0x80, has no duplicate or over-many params, and
//    re-parses to itself when rebuilt; a mailbox accepted in MAIL is accepted in RCPT;
//  - what the relay derives from it still parses: the prvs-tagged MAIL FROM, the RCPT address a
//    tag is stripped to;
//  - a parameter value that valid_param_value accepts meets its RFC (SIZE digits, ENVID / ORCPT
//    xtext decoding to printable ASCII within 100 / 500 characters, SMTPUTF8 without a value);
//  - xtext: decode(encode(x)) == x for any bytes, encode gives valid xtext, decode never grows.
//  - parameter acceptance (relay/smtp/params): offering more never refuses what offering less
//    accepted; an accepted MAIL has only valid values (AUTH: "<>" or xtext), sets smtputf8
//    exactly for an SMTPUTF8 parameter, and passes a next hop that offers everything; a refusal
//    names a keyword sent (upper-cased) or an extension; the parameters forwarded without
//    next-hop SIZE re-parse to the same ones minus SIZE, and with it are the text as sent.
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "path_checks.hpp"
#include "relay/smtp/params.hpp"

using namespace batv::relay::smtp;

namespace {

bool printable(std::string_view s) {
  for (const char ch : s)
    if (ch < 0x20 || ch > 0x7e) return false;
  return true;
}

void check_param_value(const Param& p) {
  if (!valid_param_value(p.keyword, p.value)) return;
  if (fuzz::iequal(p.keyword, "SMTPUTF8")) {
    if (p.value) std::abort();
    return;
  }
  if (!p.value) std::abort();
  const std::string_view v = *p.value;
  if (fuzz::iequal(p.keyword, "SIZE")) {
    if (v.empty() || v.size() > 20 || v.find_first_not_of("0123456789") != std::string_view::npos) std::abort();
  } else if (fuzz::iequal(p.keyword, "ENVID")) {
    const auto d = decode_xtext(v);
    if (!d || d->empty() || d->size() > 100 || !printable(*d)) std::abort();
  } else if (fuzz::iequal(p.keyword, "ORCPT")) {
    const auto semi = v.find(';');
    if (semi == std::string_view::npos || semi == 0) std::abort();
    const auto d = decode_xtext(v.substr(semi + 1));
    if (!d || d->empty() || d->size() > 500 || !printable(*d)) std::abort();
  } else if (!fuzz::iequal(p.keyword, "BODY") && !fuzz::iequal(p.keyword, "RET") &&
             !fuzz::iequal(p.keyword, "NOTIFY")) {
    std::abort();  // an unknown keyword is never valid
  }
}

void check_xtext(std::string_view in) {
  const std::string enc = encode_xtext(in);
  const auto back = decode_xtext(enc);
  if (!back || *back != in) std::abort();
  for (const char ch : enc)
    if (ch < '!' || ch > '~' || ch == '=') std::abort();
  if (const auto d = decode_xtext(in)) {
    if (d->size() > in.size()) std::abort();
    if (encode_xtext(*d).size() < d->size()) std::abort();
  }
}

bool named_keyword(const Path& path, const std::string& name) {
  for (const Param& p : path.params)
    if (fuzz::iequal(p.keyword, name)) {
      for (const char ch : name)
        if (ch >= 'a' && ch <= 'z') return false;  // upper-cased
      return true;
    }
  return false;
}

void check_problem(const Path& path, const ParamProblem& pr) {
  switch (pr.why) {
    case ParamRefusal::unsupported:
    case ParamRefusal::invalid:
      if (!named_keyword(path, pr.name)) std::abort();
      break;
    case ParamRefusal::next_hop_lacks:
      if (pr.name != "8BITMIME" && pr.name != "SMTPUTF8" && pr.name != "DSN") std::abort();
      break;
    case ParamRefusal::size_exceeded:
    case ParamRefusal::needs_smtputf8:
      if (!pr.name.empty()) std::abort();
      break;
  }
}

void check_mail_acceptance(const Path& path) {
  ParamOffer none;
  ParamOffer all;
  all.size = UINT64_MAX;
  all.eightbitmime = all.smtputf8 = all.dsn = all.auth = true;
  const MailParams less = check_mail_params(path, none);
  const MailParams more = check_mail_params(path, all);
  if (less.problem) check_problem(path, *less.problem);
  if (more.problem) check_problem(path, *more.problem);
  if (less.ok() && !more.ok()) std::abort();
  if (more.problem && more.problem->why == ParamRefusal::size_exceeded) std::abort();
  if (more.ok()) {
    bool utf8 = false;
    for (const Param& p : path.params) {
      if (fuzz::iequal(p.keyword, "AUTH")) {
        if (!p.value || (*p.value != "<>" && !decode_xtext(*p.value))) std::abort();
      } else if (!valid_param_value(p.keyword, p.value)) {
        std::abort();
      }
      utf8 = utf8 || fuzz::iequal(p.keyword, "SMTPUTF8");
    }
    if (more.smtputf8 != utf8) std::abort();
    Capabilities hop;
    hop.eightbitmime = hop.smtputf8 = hop.dsn = true;
    if (recheck_mail_params(path, hop)) std::abort();
  }
  if (const auto r = recheck_mail_params(path, Capabilities{})) check_problem(path, *r);

  Capabilities sized;
  sized.size_advertised = true;
  if (forward_mail_params(path, sized) != path.params_text) std::abort();
  const std::string fwd = forward_mail_params(path, Capabilities{});
  std::string text;
  const PathResult again = fuzz::reparse(false, text, path.null_path ? "" : "a@example.com", fwd);
  if (!again.ok()) std::abort();
  std::size_t i = 0;
  for (const Param& p : path.params) {
    if (fuzz::iequal(p.keyword, "SIZE")) continue;
    if (i >= again.path->params.size()) std::abort();
    const Param& q = again.path->params[i++];
    if (q.keyword != p.keyword || q.value != p.value) std::abort();
  }
  if (i != again.path->params.size()) std::abort();
}

void check_rcpt_acceptance(const Path& path) {
  ParamOffer all;
  all.dsn = true;
  Capabilities hop;
  hop.dsn = true;
  const auto less = check_rcpt_params(path, ParamOffer{}, nullptr, false);
  const auto more = check_rcpt_params(path, all, &hop, true);
  if (less) check_problem(path, *less);
  if (more) check_problem(path, *more);
  if (!less && more) std::abort();
  if (more && (more->why == ParamRefusal::next_hop_lacks || more->why == ParamRefusal::needs_smtputf8)) std::abort();
  if (!more)
    for (const Param& p : path.params)
      if (!valid_param_value(p.keyword, p.value)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  for (const bool rcpt : {false, true}) {
    const PathResult r = rcpt ? parse_rcpt_to(in) : parse_mail_from(in);
    fuzz::check_path(in, r, rcpt);
    if (r.ok()) {
      for (const Param& p : r.path->params) check_param_value(p);
      if (rcpt) check_rcpt_acceptance(*r.path);
      else check_mail_acceptance(*r.path);
    }
  }
  // The same text as a parameter "KEYWORD[=value]" on its own.
  const std::size_t eq = in.find('=');
  Param p;
  p.keyword = in.substr(0, eq);
  if (eq != std::string_view::npos) p.value = in.substr(eq + 1);
  check_param_value(p);
  check_xtext(in);
  return 0;
}
