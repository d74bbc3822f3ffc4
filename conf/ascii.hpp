// ascii: ASCII character classes, case mapping and case-insensitive comparison, the one copy for
// every folder (crypto, conf, the SMTP core, the relay, the tools).
//
// Contract: pure, constexpr, no locale. std::tolower/std::toupper follow the C locale (and are
// undefined for a negative char, which every byte >= 0x80 is on this platform); these never look
// at it. Only the 26 ASCII letters change case; every other byte, UTF-8 (0x80-0xFF) included,
// is left as it is. That is the comparison the protocols ask for: SMTP verbs, keywords and
// parameters (RFC 5321 2.4), domain names (RFC 4343 3; a U-label is compared as bytes), the
// "prvs=" prefix and hex digits of a tag (draft-levine-smtp-batv-01), Postfix attribute values.
// The functions that return std::string allocate; nothing else does. Never throws (but
// std::bad_alloc).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace batv::text {

// --- Characters ----------------------------------------------------------------------------------

constexpr bool is_upper(char c) { return c >= 'A' && c <= 'Z'; }
constexpr bool is_lower(char c) { return c >= 'a' && c <= 'z'; }
constexpr bool is_alpha(char c) { return is_upper(c) || is_lower(c); }
constexpr bool is_digit(char c) { return c >= '0' && c <= '9'; }
constexpr bool is_alnum(char c) { return is_alpha(c) || is_digit(c); }
constexpr bool is_xdigit(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

constexpr char lower(char c) { return is_upper(c) ? static_cast<char>(c - 'A' + 'a') : c; }
constexpr char upper(char c) { return is_lower(c) ? static_cast<char>(c - 'a' + 'A') : c; }

// --- Strings -------------------------------------------------------------------------------------

constexpr bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

constexpr bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

constexpr bool has_upper(std::string_view s) {
  for (const char c : s)
    if (is_upper(c)) return true;
  return false;
}

// In place, for a buffer the caller owns (no allocation).
constexpr void lower_in_place(char* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) p[i] = lower(p[i]);
}
constexpr void lower_in_place(std::string& s) { lower_in_place(s.data(), s.size()); }
constexpr void upper_in_place(std::string& s) {
  for (char& c : s) c = upper(c);
}

// Copies.
inline std::string lower(std::string_view s) {
  std::string out(s);
  lower_in_place(out);
  return out;
}
inline std::string upper(std::string_view s) {
  std::string out(s);
  upper_in_place(out);
  return out;
}

}  // namespace batv::text
