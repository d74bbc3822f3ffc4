#include "relay/postfix/policy_request.hpp"

#include <cstring>

#include "conf/ascii.hpp"

namespace batv::relay::postfix {

std::string_view to_string(PolicyError e) {
  switch (e) {
    case PolicyError::none: return "none";
    case PolicyError::request_too_large: return "request_too_large";
    case PolicyError::too_many_attributes: return "too_many_attributes";
    case PolicyError::attribute_too_long: return "attribute_too_long";
    case PolicyError::missing_equals: return "missing_equals";
    case PolicyError::empty_name: return "empty_name";
    case PolicyError::bad_name: return "bad_name";
    case PolicyError::nul_byte: return "nul_byte";
    case PolicyError::duplicate_attribute: return "duplicate_attribute";
  }
  return "?";
}

PolicyFrame PolicyFramer::next(std::string_view buf) {
  PolicyFrame f;
  const std::size_t n = buf.size();
  while (true) {
    if (in_line_) {  // inside a non-empty line: its LF starts the next line
      const void* lf = std::memchr(buf.data() + scanned_, '\n', n - scanned_);
      if (lf == nullptr) {
        scanned_ = n;
        break;
      }
      scanned_ = static_cast<std::size_t>(static_cast<const char*>(lf) - buf.data()) + 1;
      in_line_ = false;
    }
    const std::size_t s = scanned_;  // a line start
    if (s >= n) break;
    std::size_t end = 0;
    if (buf[s] == '\n') {
      end = s + 1;
    } else if (buf[s] == '\r') {
      if (s + 1 >= n) break;  // "\r", perhaps the start of "\r\n": wait for the next byte
      if (buf[s + 1] == '\n') end = s + 2;
    }
    if (end != 0) {
      if (end > max_) break;  // reported as too large below
      f.status = PolicyFrame::Status::complete;
      f.length = end;
      return f;
    }
    in_line_ = true;
  }
  if (n >= max_) f.status = PolicyFrame::Status::too_large;
  return f;
}

std::optional<std::string_view> PolicyRequest::find(std::string_view name) const {
  for (const auto& [k, v] : attributes)
    if (k == name) return v;
  return std::nullopt;
}

namespace {
bool name_byte(char c) {
  return text::is_alnum(c) || c == '_' || c == '.' || c == '-';
}
}  // namespace

PolicyParse parse_policy_request(std::string_view in, const PolicyLimits& limits) {
  PolicyParse r;
  auto fail = [&](PolicyError e, std::size_t line) {
    r.error = e;
    r.line = line;
    r.request.attributes.clear();
    return r;
  };
  std::size_t pos = 0;
  std::size_t line_no = 0;
  while (pos < in.size()) {
    ++line_no;
    const std::size_t lf = in.find('\n', pos);
    const std::size_t stop = lf == std::string_view::npos ? in.size() : lf;
    std::string_view line = in.substr(pos, stop - pos);
    pos = lf == std::string_view::npos ? in.size() : lf + 1;
    if (line.size() > limits.attribute_length) return fail(PolicyError::attribute_too_long, line_no);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) break;  // the end of the request
    if (r.request.attributes.size() >= limits.attributes) return fail(PolicyError::too_many_attributes, line_no);
    if (line.find('\0') != std::string_view::npos) return fail(PolicyError::nul_byte, line_no);
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos) return fail(PolicyError::missing_equals, line_no);
    if (eq == 0) return fail(PolicyError::empty_name, line_no);
    const std::string_view name = line.substr(0, eq);
    for (const char c : name)
      if (!name_byte(c)) return fail(PolicyError::bad_name, line_no);
    for (const auto& a : r.request.attributes)
      if (a.first == name) return fail(PolicyError::duplicate_attribute, line_no);
    r.request.attributes.emplace_back(name, line.substr(eq + 1));
  }
  return r;
}

}  // namespace batv::relay::postfix
