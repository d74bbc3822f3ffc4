// UTC civil time <-> unix seconds, pure (no time zones, no locale, no clock).
//
// Used by the key file (created / stopped_signing) and by `batv-keys --now`. Proleptic Gregorian
// calendar via Howard Hinnant's days_from_civil algorithm; valid for years 0000-9999.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace batv::conf {

std::int64_t days_from_civil(int year, unsigned month, unsigned day);
struct Civil {
  int year;
  unsigned month, day, hour, minute, second;
};
Civil civil_from_unix(std::int64_t t);

// "YYYY-MM-DDTHH:MM:SSZ"
std::string format_utc(std::int64_t t);

// Accepts unix seconds ("1700000000", optionally negative) or ISO-8601 UTC:
// "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS]" with "T" or " ", optional "Z" or "+HH:MM"/"-HH:MM".
std::optional<std::int64_t> parse_time(std::string_view text);

// parse_time, plus a time relative to `now`: "+" then 1-9 digits and a unit s, m, h or d
// ("+90s", "+30m", "+2h", "+1d"). For batv-keys rotate --at.
std::optional<std::int64_t> parse_time_or_offset(std::string_view text, std::int64_t now);

}  // namespace batv::conf
