// relay/log: the logfmt encoding of values from peers (sanitised, quoted, bounded).
#include <doctest/doctest.h>

#include <string>

#include "relay/log.hpp"

using namespace batv;

TEST_CASE("log values are sanitised, quoted and bounded") {
  CHECK(relay::log_value("plain") == "plain");
  CHECK(relay::log_value("") == "\"\"");
  CHECK(relay::log_value("a b") == "\"a b\"");
  CHECK(relay::log_value("k=v") == "\"k=v\"");
  CHECK(relay::log_value("say \"hi\"") == "\"say \\\"hi\\\"\"");
  CHECK(relay::log_value("line\r\nbreak") == "\"line\\x0d\\x0abreak\"");
  CHECK(relay::log_value("caf\xc3\xa9") == "\"caf\\xc3\\xa9\"");
  const std::string long_value(1000, 'x');
  const std::string v = relay::log_value(long_value);
  CHECK(v.size() < 270);
  CHECK(v.find("...") != std::string::npos);
}
