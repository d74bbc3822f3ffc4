#include "relay/smtp/reply.hpp"

#include <algorithm>

#include "conf/ascii.hpp"

namespace batv::relay::smtp {

namespace {

using text::is_digit;

// Splits at runs of spaces (sanitised text: tabs are already '?').
std::vector<std::string_view> words(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && s[i] == ' ') ++i;
    const std::size_t start = i;
    while (i < s.size() && s[i] != ' ') ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

void add_unique(std::vector<std::string>& v, std::string s) {
  if (!s.empty() && std::find(v.begin(), v.end(), s) == v.end()) v.push_back(std::move(s));
}

// 1..3 digits at text[i], value into out; advances i.
bool read_1to3(std::string_view text, std::size_t& i, int& out) {
  const std::size_t start = i;
  out = 0;
  while (i < text.size() && i - start < 3 && is_digit(text[i])) out = out * 10 + (text[i++] - '0');
  return i > start;
}

}  // namespace

ReplyReader::ReplyReader(std::size_t max_line_length, std::size_t max_lines)
    : max_line_length_(max_line_length), max_lines_(max_lines) {}

ReplyReader::Status ReplyReader::fail(std::string_view why) {
  status_ = Status::error;
  error_ = why;
  return status_;
}

ReplyReader::Status ReplyReader::feed(std::string_view line) {
  if (status_ == Status::error) return status_;  // sticky until take()/reset()
  if (status_ == Status::complete) return fail("reply not taken");
  if (line.size() + 2 > max_line_length_) return fail("reply line too long");  // +2: the CRLF
  if (line.size() < 3 || line[0] < '2' || line[0] > '5' || !is_digit(line[1]) || !is_digit(line[2]))
    return fail("malformed reply line");
  bool last = true;
  if (line.size() > 3) {
    if (line[3] == '-') last = false;
    else if (line[3] != ' ') return fail("malformed reply line");  // "250x"
  }
  const int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (!reply_.lines.empty() && code != reply_.code) return fail("inconsistent reply codes");
  if (reply_.lines.size() >= max_lines_) return fail("too many reply lines");
  reply_.code = code;
  reply_.lines.push_back(sanitize(line.size() > 4 ? line.substr(4) : std::string_view(), max_line_length_));
  status_ = last ? Status::complete : Status::need_more;
  return status_;
}

Reply ReplyReader::take() {
  Reply r = std::move(reply_);
  reset();
  return r;
}

void ReplyReader::reset() {
  reply_ = Reply{};
  status_ = Status::need_more;
  error_ = {};
}

std::optional<EnhancedCode> parse_enhanced(std::string_view text) {
  if (text.size() < 5 || (text[0] != '2' && text[0] != '4' && text[0] != '5') || text[1] != '.') return std::nullopt;
  EnhancedCode c;
  c.cls = text[0] - '0';
  std::size_t i = 2;
  if (!read_1to3(text, i, c.subject) || i >= text.size() || text[i] != '.') return std::nullopt;
  ++i;
  if (!read_1to3(text, i, c.detail)) return std::nullopt;
  if (i < text.size() && text[i] != ' ') return std::nullopt;  // "2.1.0x", "2.1.0000"
  return c;
}

std::string to_string(const EnhancedCode& c) {
  return std::to_string(c.cls) + "." + std::to_string(c.subject) + "." + std::to_string(c.detail);
}

std::string sanitize(std::string_view text, std::size_t max_len) {
  std::string out(text.substr(0, std::min(text.size(), max_len)));
  for (char& c : out)
    if (c < 0x20 || c > 0x7e) c = '?';  // char may be signed: bytes >= 0x80 are negative here
  return out;
}

std::string format_reply(int code, const std::vector<std::string>& lines) {
  const std::string c = std::to_string(std::clamp(code, 0, 999));
  const std::string prefix = std::string(3 - c.size(), '0') + c;
  if (lines.empty()) return prefix + " \r\n";
  std::string out;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    out += prefix;
    out += i + 1 < lines.size() ? '-' : ' ';
    out += sanitize(lines[i], lines[i].size());
    out += "\r\n";
  }
  return out;
}

std::string format_reply(int code, std::string_view text) {
  return format_reply(code, std::vector<std::string>{std::string(text)});
}

std::string format_reply(const Reply& r) { return format_reply(r.code, r.lines); }

Capabilities parse_ehlo(const Reply& r) {
  Capabilities caps;
  if (r.code < 200 || r.code > 299) return caps;
  for (std::size_t n = 1; n < r.lines.size(); ++n) {  // lines[0] is the greeting
    const std::vector<std::string_view> w = words(r.lines[n]);
    if (w.empty()) continue;
    std::string kw = text::upper(w[0]);
    std::vector<std::string_view> args(w.begin() + 1, w.end());
    // "AUTH=PLAIN LOGIN": the pre-RFC 4954 form some servers still add (Postfix
    // broken_sasl_auth_clients); its first mechanism is glued to the keyword.
    if (kw.rfind("AUTH=", 0) == 0) {
      add_unique(caps.auth, kw.substr(5));
      kw = "AUTH";
    }
    if (kw == "PIPELINING") caps.pipelining = true;
    else if (kw == "8BITMIME") caps.eightbitmime = true;
    else if (kw == "SMTPUTF8") caps.smtputf8 = true;
    else if (kw == "ENHANCEDSTATUSCODES") caps.enhancedstatuscodes = true;
    else if (kw == "DSN") caps.dsn = true;
    else if (kw == "CHUNKING") caps.chunking = true;
    else if (kw == "BINARYMIME") caps.binarymime = true;
    else if (kw == "STARTTLS") caps.starttls = true;
    else if (kw == "SIZE") {
      // RFC 1870 4: size-param = [1*DIGIT]; 0 or absent means no fixed maximum.
      caps.size_advertised = true;
      caps.size.reset();
      if (args.size() == 1 && !args[0].empty() && args[0].size() <= 20 &&
          std::all_of(args[0].begin(), args[0].end(), is_digit)) {
        std::uint64_t v = 0;
        bool overflow = false;
        for (const char ch : args[0]) {
          const auto d = static_cast<std::uint64_t>(ch - '0');
          if (v > (UINT64_MAX - d) / 10) overflow = true;
          else v = v * 10 + d;
        }
        if (!overflow && v > 0) caps.size = v;
      }
    } else if (kw == "AUTH") {
      for (const auto a : args) add_unique(caps.auth, text::upper(a));
    } else if (kw == "XCLIENT") {
      caps.xclient = true;
      for (const auto a : args) add_unique(caps.xclient_attrs, text::upper(a));
    }
  }
  return caps;
}

}  // namespace batv::relay::smtp
