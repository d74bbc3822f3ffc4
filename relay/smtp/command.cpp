#include "relay/smtp/command.hpp"

#include <array>
#include <utility>

#include "conf/ascii.hpp"

namespace batv::relay::smtp {

namespace {

using text::iequals;
using text::is_alnum;
using text::is_digit;
using text::istarts_with;
using text::is_xdigit;
constexpr bool is_upper_hex(unsigned char c) { return is_digit(static_cast<char>(c)) || (c >= 'A' && c <= 'F'); }
constexpr bool is_control(unsigned char c) { return c < 0x20 || c == 0x7f; }
constexpr bool is_8bit(unsigned char c) { return c >= 0x80; }

unsigned char at(std::string_view s, std::size_t i) { return static_cast<unsigned char>(s[i]); }

std::string_view trim_spaces(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

// RFC 3629 4: well-formed UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF).
// RFC 6531 3.3 requires UTF-8 in addresses and parameter values; anything else is rejected here
// so that it is never forwarded.
bool valid_utf8(std::string_view s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = at(s, i);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // bounds of the second byte
    if (c >= 0xc2 && c <= 0xdf) len = 2;
    else if (c == 0xe0) len = 3, lo = 0xa0;
    else if (c >= 0xe1 && c <= 0xec) len = 3;
    else if (c == 0xed) len = 3, hi = 0x9f;
    else if (c >= 0xee && c <= 0xef) len = 3;
    else if (c == 0xf0) len = 4, lo = 0x90;
    else if (c >= 0xf1 && c <= 0xf3) len = 4;
    else if (c == 0xf4) len = 4, hi = 0x8f;
    else return false;
    if (s.size() - i < len) return false;
    if (at(s, i + 1) < lo || at(s, i + 1) > hi) return false;
    for (std::size_t k = 2; k < len; ++k)
      if (at(s, i + k) < 0x80 || at(s, i + k) > 0xbf) return false;
    i += len;
  }
  return true;
}

// 1*20DIGIT that fits std::uint64_t (RFC 1870 3 size-value, RFC 3030 2 chunk-size).
std::optional<std::uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::uint64_t v = 0;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (!is_digit(c)) return std::nullopt;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  return v;
}

// RFC 5322 3.2.3 atext, extended by RFC 6531 3.3 with UTF8-non-ascii (validated separately).
bool is_atext(unsigned char c) {
  if (is_alnum(c) || is_8bit(c)) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-':
    case '/': case '=': case '?': case '^': case '_': case '`': case '{': case '|': case '}': case '~':
      return true;
    default:
      return false;
  }
}

// Dot-string = Atom *("." Atom) (RFC 5321 4.1.2).
bool valid_dot_string(std::string_view s) {
  if (s.empty()) return false;
  bool prev_dot = true;  // a leading "." is as bad as ".."
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '.') {
      if (prev_dot) return false;
      prev_dot = true;
    } else if (is_atext(c)) {
      prev_dot = false;
    } else {
      return false;
    }
  }
  return !prev_dot;
}

// Quoted-string = DQUOTE *QcontentSMTP DQUOTE (RFC 5321 4.1.2); qtextSMTP = %d32-33 / %d35-91 /
// %d93-126, plus UTF8-non-ascii (RFC 6531 3.3); quoted-pairSMTP = "\" %d32-126.
bool valid_quoted_string(std::string_view s) {
  if (s.size() < 2 || s.front() != '"' || s.back() != '"') return false;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    const unsigned char c = at(s, i);
    if (c == '\\') {
      if (i + 2 >= s.size()) return false;  // the escape would eat the closing quote
      const unsigned char e = at(s, ++i);
      if (e < 32 || e > 126) return false;
    } else if (c == '"' || (c < 32) || c == 127) {
      return false;
    }
  }
  return true;
}

bool valid_local_part(std::string_view s) {
  const bool ok = !s.empty() && s.front() == '"' ? valid_quoted_string(s) : valid_dot_string(s);
  return ok && valid_utf8(s);
}

// sub-domain = Let-dig [Ldh-str] (RFC 5321 4.1.2), or a U-label (RFC 6531 3.3) whose bytes >= 0x80
// count as letters here. ASCII labels are at most 63 octets (RFC 1035 2.3.4); a U-label's limit
// applies to its A-label form, which we do not compute.
bool valid_label(std::string_view l) {
  if (l.empty()) return false;
  const auto let_dig = [](unsigned char c) { return is_alnum(c) || is_8bit(c); };
  if (!let_dig(at(l, 0)) || !let_dig(at(l, l.size() - 1))) return false;
  bool ascii = true;
  for (const char ch : l) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_8bit(c)) ascii = false;
    else if (!is_alnum(c) && c != '-') return false;
  }
  return !ascii || l.size() <= conf::fixed::max_label_length;
}

bool valid_domain_name(std::string_view d) {
  if (d.empty()) return false;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = d.find('.', start);
    if (!valid_label(d.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start)))
      return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return valid_utf8(d);
}

// IPv4-address-literal = Snum 3("." Snum); Snum = 1*3DIGIT, 0-255 (RFC 5321 4.1.3).
bool valid_ipv4(std::string_view s) {
  int parts = 0;
  std::size_t start = 0;
  for (;;) {
    const std::size_t dot = s.find('.', start);
    const std::string_view p = s.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (p.empty() || p.size() > 3) return false;
    int v = 0;
    for (const char ch : p) {
      if (!is_digit(ch)) return false;
      v = v * 10 + (ch - '0');
    }
    if (v > 255) return false;
    ++parts;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return parts == 4;
}

// Counts the 16-bit groups of "h:h:...", each IPv6-hex = 1*4HEXDIG; the last element may be an
// IPv4 address (two groups) when allow_v4. Empty text is zero groups.
bool count_ipv6_groups(std::string_view s, bool allow_v4, int& groups) {
  groups = 0;
  if (s.empty()) return true;
  std::size_t start = 0;
  for (;;) {
    const std::size_t colon = s.find(':', start);
    const bool last = colon == std::string_view::npos;
    const std::string_view g = s.substr(start, last ? std::string_view::npos : colon - start);
    if (last && allow_v4 && g.find('.') != std::string_view::npos) {
      if (!valid_ipv4(g)) return false;
      groups += 2;
      return true;
    }
    if (g.empty() || g.size() > 4) return false;
    for (const char ch : g)
      if (!is_xdigit(ch)) return false;
    ++groups;
    if (last) return true;
    start = colon + 1;
  }
}

// IPv6-addr per RFC 5321 4.1.3: full (8 groups, or 6 + IPv4) or compressed with one "::" and at
// most 6 groups besides it (an IPv4 tail counting as 2).
bool valid_ipv6(std::string_view s) {
  const std::size_t dc = s.find("::");
  int n = 0;
  if (dc == std::string_view::npos) return count_ipv6_groups(s, true, n) && n == 8;
  if (s.find("::", dc + 1) != std::string_view::npos) return false;
  int left = 0, right = 0;
  if (!count_ipv6_groups(s.substr(0, dc), false, left)) return false;
  if (!count_ipv6_groups(s.substr(dc + 2), true, right)) return false;
  return left + right <= 6;
}

// address-literal = "[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"
// (RFC 5321 4.1.3). General literals need a Standardized-tag registered with IANA; none is, so
// they are rejected.
bool valid_address_literal(std::string_view s) {
  if (s.size() < 2 || s.front() != '[' || s.back() != ']') return false;
  const std::string_view in = s.substr(1, s.size() - 2);
  if (istarts_with(in, "IPv6:")) return valid_ipv6(in.substr(5));
  return valid_ipv4(in);
}

bool valid_domain(std::string_view d) {
  if (!d.empty() && d.front() == '[') return valid_address_literal(d);
  return valid_domain_name(d);
}

// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") (RFC 5321 4.1.2).
bool valid_keyword(std::string_view k) {
  if (k.empty() || !is_alnum(at(k, 0))) return false;
  for (const char ch : k) {
    const auto c = static_cast<unsigned char>(ch);
    if (!is_alnum(c) && c != '-') return false;
  }
  return true;
}

// esmtp-value = 1*(%d33-60 / %d62-126), plus UTF8-non-ascii (RFC 6531 3.3).
bool valid_esmtp_value(std::string_view v) {
  if (v.empty()) return false;
  for (const char ch : v) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_8bit(c)) continue;
    if (c < 33 || c > 126 || c == '=') return false;
  }
  return valid_utf8(v);
}

// Splits `text` (already trimmed) at runs of spaces into esmtp-params.
PathError parse_params(std::string_view text, std::vector<Param>& out) {
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t end = text.find(' ', i);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view tok = text.substr(i, end - i);
    Param p;
    const std::size_t eq = tok.find('=');
    p.keyword = tok.substr(0, eq);
    if (!valid_keyword(p.keyword)) return PathError::bad_param;
    if (eq != std::string_view::npos) {
      p.value = tok.substr(eq + 1);
      if (!valid_esmtp_value(*p.value)) return PathError::bad_param;
    }
    for (const Param& q : out)
      if (iequals(q.keyword, p.keyword)) return PathError::duplicate_param;  // RFC 1869 6
    if (out.size() >= conf::fixed::max_esmtp_params) return PathError::bad_param;
    out.push_back(p);
    i = end;
    while (i < text.size() && text[i] == ' ') ++i;
  }
  return PathError::none;
}

PathResult fail(PathError e) { return PathResult{std::nullopt, e}; }

// Shared by MAIL and RCPT: prefix is "FROM:" or "TO:".
PathResult parse_path_command(std::string_view args, std::string_view prefix, bool rcpt) {
  for (const char ch : args)
    if (is_control(static_cast<unsigned char>(ch))) return fail(PathError::syntax);
  if (!istarts_with(args, prefix)) return fail(PathError::syntax);
  std::string_view s = args.substr(prefix.size());
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);  // "FROM: <a@b>": tolerated
  if (s.empty() || s.front() != '<') return fail(PathError::missing_brackets);

  // Find the end of the path: the first ">" after the source route and a quoted local part
  // (a Quoted-string may itself contain ">").
  std::size_t i = 1;
  std::size_t route_end = 0;  // index of the ":" ending A-d-l, 0 when there is none
  if (i < s.size() && s[i] == '@') {
    const std::size_t stop = s.find_first_of(":>", i);
    if (stop == std::string_view::npos) return fail(PathError::missing_brackets);
    if (s[stop] == '>') return fail(PathError::syntax);  // "<@a>": route without a mailbox
    route_end = stop;
    i = stop + 1;
  }
  const std::size_t local_start = i;
  std::size_t quoted_end = 0;  // one past the closing quote of a Quoted-string local part
  if (i < s.size() && s[i] == '"') {
    std::size_t j = i + 1;
    while (j < s.size() && s[j] != '"') j += s[j] == '\\' ? 2 : 1;
    if (j >= s.size())
      return fail(s.find('>', i) == std::string_view::npos ? PathError::missing_brackets : PathError::bad_local_part);
    quoted_end = j + 1;
    i = quoted_end;
  }
  const std::size_t close = s.find('>', i);
  if (close == std::string_view::npos) return fail(PathError::missing_brackets);
  const std::string_view rest = s.substr(close + 1);
  if (!rest.empty() && rest.front() != ' ') return fail(PathError::syntax);

  // Structure first, then the RFC 5321 4.5.3.1 sizes (the most specific one first, so that an
  // over-long domain is reported as such although it also makes the path too long), then syntax.
  Path path;
  if (close == 1) {  // "<>"
    if (rcpt) return fail(PathError::null_not_allowed);  // RFC 5321 4.1.1.3: forward-path is a Mailbox
    path.null_path = true;
  } else {
    // A-d-l = At-domain *( "," At-domain ): checked, then dropped (RFC 5321 4.1.2 and Appendix C).
    std::vector<std::string_view> route;
    if (route_end != 0) {
      std::string_view adl = s.substr(1, route_end - 1);
      for (;;) {
        const std::size_t comma = adl.find(',');
        const std::string_view at_domain = adl.substr(0, comma);
        if (at_domain.empty() || at_domain.front() != '@') return fail(PathError::syntax);
        route.push_back(at_domain.substr(1));
        if (comma == std::string_view::npos) break;
        adl.remove_prefix(comma + 1);
      }
    }
    const std::string_view mailbox = s.substr(local_start, close - local_start);
    if (mailbox.empty()) return fail(PathError::syntax);
    const std::size_t at_pos = quoted_end != 0 ? quoted_end - local_start : mailbox.find('@');
    const bool has_domain = at_pos != std::string_view::npos && at_pos < mailbox.size();
    if (has_domain && mailbox[at_pos] != '@') return fail(PathError::bad_local_part);  // "\"a\"b@c"
    // No domain: only "<Postmaster>", and only as a recipient (RFC 5321 4.1.1.3).
    if (!has_domain && !(rcpt && iequals(mailbox, "Postmaster"))) return fail(PathError::syntax);
    const std::string_view local = has_domain ? mailbox.substr(0, at_pos) : mailbox;
    const std::string_view domain = has_domain ? mailbox.substr(at_pos + 1) : std::string_view();

    if (local.size() > conf::fixed::max_local_part_length) return fail(PathError::local_part_too_long);
    if (domain.size() > conf::fixed::max_domain_length) return fail(PathError::domain_too_long);
    for (const std::string_view d : route)
      if (d.size() > conf::fixed::max_domain_length) return fail(PathError::domain_too_long);
    if (close + 1 > conf::fixed::max_path_length) return fail(PathError::address_too_long);  // brackets included

    for (const std::string_view d : route)
      if (!valid_domain(d)) return fail(PathError::bad_domain);
    if (has_domain) {
      if (!valid_local_part(local)) return fail(PathError::bad_local_part);
      if (!valid_domain(domain)) return fail(PathError::bad_domain);
    }
    path.address = std::string(mailbox);
  }
  for (const char ch : path.address)
    if (is_8bit(static_cast<unsigned char>(ch))) path.non_ascii = true;
  path.params_text = trim_spaces(rest);
  const PathError pe = parse_params(path.params_text, path.params);
  if (pe != PathError::none) return fail(pe);
  return PathResult{std::move(path), PathError::none};
}

constexpr int hex_value(unsigned char c) { return c <= '9' ? c - '0' : c - 'A' + 10; }

// RFC 3461 4 xtext: returns the decoded length, or nullopt when invalid. With `printable`, the
// decoded text must also be printable US-ASCII (RFC 3461 4.2 for ORCPT, 4.4 for ENVID).
std::optional<std::size_t> xtext_length(std::string_view s, bool printable) {
  std::size_t n = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const unsigned char c = at(s, i);
    if (c == '+') {
      if (s.size() - i < 3 || !is_upper_hex(at(s, i + 1)) || !is_upper_hex(at(s, i + 2))) return std::nullopt;
      const int d = hex_value(at(s, i + 1)) * 16 + hex_value(at(s, i + 2));
      if (printable && (d < 0x20 || d > 0x7e)) return std::nullopt;
      i += 2;
    } else if (c < 33 || c > 126 || c == '=') {
      return std::nullopt;
    }
    ++n;
  }
  return n;
}

bool valid_notify(std::string_view v) {
  // RFC 3461 4.1: "NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" ). Repeats are tolerated (Postfix).
  if (iequals(v, "NEVER")) return true;
  std::size_t start = 0;
  for (;;) {
    const std::size_t comma = v.find(',', start);
    const std::string_view item = v.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (!iequals(item, "SUCCESS") && !iequals(item, "FAILURE") && !iequals(item, "DELAY")) return false;
    if (comma == std::string_view::npos) return true;
    start = comma + 1;
  }
}

bool valid_orcpt(std::string_view v) {
  // RFC 3461 4.2: addr-type ";" xtext, addr-type an atom (e.g. "rfc822"); the address before
  // xtext encoding at most 500 characters.
  const std::size_t semi = v.find(';');
  if (semi == std::string_view::npos || semi == 0) return false;
  for (const char ch : v.substr(0, semi)) {
    const auto c = static_cast<unsigned char>(ch);
    if (is_8bit(c) || !is_atext(c)) return false;
  }
  const auto n = xtext_length(v.substr(semi + 1), true);
  return n && *n >= 1 && *n <= 500;
}

}  // namespace

std::string_view to_string(Verb v) {
  switch (v) {
    case Verb::helo: return "HELO";
    case Verb::ehlo: return "EHLO";
    case Verb::mail: return "MAIL";
    case Verb::rcpt: return "RCPT";
    case Verb::data: return "DATA";
    case Verb::bdat: return "BDAT";
    case Verb::rset: return "RSET";
    case Verb::noop: return "NOOP";
    case Verb::quit: return "QUIT";
    case Verb::vrfy: return "VRFY";
    case Verb::expn: return "EXPN";
    case Verb::help: return "HELP";
    case Verb::starttls: return "STARTTLS";
    case Verb::auth: return "AUTH";
    case Verb::unknown: return "UNKNOWN";
  }
  return "UNKNOWN";
}

Command parse_command(std::string_view line) {
  while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
  std::size_t i = 0;
  while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
  const std::string_view token = line.substr(0, i);
  while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  Command cmd;
  cmd.args = line.substr(i);
  static constexpr std::array<Verb, 14> verbs = {Verb::helo, Verb::ehlo, Verb::mail, Verb::rcpt, Verb::data,
                                                 Verb::bdat, Verb::rset, Verb::noop, Verb::quit, Verb::vrfy,
                                                 Verb::expn, Verb::help, Verb::starttls, Verb::auth};
  for (const Verb v : verbs) {
    if (iequals(token, to_string(v))) {
      cmd.verb = v;
      break;
    }
  }
  return cmd;
}

std::string_view to_string(PathError e) {
  switch (e) {
    case PathError::none: return "none";
    case PathError::syntax: return "syntax";
    case PathError::missing_brackets: return "missing_brackets";
    case PathError::address_too_long: return "address_too_long";
    case PathError::local_part_too_long: return "local_part_too_long";
    case PathError::domain_too_long: return "domain_too_long";
    case PathError::bad_local_part: return "bad_local_part";
    case PathError::bad_domain: return "bad_domain";
    case PathError::null_not_allowed: return "null_not_allowed";
    case PathError::bad_param: return "bad_param";
    case PathError::duplicate_param: return "duplicate_param";
  }
  return "?";
}

PathResult parse_mail_from(std::string_view args) { return parse_path_command(args, "FROM:", false); }

PathResult parse_rcpt_to(std::string_view args) { return parse_path_command(args, "TO:", true); }

std::optional<std::string> decode_xtext(std::string_view text) {
  if (!xtext_length(text, false)) return std::nullopt;
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out.push_back(static_cast<char>(hex_value(at(text, i + 1)) * 16 + hex_value(at(text, i + 2))));
      i += 2;
    } else {
      out.push_back(text[i]);
    }
  }
  return out;
}

bool valid_param_value(std::string_view keyword, std::optional<std::string_view> value) {
  if (iequals(keyword, "SMTPUTF8")) return !value.has_value();
  if (!value) return false;
  const std::string_view v = *value;
  if (iequals(keyword, "SIZE")) return parse_u64(v).has_value();
  if (iequals(keyword, "BODY")) return iequals(v, "7BIT") || iequals(v, "8BITMIME") || iequals(v, "BINARYMIME");
  if (iequals(keyword, "RET")) return iequals(v, "FULL") || iequals(v, "HDRS");
  if (iequals(keyword, "ENVID")) {
    const auto n = xtext_length(v, true);
    return n && *n >= 1 && *n <= 100;  // RFC 3461 4.4: at most 100 characters (decoded, as Postfix)
  }
  if (iequals(keyword, "NOTIFY")) return valid_notify(v);
  if (iequals(keyword, "ORCPT")) return valid_orcpt(v);
  return false;
}

std::optional<BdatArgs> parse_bdat(std::string_view args) {
  std::size_t i = 0;
  while (i < args.size() && is_digit(at(args, i))) ++i;
  const auto size = parse_u64(args.substr(0, i));
  if (!size) return std::nullopt;
  BdatArgs out{*size, false};
  std::string_view rest = args.substr(i);
  if (rest.empty()) return out;
  if (rest.front() != ' ') return std::nullopt;
  rest = trim_spaces(rest);
  if (rest.empty()) return out;
  if (!iequals(rest, "LAST")) return std::nullopt;
  out.last = true;
  return out;
}

std::string encode_xtext(std::string_view text) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (u < '!' || u > '~' || c == '+' || c == '=') {
      out += '+';
      out += hex[u >> 4];
      out += hex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace batv::relay::smtp
