// Fuzz target: the SMTP command-line parser (relay/smtp/command: parse_command, parse_bdat) on
// arbitrary bytes, followed by what the session does with the result (the MAIL / RCPT path
// parsers on Command::args; tests/fuzz/fuzz_smtp_path.cpp fuzzes those on their own).
// Invariants: no crash; args is a view into the line with no leading or trailing SP/HT; a
// recognised verb is the first token (any case) and the line rebuilt as "VERB args" parses to
// the same command; a line without SP/HT has no args; an accepted BDAT is 1-20 digits (plus an
// optional LAST) that fit 64 bits and re-parses from its canonical form; accepted paths satisfy
// tests/fuzz/path_checks.hpp.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "path_checks.hpp"

using namespace batv::relay::smtp;

namespace {

void check_bdat(std::string_view a) {
  const auto b = parse_bdat(a);
  if (!b) return;
  const std::size_t digits = a.find_first_not_of("0123456789");
  if (digits == 0 || (digits == std::string_view::npos ? a.size() : digits) > 20) std::abort();
  if (b->last != (a.find_first_of("Ll") != std::string_view::npos)) std::abort();
  const std::string canon = std::to_string(b->size) + (b->last ? " LAST" : "");
  const auto b2 = parse_bdat(canon);
  if (!b2 || b2->size != b->size || b2->last != b->last) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  const Command c = parse_command(in);
  if (!fuzz::inside(c.args, in)) std::abort();
  if (!c.args.empty() && (c.args.back() == ' ' || c.args.back() == '\t' || c.args.front() == ' ' ||
                          c.args.front() == '\t'))
    std::abort();
  if (in.find_first_of(" \t") == std::string_view::npos && !c.args.empty()) std::abort();
  if (c.verb != Verb::unknown) {
    const std::string_view verb = to_string(c.verb);
    if (!fuzz::iequal(in.substr(0, verb.size()), verb)) std::abort();
    if (in.size() > verb.size() && in[verb.size()] != ' ' && in[verb.size()] != '\t') std::abort();
    const std::string again = std::string(verb) + (c.args.empty() ? "" : " ") + std::string(c.args);
    const Command c2 = parse_command(again);
    if (c2.verb != c.verb || c2.args != c.args) std::abort();
  }

  // What Session::process does next with the argument text.
  if (c.verb == Verb::mail) fuzz::check_path(c.args, parse_mail_from(c.args), false);
  if (c.verb == Verb::rcpt) fuzz::check_path(c.args, parse_rcpt_to(c.args), true);
  if (c.verb == Verb::bdat) check_bdat(c.args);
  check_bdat(in);
  return 0;
}
