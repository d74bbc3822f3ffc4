// Fuzz target: the SMTP command parsers (relay/smtp/command) on arbitrary bytes.
// Invariants: no crash; parse_command's args is a trimmed view into the input; an accepted path
// holds no control byte, respects the RFC 5321 4.5.3.1 sizes, sets non_ascii exactly when a byte
// is >= 0x80, has no duplicate or over-many params, and re-parses to itself when rebuilt from
// address and params_text; an accepted BDAT re-parses from its canonical form.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "relay/smtp/command.hpp"

using namespace batv::relay::smtp;

namespace {

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

void check_path(std::string_view in, const PathResult& r, bool rcpt) {
  if (r.ok() != r.path.has_value()) std::abort();
  if (!r.ok()) return;
  const Path& p = *r.path;
  if (rcpt && p.null_path) std::abort();
  if (p.null_path != p.address.empty()) std::abort();
  if (p.address.size() + 2 > max_path) std::abort();
  bool high = false;
  for (const char ch : p.address) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) std::abort();
    if (c >= 0x80) high = true;
  }
  if (high != p.non_ascii) std::abort();
  if (!inside(p.params_text, in)) std::abort();
  if (!p.params_text.empty() && (p.params_text.front() == ' ' || p.params_text.back() == ' ')) std::abort();
  if (p.params.size() > max_params) std::abort();
  for (std::size_t i = 0; i < p.params.size(); ++i) {
    const Param& a = p.params[i];
    if (a.keyword.empty() || !inside(a.keyword, p.params_text)) std::abort();
    if (a.value && (a.value->empty() || !inside(*a.value, p.params_text))) std::abort();
    for (std::size_t j = 0; j < i; ++j)
      if (iequal(a.keyword, p.params[j].keyword)) std::abort();
    (void)valid_param_value(a.keyword, a.value);
  }
  // Rebuilt from its parts (source route dropped), the path parses to the same value.
  std::string again = std::string(rcpt ? "TO:<" : "FROM:<") + p.address + ">";
  if (!p.params_text.empty()) again += " " + std::string(p.params_text);
  const PathResult r2 = rcpt ? parse_rcpt_to(again) : parse_mail_from(again);
  if (!r2.ok() || r2.path->address != p.address || r2.path->null_path != p.null_path ||
      r2.path->params_text != p.params_text || r2.path->params.size() != p.params.size())
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  const Command c = parse_command(in);
  if (!inside(c.args, in)) std::abort();
  if (!c.args.empty() && (c.args.back() == ' ' || c.args.back() == '\t' || c.args.front() == ' ')) std::abort();
  if (c.verb != Verb::unknown && !iequal(in.substr(0, to_string(c.verb).size()), to_string(c.verb))) std::abort();

  check_path(in, parse_mail_from(in), false);
  check_path(in, parse_rcpt_to(in), true);
  if (c.verb == Verb::mail) check_path(in, parse_mail_from(c.args), false);
  if (c.verb == Verb::rcpt) check_path(in, parse_rcpt_to(c.args), true);

  for (const std::string_view a : {in, c.args}) {
    if (const auto b = parse_bdat(a)) {
      const std::string canon = std::to_string(b->size) + (b->last ? " LAST" : "");
      const auto b2 = parse_bdat(canon);
      if (!b2 || b2->size != b->size || b2->last != b->last) std::abort();
    }
  }

  // One parameter "KEYWORD[=value]" taken from the whole input.
  const std::size_t eq = in.find('=');
  const std::optional<std::string_view> value =
      eq == std::string_view::npos ? std::nullopt : std::optional<std::string_view>(in.substr(eq + 1));
  const std::string_view keyword = in.substr(0, eq);
  if (valid_param_value(keyword, value) && value) {
    for (const char ch : *value)
      if (static_cast<unsigned char>(ch) <= 0x20 || static_cast<unsigned char>(ch) >= 0x7f) std::abort();
  }
  if (const auto d = decode_xtext(in)) {
    if (d->size() > in.size()) std::abort();
  }
  return 0;
}
