// Unit tests for relay/proxy_header: PROXY protocol v1 and v2 headers as the load balancer sends
// them (byte vectors from haproxy doc/proxy-protocol.txt 2.1 / 2.2 and from our own sender,
// relay/client_identity), the need-more counts a reader follows, and every refusal.
#include <doctest/doctest.h>

#include <string>
#include <string_view>
#include <vector>

#include "relay/client_identity.hpp"
#include "relay/metrics.hpp"
#include "relay/proxy_header.hpp"

using namespace batv::relay;
using Status = ProxyParse::Status;
using Command = ProxyHeader::Command;
using Family = ProxyHeader::Family;
namespace ip = boost::asio::ip;

namespace {

constexpr std::size_t kMax = 536;
const std::string kSig("\r\n\r\n\0\r\nQUIT\n", 12);

std::string bytes(std::initializer_list<int> v) {
  std::string s;
  for (int b : v) s += static_cast<char>(b);
  return s;
}

ProxyParse parse(std::string_view s, std::size_t max = kMax) { return parse_proxy_header(s, max); }

// Reads `wire` the way relay/server.cpp does: start from nothing, take exactly `need` bytes each
// time. Returns the final parse and checks that no read went past `header_len`.
ProxyParse read_like_server(const std::string& wire, std::size_t header_len) {
  std::size_t have = 0;
  for (int rounds = 0; rounds < 200; ++rounds) {
    const ProxyParse p = parse(std::string_view(wire).substr(0, have));
    if (p.status != Status::need_more) return p;
    REQUIRE(p.need > 0);
    have += p.need;
    REQUIRE(have <= header_len);
    REQUIRE(have <= wire.size());
  }
  FAIL("reader did not finish");
  return {};
}

}  // namespace

TEST_CASE("proxy v1: TCP4 and TCP6 lines") {
  const std::string line = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
  const ProxyParse p = parse(line + "EHLO client\r\n");
  REQUIRE(p.status == Status::done);
  CHECK(p.header.version == 1);
  CHECK(p.header.command == Command::proxy);
  CHECK(p.header.family == Family::inet);
  CHECK(p.header.src == ip::make_address("192.168.0.1"));
  CHECK(p.header.dst == ip::make_address("192.168.0.11"));
  CHECK(p.header.src_port == 56324);
  CHECK(p.header.dst_port == 443);
  CHECK(p.header.length == line.size());

  const std::string six = "PROXY TCP6 2001:db8::1 ::ffff:192.0.2.7 0 65535\r\n";
  const ProxyParse q = parse(six);
  REQUIRE(q.status == Status::done);
  CHECK(q.header.family == Family::inet6);
  CHECK(q.header.src == ip::make_address("2001:db8::1"));
  CHECK(q.header.dst == ip::make_address("::ffff:192.0.2.7"));
  CHECK(q.header.src_port == 0);
  CHECK(q.header.dst_port == 65535);

  const std::string longest = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  CHECK(longest.size() == 104);  // the spec's figure for TCP6
  CHECK(parse(longest).status == Status::done);
}

TEST_CASE("proxy v1: UNKNOWN, short and long forms") {
  for (const std::string line : {"PROXY UNKNOWN\r\n", "PROXY UNKNOWN whatever comes \x01 here\r\n",
                                 "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"}) {
    CAPTURE(line);
    const ProxyParse p = parse(line);
    REQUIRE(p.status == Status::done);
    CHECK(p.header.command == Command::unknown);
    CHECK(p.header.length == line.size());
  }
  CHECK(parse("PROXY UNKNOWNX\r\n").status == Status::error);
}

TEST_CASE("proxy v1: strict fields") {
  struct Row {
    std::string line;
    ProxyError error;
  };
  const std::vector<Row> rows = {
      {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", ProxyError::bad_line},       // lone LF
      {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\rX", ProxyError::bad_line},      // lone CR
      {"PROXY TCP4  192.168.0.1 192.168.0.11 56324 443\r\n", ProxyError::bad_line},    // two spaces
      {"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", ProxyError::bad_line},    // trailing space
      {"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n", ProxyError::bad_line},         // a field missing
      {"PROXY TCP4 192.168.0.1 192.168.0.11 1 2 3\r\n", ProxyError::bad_line},         // one too many
      {"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", ProxyError::bad_line},
      {"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", ProxyError::bad_line},
      {"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n", ProxyError::bad_address},      // leading zeros
      {"PROXY TCP4 192.168.0.256 192.168.0.11 1 2\r\n", ProxyError::bad_address},
      {"PROXY TCP4 192.168.0 192.168.0.11 1 2\r\n", ProxyError::bad_address},
      {"PROXY TCP4 192.168.0.1.5 192.168.0.11 1 2\r\n", ProxyError::bad_address},
      {"PROXY TCP4 ::1 192.168.0.11 1 2\r\n", ProxyError::bad_address},               // other family
      {"PROXY TCP6 192.168.0.1 ::1 1 2\r\n", ProxyError::bad_address},
      {"PROXY TCP6 ::1 ::1:: 1 2\r\n", ProxyError::bad_address},
      {"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ProxyError::bad_line},                 // no zone index
      {"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n", ProxyError::bad_port},
      {"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", ProxyError::bad_port},
      {"PROXY TCP4 1.2.3.4 1.2.3.4 1 999999\r\n", ProxyError::bad_port},
      {"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", ProxyError::bad_line},                 // '-' never a field char
      {"PROXY TCP4 1.2.3.4 1.2.3.4 1 2a\r\n", ProxyError::bad_port},
      {"PROXI TCP4 1.2.3.4 1.2.3.4 1 2\r\n", ProxyError::not_proxy},
      {"EHLO client.example\r\n", ProxyError::not_proxy},
      {"GET / HTTP/1.1\r\n", ProxyError::not_proxy},
  };
  for (const Row& r : rows) {
    CAPTURE(r.line);
    const ProxyParse p = parse(r.line);
    REQUIRE(p.status == Status::error);
    CHECK(to_string(p.error) == to_string(r.error));
  }
}

TEST_CASE("proxy v1: 107 bytes at most, garbage refused before the CRLF") {
  std::string unknown = "PROXY UNKNOWN " + std::string(90, 'x');  // 104 bytes, no CRLF yet
  CHECK(parse(unknown).status == Status::need_more);
  CHECK(parse(unknown + "y\r\n").status == Status::done);  // 107 with the CRLF
  const ProxyParse too_long = parse(unknown + "yz\r\n");  // 108
  REQUIRE(too_long.status == Status::error);
  CHECK(too_long.error == ProxyError::line_too_long);
  const ProxyParse no_crlf = parse(unknown + "yz");      // 106 bytes, CRLF cannot fit any more
  REQUIRE(no_crlf.status == Status::error);
  CHECK(no_crlf.error == ProxyError::line_too_long);
  // A wrong start fails on its first byte; a wrong keyword or field byte as soon as it arrives.
  CHECK(parse("E").status == Status::error);
  CHECK(parse("PRX").status == Status::error);
  CHECK(parse("PROXY TCP7").status == Status::error);
  CHECK(parse("PROXY TCP4 1.2.3.4 z").status == Status::error);
  CHECK(parse("PROXY TCP").status == Status::need_more);
}

TEST_CASE("proxy v1: need counts stay inside the header") {
  CHECK(parse("").need == 15);
  CHECK(parse("P").need == 14);
  CHECK(parse("PROXY UNKNOWN\r").need == 1);
  CHECK(parse("PROXY TCP4 1.2.3.4 5.6.7.8 1 2").need == 2);
  const std::string line = "PROXY TCP4 10.1.2.3 10.9.8.7 40000 25\r\n";
  const ProxyParse p = read_like_server(line + "QUIT\r\n", line.size());
  REQUIRE(p.status == Status::done);
  CHECK(p.header.length == line.size());
  CHECK(read_like_server("PROXY UNKNOWN\r\n", 15).status == Status::done);
}

TEST_CASE("proxy v2: PROXY over TCP4 and TCP6, TLVs skipped") {
  // 192.0.2.1:56324 -> 198.51.100.2:25
  const std::string v4 = kSig + bytes({0x21, 0x11, 0x00, 0x0c, 192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x00, 0x19});
  const ProxyParse p = parse(v4 + "EHLO x\r\n");
  REQUIRE(p.status == Status::done);
  CHECK(p.header.version == 2);
  CHECK(p.header.command == Command::proxy);
  CHECK(p.header.family == Family::inet);
  CHECK(p.header.src == ip::make_address("192.0.2.1"));
  CHECK(p.header.dst == ip::make_address("198.51.100.2"));
  CHECK(p.header.src_port == 56324);
  CHECK(p.header.dst_port == 25);
  CHECK(p.header.length == 28);

  std::string v6 = kSig + bytes({0x21, 0x21, 0x00, 36 + 7});
  v6 += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1});
  v6 += bytes({0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2});
  v6 += bytes({0x10, 0x92, 0x00, 0x19});
  v6 += bytes({0x04, 0x00, 0x04, 'n', 'o', 'o', 'p'});  // PP2_TYPE_NOOP TLV
  const ProxyParse q = read_like_server(v6 + "EHLO", v6.size());
  REQUIRE(q.status == Status::done);
  CHECK(q.header.family == Family::inet6);
  CHECK(q.header.src == ip::make_address("2001:db8::1"));
  CHECK(q.header.dst == ip::make_address("2001:db8::2"));
  CHECK(q.header.src_port == 4242);
  CHECK(q.header.length == v6.size());
}

TEST_CASE("proxy v2: LOCAL, with and without addresses") {
  const ProxyParse p = parse(kSig + bytes({0x20, 0x00, 0x00, 0x00}));
  REQUIRE(p.status == Status::done);
  CHECK(p.header.command == Command::local);
  CHECK(p.header.length == 16);
  // LOCAL with an address block (which must be skipped, not assumed empty: 2.2).
  const std::string with = kSig + bytes({0x20, 0x11, 0x00, 0x0c, 127, 0, 0, 1, 127, 0, 0, 1, 0, 1, 0, 2});
  const ProxyParse q = parse(with + "X");
  REQUIRE(q.status == Status::done);
  CHECK(q.header.command == Command::local);
  CHECK(q.header.length == 28);
  // LOCAL with AF_UNIX is a health check as well.
  CHECK(parse(kSig + bytes({0x20, 0x31, 0x00, 0x00})).header.command == Command::local);
}

TEST_CASE("proxy v2: refusals") {
  struct Row {
    std::string wire;
    ProxyError error;
  };
  const std::vector<Row> rows = {
      {kSig + bytes({0x11, 0x11, 0x00, 0x0c}), ProxyError::bad_version},
      {kSig + bytes({0x22, 0x11, 0x00, 0x0c}), ProxyError::bad_command},
      {kSig + bytes({0x21, 0x41, 0x00, 0x0c}), ProxyError::bad_family},
      {kSig + bytes({0x21, 0x13, 0x00, 0x0c}), ProxyError::bad_family},
      {kSig + bytes({0x21, 0x00, 0x00, 0x00}), ProxyError::unsupported_family},  // PROXY + UNSPEC
      {kSig + bytes({0x21, 0x12, 0x00, 0x0c}), ProxyError::unsupported_family},  // UDP
      {kSig + bytes({0x21, 0x31, 0x00, 0xd8}), ProxyError::unsupported_family},  // AF_UNIX
      {kSig + bytes({0x21, 0x11, 0x00, 0x0b}), ProxyError::short_addresses},
      {kSig + bytes({0x21, 0x21, 0x00, 0x0c}), ProxyError::short_addresses},
      {kSig + bytes({0x21, 0x11, 0x02, 0x09}), ProxyError::too_large},  // 16 + 521 = 537 > 536
      {kSig + bytes({0x20, 0x00, 0xff, 0xff}), ProxyError::too_large},
      {std::string("\r\n\r\n\0\r\nQUIX\n", 12), ProxyError::not_proxy},
      {"\r\nQUIT\r\n", ProxyError::not_proxy},
  };
  for (const Row& r : rows) {
    CAPTURE(r.wire.size());
    const ProxyParse p = parse(r.wire);
    REQUIRE(p.status == Status::error);
    CHECK(to_string(p.error) == to_string(r.error));
  }
  // The bound is the caller's: 537 bytes pass with a larger one.
  CHECK(parse(kSig + bytes({0x21, 0x11, 0x02, 0x09}), 1000).status == Status::need_more);
  // Errors show as soon as the byte that causes them arrives, before the length is known.
  CHECK(parse(kSig + bytes({0x11})).status == Status::error);
  CHECK(parse(kSig + bytes({0x21, 0x31})).status == Status::error);
  CHECK(parse("\r\n\r\n\x01").status == Status::error);
}

TEST_CASE("proxy v2: need counts: 16 bytes, then exactly the length") {
  CHECK(parse("\r").need == 15);
  CHECK(parse(kSig).need == 4);
  const std::string head = kSig + bytes({0x21, 0x11, 0x00, 0x10});
  CHECK(parse(head).need == 16);  // 12 address bytes + a 4-byte TLV
  CHECK(parse(head + "12345678").need == 8);
}

TEST_CASE("proxy headers from our own sender (client_identity) read back") {
  struct Pair {
    std::string client, local;
  };
  const std::vector<Pair> pairs = {{"192.0.2.10", "198.51.100.1"}, {"2001:db8::5", "2001:db8::25"},
                                   {"::ffff:192.0.2.10", "198.51.100.1"}, {"0.0.0.0", "255.255.255.255"}};
  for (const Pair& pr : pairs) {
    CAPTURE(pr.client);
    const ip::tcp::endpoint client(ip::make_address(pr.client), 61000), local(ip::make_address(pr.local), 25);
    for (const std::string& wire : {proxy_v1_header(client, local), proxy_v2_header(client, local)}) {
      const ProxyParse p = read_like_server(wire + "EHLO x\r\n", wire.size());
      REQUIRE(p.status == Status::done);
      CHECK(p.header.length == wire.size());
      CHECK(p.header.command == Command::proxy);
      auto expect = ip::make_address(pr.client);
      if (expect.is_v6() && expect.to_v6().is_v4_mapped()) expect = ip::make_address_v4(ip::v4_mapped, expect.to_v6());
      CHECK(p.header.src == expect);
      CHECK(p.header.dst == ip::make_address(pr.local));
      CHECK(p.header.src_port == 61000);
      CHECK(p.header.dst_port == 25);
    }
  }
  // Mixed families: our sender says UNKNOWN (v1) or LOCAL (v2).
  const ip::tcp::endpoint c6(ip::make_address("2001:db8::5"), 1), l4(ip::make_address("192.0.2.1"), 25);
  CHECK(parse(proxy_v1_header(c6, l4)).header.command == Command::unknown);
  CHECK(parse(proxy_v2_header(c6, l4)).header.command == Command::local);
}

TEST_CASE("proxy header errors: every parse error has its own metric label") {
  // batv_proxy_header_errors_total{reason}: a parse error missing from the metric's fixed label
  // set would count as "other" and hide what went wrong.
  for (int i = 0; i <= static_cast<int>(ProxyError::too_large); ++i) {
    const auto e = static_cast<ProxyError>(i);
    CAPTURE(to_string(e));
    CHECK(Metrics::name(static_cast<Metrics::ProxyHeaderError>(i)) == to_string(e));
  }
  Metrics m;
  m.proxy_header_error(Metrics::ProxyHeaderError::bad_port);
  m.proxy_header_error(Metrics::ProxyHeaderError::timeout);
  m.proxy_health_check();
  const std::string text = m.render_prometheus(0);
  CHECK(text.find("batv_proxy_header_errors_total{reason=\"bad_port\"} 1\n") != std::string::npos);
  CHECK(text.find("batv_proxy_header_errors_total{reason=\"timeout\"} 1\n") != std::string::npos);
  CHECK(text.find("batv_proxy_header_errors_total{reason=\"other\"} 0\n") != std::string::npos);  // only by enum
  CHECK(text.find("batv_proxy_header_errors_total{reason=\"not_proxy\"} 0\n") != std::string::npos);
  CHECK(text.find("batv_proxy_health_checks_total 1\n") != std::string::npos);
}
