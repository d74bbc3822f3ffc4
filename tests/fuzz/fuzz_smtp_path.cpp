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
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "path_checks.hpp"

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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  for (const bool rcpt : {false, true}) {
    const PathResult r = rcpt ? parse_rcpt_to(in) : parse_mail_from(in);
    fuzz::check_path(in, r, rcpt);
    if (r.ok())
      for (const Param& p : r.path->params) check_param_value(p);
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
