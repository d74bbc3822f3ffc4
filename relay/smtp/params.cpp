#include "relay/smtp/params.hpp"

#include <charconv>
#include <utility>

#include "conf/ascii.hpp"

namespace batv::relay::smtp {

namespace {

using text::iequals;

ParamProblem problem(ParamRefusal why, std::string name = {}) { return ParamProblem{why, std::move(name)}; }

// The value of a SIZE parameter that valid_param_value accepted (1*20DIGIT fitting std::uint64_t);
// nullopt for anything else, which the callers never see after the first check.
std::optional<std::uint64_t> size_value(const Param& p) {
  if (!p.value) return std::nullopt;
  const std::string_view v = *p.value;
  std::uint64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size()) return std::nullopt;
  return n;
}

bool is_body(const Param& p, std::string_view value) {
  return iequals(p.keyword, "BODY") && p.value && iequals(*p.value, value);
}

// The checks every offered keyword shares: offered at all, then a value its keyword allows.
std::optional<ParamProblem> offered_and_valid(const Param& p, bool offered) {
  if (!offered) return problem(ParamRefusal::unsupported, text::upper(p.keyword));
  if (!valid_param_value(p.keyword, p.value)) return problem(ParamRefusal::invalid, text::upper(p.keyword));
  return std::nullopt;
}

}  // namespace

std::string_view to_string(ParamRefusal r) {
  switch (r) {
    case ParamRefusal::unsupported: return "unsupported";
    case ParamRefusal::invalid: return "invalid";
    case ParamRefusal::size_exceeded: return "size_exceeded";
    case ParamRefusal::needs_smtputf8: return "needs_smtputf8";
    case ParamRefusal::next_hop_lacks: return "next_hop_lacks";
  }
  return "?";
}

MailParams check_mail_params(const Path& mail, const ParamOffer& offered) {
  MailParams out;
  for (const Param& p : mail.params) {
    const std::string_view kw = p.keyword;
    if (iequals(kw, "AUTH")) {
      // RFC 4954 5: AUTH=<> or AUTH=xtext, passed on when the next hop does AUTH.
      if (!offered.auth) {
        out.problem = problem(ParamRefusal::unsupported, text::upper(kw));
        return out;
      }
      if (!p.value || (*p.value != "<>" && !decode_xtext(*p.value))) {
        out.problem = problem(ParamRefusal::invalid, text::upper(kw));
        return out;
      }
      continue;
    }
    bool ok = false;
    if (iequals(kw, "SIZE")) ok = true;  // always offered (RFC 1870)
    // 7BIT always; 8BITMIME when offered (RFC 6152); BINARYMIME never (CHUNKING's binary body,
    // RFC 3030 3, is not offered); any other value is not something we offered either.
    else if (iequals(kw, "BODY")) ok = is_body(p, "7BIT") || (is_body(p, "8BITMIME") && offered.eightbitmime);
    else if (iequals(kw, "SMTPUTF8")) ok = offered.smtputf8;
    else if (iequals(kw, "RET") || iequals(kw, "ENVID")) ok = offered.dsn;
    if (auto bad = offered_and_valid(p, ok)) {
      out.problem = std::move(bad);
      return out;
    }
    if (iequals(kw, "SIZE") && size_value(p).value_or(0) > offered.size) {
      out.problem = problem(ParamRefusal::size_exceeded);
      return out;
    }
    if (iequals(kw, "SMTPUTF8")) out.smtputf8 = true;
  }
  if (mail.non_ascii && !out.smtputf8) out.problem = problem(ParamRefusal::needs_smtputf8);
  return out;
}

std::optional<ParamProblem> recheck_mail_params(const Path& mail, const Capabilities& now) {
  for (const Param& p : mail.params) {
    const std::string_view kw = p.keyword;
    if (is_body(p, "8BITMIME") && !now.eightbitmime) return problem(ParamRefusal::next_hop_lacks, "8BITMIME");
    if (iequals(kw, "SMTPUTF8") && !now.smtputf8) return problem(ParamRefusal::next_hop_lacks, "SMTPUTF8");
    if ((iequals(kw, "RET") || iequals(kw, "ENVID")) && !now.dsn) return problem(ParamRefusal::next_hop_lacks, "DSN");
    if (iequals(kw, "SIZE") && now.size && *now.size > 0 && size_value(p).value_or(0) > *now.size)
      return problem(ParamRefusal::size_exceeded);
  }
  return std::nullopt;
}

std::string forward_mail_params(const Path& mail, const Capabilities& next_hop) {
  if (next_hop.size_advertised) return std::string(mail.params_text);
  std::string out;
  for (const Param& p : mail.params) {
    if (iequals(p.keyword, "SIZE")) continue;
    if (!out.empty()) out += ' ';
    out += p.keyword;
    if (p.value) out.append("=").append(*p.value);
  }
  return out;
}

std::optional<ParamProblem> check_rcpt_params(const Path& rcpt, const ParamOffer& offered, const Capabilities* now,
                                              bool smtputf8) {
  for (const Param& p : rcpt.params) {
    const bool ok = (iequals(p.keyword, "NOTIFY") || iequals(p.keyword, "ORCPT")) && offered.dsn;
    if (auto bad = offered_and_valid(p, ok)) return bad;
    // Offered from an earlier EHLO of the next hop (connecting at MAIL), gone from this one.
    if (now && !now->dsn) return problem(ParamRefusal::next_hop_lacks, "DSN");
  }
  if (rcpt.non_ascii && !smtputf8) return problem(ParamRefusal::needs_smtputf8);
  return std::nullopt;
}

}  // namespace batv::relay::smtp
