// Fuzz target: the next-hop reply reader and helpers (relay/smtp/reply) on arbitrary bytes, split
// into lines at LF (a trailing CR dropped, as relay/upstream.cpp does).
// Invariants: no crash; a complete reply has a code in 200..599, 1..max_lines lines, printable
// ASCII text within the line limit, and survives format_reply -> ReplyReader unchanged; errors are
// sticky and named; parse_enhanced, sanitize and parse_ehlo keep their documented ranges.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "relay/smtp/reply.hpp"

using namespace batv::relay::smtp;

namespace {

constexpr std::size_t kMaxLine = 512;
constexpr std::size_t kMaxLines = 20;

bool printable(std::string_view s) {
  for (const char ch : s)
    if (ch < 0x20 || ch > 0x7e) return false;
  return true;
}

bool upper_words(const std::vector<std::string>& v) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (v[i].empty() || !printable(v[i])) return false;
    for (const char ch : v[i])
      if ((ch >= 'a' && ch <= 'z') || ch == ' ') return false;
    for (std::size_t j = 0; j < i; ++j)
      if (v[i] == v[j]) return false;
  }
  return true;
}

void check_reply(const Reply& r) {
  if (r.code < 200 || r.code > 599) std::abort();
  if (r.lines.empty() || r.lines.size() > kMaxLines) std::abort();
  for (const auto& l : r.lines)
    if (!printable(l) || l.size() + 6 > kMaxLine) std::abort();  // "ddd " + text + CRLF
  // Round trip: our wire form of it reads back identically.
  const std::string wire = format_reply(r);
  ReplyReader again(kMaxLine, kMaxLines);
  std::size_t start = 0;
  ReplyReader::Status st = ReplyReader::Status::need_more;
  while (start < wire.size()) {
    const std::size_t crlf = wire.find("\r\n", start);
    if (crlf == std::string::npos || st != ReplyReader::Status::need_more) std::abort();
    st = again.feed(std::string_view(wire).substr(start, crlf - start));
    start = crlf + 2;
  }
  if (st != ReplyReader::Status::complete) std::abort();
  const Reply back = again.take();
  if (back.code != r.code || back.lines != r.lines) std::abort();

  const Capabilities caps = parse_ehlo(r);
  if (caps.size && *caps.size == 0) std::abort();
  if (!upper_words(caps.auth) || !upper_words(caps.xclient_attrs)) std::abort();
  if (!caps.xclient_attrs.empty() && !caps.xclient) std::abort();
  if (r.code / 100 != 2 && (caps.pipelining || caps.size || !caps.auth.empty())) std::abort();
  for (const auto& l : r.lines) {
    if (const auto e = parse_enhanced(l)) {
      if ((e->cls != 2 && e->cls != 4 && e->cls != 5) || e->subject < 0 || e->subject > 999 || e->detail < 0 ||
          e->detail > 999)
        std::abort();
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);

  ReplyReader reader(kMaxLine, kMaxLines);
  bool errored = false;
  std::size_t start = 0;
  while (start < in.size()) {
    std::size_t nl = in.find('\n', start);
    if (nl == std::string_view::npos) nl = in.size();
    std::string_view line = in.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    start = nl + 1;
    const auto st = reader.feed(line);
    if (errored && st != ReplyReader::Status::error) std::abort();  // sticky
    if (st == ReplyReader::Status::error) {
      if (reader.error().empty()) std::abort();
      if (errored) {  // recover, as a caller would after dropping the connection
        reader.reset();
        errored = false;
      } else {
        errored = true;
      }
    } else if (st == ReplyReader::Status::complete) {
      if (!reader.error().empty()) std::abort();
      check_reply(reader.take());
    }
  }

  for (const std::size_t cut : {std::size_t{0}, std::size_t{7}, std::size_t{400}, in.size()}) {
    const std::string s = sanitize(in, cut);
    if (s.size() != std::min(cut, in.size()) || !printable(s)) std::abort();
  }
  const std::string wire = format_reply(250, in);
  if (wire.size() != in.size() + 6 || wire.compare(wire.size() - 2, 2, "\r\n") != 0) std::abort();
  if (wire.find('\n') != wire.size() - 1 || wire.find('\r') != wire.size() - 2) std::abort();
  if (const auto e = parse_enhanced(in)) {
    if (e->cls != 2 && e->cls != 4 && e->cls != 5) std::abort();
  }
  return 0;
}
