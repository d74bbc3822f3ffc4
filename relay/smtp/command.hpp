// command: SMTP command lines from the client, their paths and ESMTP parameters (RFC 5321 4.1).
//
// Contract: pure functions over std::string_view. They never do I/O, never log, never throw
// (except std::bad_alloc) and never read a clock. Input is untrusted and may hold any byte.
//   - parse_command splits a line (terminator already removed) into a verb and its argument text.
//   - parse_mail_from / parse_rcpt_to check a reverse-path / forward-path and its esmtp-params
//     syntactically and report the first problem as a PathError. They do NOT decide whether a
//     parameter is supported (that depends on what the session advertised) and do NOT check
//     parameter values: valid_param_value does that, one parameter at a time.
//   - parse_bdat reads the arguments of BDAT (RFC 3030 2).
// Lifetimes: every std::string_view in a result (Command::args, Param, Path::params_text) points
// into the caller's input, which must outlive the result. Path::address is an owned copy.
// Limits: the fixed RFC 5321 4.5.3.1 sizes of conf::fixed (max_local_part_length, max_domain_length,
// max_path_length) plus max_esmtp_params, in octets, not characters (RFC 6531 3.3 keeps octets);
// line length itself is bounded by the reader (limits.line_length) before these functions see a line.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/limits.hpp"

namespace batv::relay::smtp {

// --- Command line (RFC 5321 4.1.1) ----------------------------------------------------------------

enum class Verb { helo, ehlo, mail, rcpt, data, bdat, rset, noop, quit, vrfy, expn, help, starttls, auth, unknown };
std::string_view to_string(Verb v);  // the upper-case verb; "UNKNOWN" for Verb::unknown

struct Command {
  Verb verb = Verb::unknown;
  std::string_view args;  // text after the verb and its separating space(s), trailing SP/HT trimmed
};

// `line` is one command line WITHOUT its CRLF/LF. The verb is the text up to the first SP or HT,
// compared case-insensitively (RFC 5321 2.4); "MAILFROM" and " MAIL" (leading space) are unknown.
// For Verb::unknown, args is still the text after the first token. Never fails.
Command parse_command(std::string_view line);

// --- Paths and parameters (RFC 5321 4.1.2, 4.1.1.2, 4.1.1.3; RFC 1869 6) ---------------------------

// esmtp-param = esmtp-keyword ["=" esmtp-value]. Views into the input; keyword as sent (compare
// case-insensitively, RFC 5321 2.4).
struct Param {
  std::string_view keyword;
  std::optional<std::string_view> value;
};

struct Path {
  std::string address;          // Mailbox as sent, without <> and without a source route; "" for <>
  bool null_path = false;       // "<>" (RFC 5321 4.5.5)
  bool non_ascii = false;       // a byte >= 0x80 in `address`: needs SMTPUTF8 (RFC 6531 3.4)
  std::vector<Param> params;    // in the order sent
  std::string_view params_text; // all params exactly as sent, leading/trailing spaces trimmed
};

enum class PathError {
  none,
  syntax,               // not "FROM:"/"TO:", junk after ">", control character, no "@" in the mailbox
  missing_brackets,     // no "<" or no closing ">"
  address_too_long,     // the path with its brackets over fixed::max_path_length octets
  local_part_too_long,  // over fixed::max_local_part_length octets (quotes included)
  domain_too_long,      // over fixed::max_domain_length (253) octets, also in a source route
  bad_local_part,       // not a Dot-string or Quoted-string, or invalid UTF-8
  bad_domain,           // not a Domain or address-literal (also in a source route), or invalid UTF-8
  null_not_allowed,     // RCPT TO:<>
  bad_param,            // esmtp-param syntax, or more than fixed::max_esmtp_params
  duplicate_param,      // a keyword given twice (case-insensitive), RFC 1869 6
};
std::string_view to_string(PathError e);  // short snake_case name, e.g. "bad_domain"

struct PathResult {
  std::optional<Path> path;  // set exactly when error == PathError::none
  PathError error = PathError::none;
  [[nodiscard]] bool ok() const { return error == PathError::none; }
};

// The first problem found is reported, checking in this order: control bytes and the "FROM:"/"TO:"
// prefix, brackets, the shape of the path (route, "@", "<>"), the sizes (local part, any domain,
// then the whole path, so the most specific size error wins), local-part and domain syntax, and
// last the params.
// args = "FROM:<reverse-path> [params]" (the Command::args of MAIL). "FROM:" is case-insensitive;
// spaces between ":" and "<" are tolerated (Postfix does, many clients send them). "<>" allowed.
// Source routes "<@a,@b:user@c>" are accepted and dropped (RFC 5321 4.1.2, C.).
PathResult parse_mail_from(std::string_view args);

// args = "TO:<forward-path> [params]". "<>" -> null_not_allowed. "<Postmaster>" without a domain
// (any case) is accepted, RFC 5321 4.1.1.3; address keeps the case as sent ("postmaster").
PathResult parse_rcpt_to(std::string_view args);

// Checks the syntax of one esmtp-value by keyword (case-insensitive). False when invalid, when a
// value is required but missing (or present for SMTPUTF8), and for keywords not listed here:
//   SIZE      1*20DIGIT fitting std::uint64_t                         RFC 1870 3
//   BODY      7BIT / 8BITMIME / BINARYMIME (case-insensitive)          RFC 6152 2, RFC 3030 3
//   SMTPUTF8  no value                                                 RFC 6531 3.4
//   RET       FULL / HDRS (case-insensitive)                           RFC 3461 4.3
//   ENVID     xtext, decoded: printable ASCII, at most 100 characters  RFC 3461 4.4
//   NOTIFY    NEVER, or a comma list of SUCCESS / FAILURE / DELAY      RFC 3461 4.1
//   ORCPT     addr-type ";" xtext, decoded: printable ASCII, <= 500    RFC 3461 4.2
// xtext (RFC 3461 4): "!".."~" except "+" and "=", or "+" followed by two UPPER-case hex digits.
bool valid_param_value(std::string_view keyword, std::optional<std::string_view> value);

// Decodes RFC 3461 4 xtext; std::nullopt when `text` is not valid xtext.
std::optional<std::string> decode_xtext(std::string_view text);
// Encodes as RFC 3461 4 xtext: "+", "=" and bytes outside "!".."~" become "+XX".
std::string encode_xtext(std::string_view text);

// --- BDAT (RFC 3030 2) -----------------------------------------------------------------------------

struct BdatArgs {
  std::uint64_t size = 0;
  bool last = false;
};
// args = chunk-size [ SP end-marker ]: "1234" or "1234 LAST" (LAST case-insensitive, one or more
// spaces). chunk-size is 1*20DIGIT and must fit std::uint64_t; "0 LAST" is valid. Anything else,
// including extra tokens or a sign, is std::nullopt.
std::optional<BdatArgs> parse_bdat(std::string_view args);

}  // namespace batv::relay::smtp
