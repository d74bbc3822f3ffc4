#include <doctest/doctest.h>

#include "conf/timefmt.hpp"

using namespace batv::conf;

TEST_CASE("parse_time: unix seconds and ISO-8601 UTC") {
  CHECK(parse_time("1700000000") == 1700000000);
  CHECK(parse_time("0") == 0);
  CHECK(parse_time("-86400") == -86400);
  CHECK(parse_time("2023-11-14T22:13:20Z") == 1700000000);
  CHECK(parse_time("2023-11-14 22:13:20") == 1700000000);
  CHECK(parse_time("2023-11-14T22:13") == 1699999980);
  CHECK(parse_time("2023-11-14") == 1699920000);
  CHECK(parse_time("2023-11-15T00:13:20+02:00") == 1700000000);
  CHECK(parse_time("2023-11-14T20:13:20-02:00") == 1700000000);
  CHECK(parse_time("2024-02-29") == 1709164800);
  CHECK_FALSE(parse_time("2023-02-29"));
  CHECK_FALSE(parse_time("2023-13-01"));
  CHECK_FALSE(parse_time("2023-11-14T24:00"));
  CHECK_FALSE(parse_time("2023-11-14T22:13:20Q"));
  CHECK_FALSE(parse_time("yesterday"));
  CHECK_FALSE(parse_time(""));
  CHECK_FALSE(parse_time("-"));
}

TEST_CASE("format_utc round-trips") {
  CHECK(format_utc(1700000000) == "2023-11-14T22:13:20Z");
  CHECK(format_utc(0) == "1970-01-01T00:00:00Z");
  CHECK(format_utc(-1) == "1969-12-31T23:59:59Z");
  for (std::int64_t t = -100000000; t < 4000000000; t += 9876543)
    CHECK(parse_time(format_utc(t)) == t);
}

TEST_CASE("parse_time_or_offset: absolute times, or +N s/m/h/d from now") {
  constexpr std::int64_t now = 1700000000;
  CHECK(parse_time_or_offset("+90s", now) == now + 90);
  CHECK(parse_time_or_offset("+30m", now) == now + 1800);
  CHECK(parse_time_or_offset("+2h", now) == now + 7200);
  CHECK(parse_time_or_offset("+1d", now) == now + 86400);
  CHECK(parse_time_or_offset("+0s", now) == now);
  CHECK(parse_time_or_offset("+999999999d", now) == now + 999999999LL * 86400);
  CHECK(parse_time_or_offset("1700000600", now) == 1700000600);
  CHECK(parse_time_or_offset("2023-11-15T00:00:00Z", now) == 1700006400);
  for (const char* bad : {"+", "+s", "+90", "+90x", "+9 s", "+-1s", "+1000000000d", "+1.5h", "90s", "-5m"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_time_or_offset(bad, now));
  }
}
