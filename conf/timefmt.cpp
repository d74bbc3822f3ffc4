#include "conf/timefmt.hpp"

#include <cstdio>

namespace batv::conf {

std::int64_t days_from_civil(int year, unsigned month, unsigned day) {
  const std::int64_t y = static_cast<std::int64_t>(year) - (month <= 2 ? 1 : 0);
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t mp = (month + 9) % 12;
  const std::int64_t doy = (153 * mp + 2) / 5 + day - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

Civil civil_from_unix(std::int64_t t) {
  std::int64_t days = t / 86400;
  std::int64_t secs = t % 86400;
  if (secs < 0) {
    secs += 86400;
    --days;
  }
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const auto d = static_cast<unsigned>(doy - (153 * mp + 2) / 5 + 1);
  const auto m = static_cast<unsigned>(mp < 10 ? mp + 3 : mp - 9);
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  return Civil{static_cast<int>(y), m, d, static_cast<unsigned>(secs / 3600),
               static_cast<unsigned>(secs / 60 % 60), static_cast<unsigned>(secs % 60)};
}

std::string format_utc(std::int64_t t) {
  const Civil c = civil_from_unix(t);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02u:%02u:%02uZ", c.year, c.month, c.day, c.hour,
                c.minute, c.second);
  return buf;
}

namespace {

// Reads exactly n digits at s[pos]; advances pos.
bool digits(std::string_view s, std::size_t& pos, std::size_t n, unsigned& out) {
  if (pos + n > s.size()) return false;
  out = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const char c = s[pos + i];
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<unsigned>(c - '0');
  }
  pos += n;
  return true;
}

bool take(std::string_view s, std::size_t& pos, char c) {
  if (pos < s.size() && s[pos] == c) {
    ++pos;
    return true;
  }
  return false;
}

unsigned days_in_month(unsigned year, unsigned month) {
  static constexpr unsigned dim[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  return month == 2 && leap ? 29 : dim[month - 1];
}

}  // namespace

std::optional<std::int64_t> parse_time(std::string_view s) {
  if (s.empty()) return std::nullopt;
  // Unix seconds: an optional "-" and up to 15 digits (no date has only digits).
  {
    const std::size_t first = (s[0] == '-') ? 1 : 0;
    bool all_digits = first < s.size() && s.size() - first <= 15;
    for (std::size_t j = first; j < s.size() && all_digits; ++j)
      all_digits = s[j] >= '0' && s[j] <= '9';
    if (all_digits) {
      std::int64_t v = 0;
      for (std::size_t j = first; j < s.size(); ++j) v = v * 10 + (s[j] - '0');
      return first ? -v : v;
    }
  }
  std::size_t pos = 0;
  unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
  if (!digits(s, pos, 4, y) || !take(s, pos, '-') || !digits(s, pos, 2, mo) || !take(s, pos, '-') ||
      !digits(s, pos, 2, d))
    return std::nullopt;
  if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) return std::nullopt;
  std::int64_t offset = 0;
  if (pos < s.size()) {
    if (!take(s, pos, 'T') && !take(s, pos, 't') && !take(s, pos, ' ')) return std::nullopt;
    if (!digits(s, pos, 2, h) || !take(s, pos, ':') || !digits(s, pos, 2, mi)) return std::nullopt;
    if (take(s, pos, ':') && !digits(s, pos, 2, sec)) return std::nullopt;
    if (h > 23 || mi > 59 || sec > 60) return std::nullopt;  // 60: a leap second, folded below
    if (pos < s.size()) {
      if (take(s, pos, 'Z') || take(s, pos, 'z')) {
      } else if (s[pos] == '+' || s[pos] == '-') {
        const int sign = s[pos] == '-' ? -1 : 1;
        ++pos;
        unsigned oh = 0, om = 0;
        if (!digits(s, pos, 2, oh) || !take(s, pos, ':') || !digits(s, pos, 2, om) || oh > 23 ||
            om > 59)
          return std::nullopt;
        offset = sign * static_cast<std::int64_t>(oh * 3600 + om * 60);
      } else {
        return std::nullopt;
      }
    }
    if (pos != s.size()) return std::nullopt;
  }
  if (sec == 60) sec = 59;
  return days_from_civil(static_cast<int>(y), mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
}

std::optional<std::int64_t> parse_time_or_offset(std::string_view s, std::int64_t now) {
  if (s.empty() || s[0] != '+') return parse_time(s);
  // 9 digits of days stay far inside int64 seconds.
  if (s.size() < 3 || s.size() > 11) return std::nullopt;
  std::int64_t n = 0;
  for (std::size_t i = 1; i + 1 < s.size(); ++i) {
    if (s[i] < '0' || s[i] > '9') return std::nullopt;
    n = n * 10 + (s[i] - '0');
  }
  switch (s.back()) {
    case 's': return now + n;
    case 'm': return now + n * 60;
    case 'h': return now + n * 3600;
    case 'd': return now + n * 86400;
    default: return std::nullopt;
  }
}

}  // namespace batv::conf
