// relay/client_identity: how the next hop learns the real client (PROXY v1/v2 headers we send,
// XCLIENT attributes, the HELO name we forward) and the forward-confirmed client name cache.
#include <doctest/doctest.h>

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "relay/client_identity.hpp"

using namespace batv;

TEST_CASE("PROXY protocol headers") {
  using boost::asio::ip::make_address;
  using ep = boost::asio::ip::tcp::endpoint;
  const ep c4(make_address("192.0.2.7"), 40000), l4(make_address("198.51.100.1"), 25);
  CHECK(relay::proxy_v1_header(c4, l4) == "PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
  const ep c6(make_address("2001:db8::7"), 40000), l6(make_address("2001:db8::1"), 25);
  CHECK(relay::proxy_v1_header(c6, l6) == "PROXY TCP6 2001:db8::7 2001:db8::1 40000 25\r\n");
  const ep mapped(make_address("::ffff:192.0.2.7"), 40000);
  CHECK(relay::proxy_v1_header(mapped, l4) == "PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
  CHECK(relay::proxy_v1_header(c6, l4) == "PROXY UNKNOWN\r\n");

  const std::string v2 = relay::proxy_v2_header(c4, l4);
  REQUIRE(v2.size() == 16 + 12);
  CHECK(v2.substr(0, 12) == std::string("\r\n\r\n\0\r\nQUIT\n", 12));
  CHECK(static_cast<unsigned char>(v2[12]) == 0x21);
  CHECK(static_cast<unsigned char>(v2[13]) == 0x11);
  CHECK(v2[14] == 0);
  CHECK(v2[15] == 12);
  CHECK(v2.substr(16, 4) == std::string("\xc0\x00\x02\x07", 4));
  CHECK(v2.substr(24, 4) == std::string("\x9c\x40\x00\x19", 4));  // 40000, 25
  const std::string v2_6 = relay::proxy_v2_header(c6, l6);
  CHECK(v2_6.size() == 16 + 36);
  CHECK(static_cast<unsigned char>(v2_6[13]) == 0x21);
}

TEST_CASE("XCLIENT attributes: only the offered ones, xtext-encoded") {
  relay::XclientInfo info;
  info.addr = "192.0.2.7";
  info.port = 40000;
  info.name = "[UNAVAILABLE]";
  info.helo = "mail+1.example";
  info.esmtp = true;
  CHECK(relay::xclient_attributes(info, {"NAME", "ADDR", "PORT", "HELO", "PROTO"}) ==
        "ADDR=192.0.2.7 PORT=40000 NAME=[UNAVAILABLE] HELO=mail+2B1.example PROTO=ESMTP");
  CHECK(relay::xclient_attributes(info, {"ADDR"}) == "ADDR=192.0.2.7");
  CHECK(relay::xclient_attributes(info, {}) == "");
  info.addr = "2001:db8::7";
  info.ipv6 = true;
  info.esmtp = false;
  CHECK(relay::xclient_attributes(info, {"ADDR", "PROTO"}) == "ADDR=IPV6:2001:db8::7 PROTO=SMTP");
  CHECK(relay::clean_helo("client.example extra", "relay") == "client.example");
  CHECK(relay::clean_helo("bad\x01name", "relay") == "relay");
  CHECK(relay::clean_helo("", "relay") == "relay");
}

TEST_CASE("client name cache: TTL, capacity, negative answers, TTL 0 and capacity 0 disable") {
  using relay::ClientNameCache;
  using std::chrono::seconds;
  const auto t0 = ClientNameCache::Clock::time_point{} + seconds(1000);
  ClientNameCache c;
  c.put("192.0.2.1", "mx.example.net", t0, seconds(300), 3);
  CHECK(c.find("192.0.2.1", t0 + seconds(299)) == std::optional<std::string>("mx.example.net"));
  CHECK_FALSE(c.find("192.0.2.1", t0 + seconds(300)).has_value());  // expired exactly at the TTL
  CHECK_FALSE(c.find("192.0.2.2", t0).has_value());
  c.put("192.0.2.2", "[UNAVAILABLE]", t0 + seconds(1), seconds(300), 3);
  CHECK(c.find("192.0.2.2", t0 + seconds(2)) == std::optional<std::string>("[UNAVAILABLE]"));
  // Full: the oldest entry goes first.
  c.put("192.0.2.3", "c.example", t0 + seconds(2), seconds(300), 3);
  c.put("192.0.2.4", "d.example", t0 + seconds(3), seconds(300), 3);
  CHECK(c.size() == 3);
  CHECK_FALSE(c.find("192.0.2.1", t0 + seconds(4)).has_value());
  CHECK(c.find("192.0.2.2", t0 + seconds(4)).has_value());
  CHECK(c.find("192.0.2.4", t0 + seconds(4)).has_value());
  // Expired entries are dropped when the next name is added, and a re-added address keeps its new entry.
  c.put("192.0.2.2", "b2.example", t0 + seconds(400), seconds(300), 3);
  CHECK(c.size() == 1);
  CHECK(c.find("192.0.2.2", t0 + seconds(401)) == std::optional<std::string>("b2.example"));
  // TTL 0 or capacity 0: nothing is kept.
  ClientNameCache off;
  off.put("192.0.2.9", "x.example", t0, seconds(0), 10);
  off.put("192.0.2.9", "x.example", t0, seconds(60), 0);
  CHECK(off.size() == 0);
}
