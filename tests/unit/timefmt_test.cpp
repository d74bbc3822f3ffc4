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
