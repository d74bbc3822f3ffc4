#include "relay/postfix/netstring.hpp"

#include <charconv>

namespace batv::relay::postfix {

std::string_view to_string(NetstringError e) {
  switch (e) {
    case NetstringError::none: return "none";
    case NetstringError::empty_length: return "empty_length";
    case NetstringError::not_a_digit: return "not_a_digit";
    case NetstringError::leading_zero: return "leading_zero";
    case NetstringError::too_long: return "too_long";
    case NetstringError::missing_comma: return "missing_comma";
  }
  return "?";
}

namespace {
std::size_t digits_of(std::size_t n) {
  std::size_t d = 1;
  while (n >= 10) {
    n /= 10;
    ++d;
  }
  return d;
}
}  // namespace

NetstringResult decode_netstring(std::string_view buffer, std::size_t max_payload) {
  NetstringResult r;
  auto fail = [&](NetstringError e) {
    r.status = NetstringResult::Status::error;
    r.error = e;
    return r;
  };
  const std::size_t max_digits = digits_of(max_payload);
  std::size_t length = 0;
  std::size_t i = 0;
  for (; i < buffer.size(); ++i) {
    const char c = buffer[i];
    if (c == ':') break;
    if (c < '0' || c > '9') return fail(NetstringError::not_a_digit);
    if (i == 1 && buffer[0] == '0') return fail(NetstringError::leading_zero);
    if (i >= max_digits) return fail(NetstringError::too_long);  // more digits than the bound has
    length = length * 10 + static_cast<std::size_t>(c - '0');
    if (length > max_payload) return fail(NetstringError::too_long);
  }
  if (i == buffer.size()) return r;  // the length is not complete yet
  if (i == 0) return fail(NetstringError::empty_length);
  const std::size_t start = i + 1;
  // start + length + 1 cannot overflow: length <= max_payload, and the buffer exists.
  if (buffer.size() - start < length + 1) return r;
  if (buffer[start + length] != ',') return fail(NetstringError::missing_comma);
  r.status = NetstringResult::Status::complete;
  r.payload = buffer.substr(start, length);
  r.consumed = start + length + 1;
  return r;
}

void append_netstring(std::string& out, std::string_view payload) {
  char digits[24];
  const auto res = std::to_chars(digits, digits + sizeof digits, payload.size());
  out.append(digits, res.ptr);
  out.push_back(':');
  out.append(payload);
  out.push_back(',');
}

std::string encode_netstring(std::string_view payload) {
  std::string out;
  out.reserve(payload.size() + 8);
  append_netstring(out, payload);
  return out;
}

}  // namespace batv::relay::postfix
