#include "relay/proxy_header.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cstring>

namespace batv::relay {

namespace {

using Status = ProxyParse::Status;

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr std::string_view kV2Signature{"\r\n\r\n\0\r\nQUIT\n", 12};
// The shortest v1 line is "PROXY UNKNOWN\r\n" (15 bytes), the shortest v2 header 16: until the
// first byte says which, 15 bytes are certainly part of any header.
constexpr std::size_t kV1MinLine = 15;
constexpr std::array<std::string_view, 3> kV1Keywords = {"TCP4", "TCP6", "UNKNOWN"};

ProxyParse need(std::size_t n) {
  ProxyParse p;
  p.status = Status::need_more;
  p.need = n;
  return p;
}

ProxyParse fail(ProxyError e) {
  ProxyParse p;
  p.status = Status::error;
  p.error = e;
  return p;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// Decimal 0..max without leading zeros (proxy-protocol.txt 2.1 forbids them: octal confusion).
bool strict_number(std::string_view s, unsigned max, unsigned& out) {
  if (s.empty() || s.size() > 5 || !std::all_of(s.begin(), s.end(), is_digit)) return false;
  if (s.size() > 1 && s[0] == '0') return false;
  unsigned v = 0;
  for (char c : s) v = v * 10 + static_cast<unsigned>(c - '0');
  if (v > max) return false;
  out = v;
  return true;
}

bool parse_v4(std::string_view s, boost::asio::ip::address& out) {
  boost::asio::ip::address_v4::bytes_type b{};
  for (std::size_t i = 0; i < 4; ++i) {
    const std::size_t dot = s.find('.');
    const std::string_view part = i < 3 ? s.substr(0, dot) : s;
    if (i < 3 && dot == std::string_view::npos) return false;
    unsigned v = 0;
    if (!strict_number(part, 255, v)) return false;
    b[i] = static_cast<unsigned char>(v);
    if (i < 3) s.remove_prefix(dot + 1);
  }
  out = boost::asio::ip::address_v4(b);
  return true;
}

bool parse_v6(std::string_view s, boost::asio::ip::address& out) {
  // inet_pton takes a C string: copy into a bounded buffer. Only hex digits, colons and the dots
  // of an embedded IPv4 tail: no zone index ("%eth0"), no brackets.
  char buf[64];
  if (s.empty() || s.size() >= sizeof buf) return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return is_hex(c) || c == ':' || c == '.'; })) return false;
  std::memcpy(buf, s.data(), s.size());
  buf[s.size()] = '\0';
  boost::asio::ip::address_v6::bytes_type b{};
  if (::inet_pton(AF_INET6, buf, b.data()) != 1) return false;
  out = boost::asio::ip::address_v6(b);
  return true;
}

// Checks what has arrived of a v1 line (no CR/LF yet) so that garbage fails at once.
bool v1_prefix_ok(std::string_view in) {
  const std::size_t n = std::min(in.size(), kV1Prefix.size());
  if (in.substr(0, n) != kV1Prefix.substr(0, n)) return false;
  if (in.size() <= kV1Prefix.size()) return true;
  const std::string_view rest = in.substr(kV1Prefix.size());
  const std::size_t space = rest.find(' ');
  const std::string_view kw = rest.substr(0, space);
  bool known = false;
  for (std::string_view k : kV1Keywords)
    if (space == std::string_view::npos ? k.starts_with(kw) : k == kw) known = true;
  if (!known) return false;
  if (space == std::string_view::npos || kw == "UNKNOWN") return true;
  const std::string_view fields = rest.substr(space + 1);
  return std::all_of(fields.begin(), fields.end(), [](char c) { return is_hex(c) || c == ':' || c == '.' || c == ' '; });
}

ProxyParse parse_v1_line(std::string_view line, std::size_t length) {
  // line: without its CRLF, starting with "PROXY ".
  std::string_view rest = line.substr(kV1Prefix.size());
  ProxyParse p;
  p.status = Status::done;
  p.header.version = 1;
  p.header.length = length;
  if (rest == "UNKNOWN" || rest.starts_with("UNKNOWN ")) {
    p.header.command = ProxyHeader::Command::unknown;
    return p;
  }
  std::array<std::string_view, 5> f;
  for (std::size_t i = 0; i < f.size(); ++i) {
    const std::size_t sp = rest.find(' ');
    if (i + 1 < f.size()) {
      if (sp == std::string_view::npos) return fail(ProxyError::bad_line);
      f[i] = rest.substr(0, sp);
      rest.remove_prefix(sp + 1);
    } else {
      if (sp != std::string_view::npos) return fail(ProxyError::bad_line);
      f[i] = rest;
    }
    if (f[i].empty()) return fail(ProxyError::bad_line);
  }
  const bool v4 = f[0] == "TCP4";
  if (!v4 && f[0] != "TCP6") return fail(ProxyError::bad_line);
  auto addr = [&](std::string_view s, boost::asio::ip::address& out) { return v4 ? parse_v4(s, out) : parse_v6(s, out); };
  if (!addr(f[1], p.header.src) || !addr(f[2], p.header.dst)) return fail(ProxyError::bad_address);
  unsigned sport = 0, dport = 0;
  if (!strict_number(f[3], 65535, sport) || !strict_number(f[4], 65535, dport)) return fail(ProxyError::bad_port);
  p.header.command = ProxyHeader::Command::proxy;
  p.header.family = v4 ? ProxyHeader::Family::inet : ProxyHeader::Family::inet6;
  p.header.src_port = static_cast<std::uint16_t>(sport);
  p.header.dst_port = static_cast<std::uint16_t>(dport);
  return p;
}

ProxyParse parse_v1(std::string_view in) {
  const std::string_view window = in.substr(0, std::min(in.size(), proxy_v1_max_line));
  const std::size_t end = window.find_first_of("\r\n");
  // Not "PROXY " at all (SMTP, HTTP, TLS, ...), or a PROXY line gone wrong.
  const std::string_view start = window.substr(0, std::min(end, kV1Prefix.size()));
  if (start != kV1Prefix.substr(0, start.size()) || (end != std::string_view::npos && end < kV1Prefix.size()))
    return fail(ProxyError::not_proxy);
  if (end == std::string_view::npos) {
    if (!v1_prefix_ok(window)) return fail(ProxyError::bad_line);
    // The CRLF is still to come: two more bytes at least, within the 107.
    if (in.size() + 2 > proxy_v1_max_line) return fail(ProxyError::line_too_long);
    return need(std::max<std::size_t>(2, kV1MinLine > in.size() ? kV1MinLine - in.size() : 0));
  }
  if (!v1_prefix_ok(window.substr(0, end))) return fail(ProxyError::bad_line);
  if (window[end] == '\n') return fail(ProxyError::bad_line);  // a lone LF
  if (end + 2 > proxy_v1_max_line) return fail(ProxyError::line_too_long);
  if (end + 1 == in.size()) return need(1);                  // the LF after this CR
  if (in[end + 1] != '\n') return fail(ProxyError::bad_line);  // a lone CR
  return parse_v1_line(in.substr(0, end), end + 2);
}

std::uint16_t get16(std::string_view s, std::size_t at) {
  return static_cast<std::uint16_t>((static_cast<unsigned char>(s[at]) << 8) | static_cast<unsigned char>(s[at + 1]));
}

ProxyParse parse_v2(std::string_view in, std::size_t max_size) {
  const std::size_t n = std::min(in.size(), kV2Signature.size());
  if (in.substr(0, n) != kV2Signature.substr(0, n)) return fail(ProxyError::not_proxy);
  if (in.size() > 12) {
    const auto vc = static_cast<unsigned char>(in[12]);
    if ((vc >> 4) != 2) return fail(ProxyError::bad_version);
    if ((vc & 0x0f) > 1) return fail(ProxyError::bad_command);
  }
  if (in.size() > 13) {
    const auto fam = static_cast<unsigned char>(in[13]);
    if ((fam >> 4) > 3 || (fam & 0x0f) > 2) return fail(ProxyError::bad_family);
    if ((static_cast<unsigned char>(in[12]) & 0x0f) == 1 && fam != 0x11 && fam != 0x21)
      return fail(ProxyError::unsupported_family);
  }
  if (in.size() < proxy_v2_fixed_size) return need(proxy_v2_fixed_size - in.size());
  const bool proxy = (static_cast<unsigned char>(in[12]) & 0x0f) == 1;
  const auto fam = static_cast<unsigned char>(in[13]);
  const std::size_t len = get16(in, 14);
  const std::size_t total = proxy_v2_fixed_size + len;
  if (total > max_size) return fail(ProxyError::too_large);
  if (proxy && len < (fam == 0x11 ? 12u : 36u)) return fail(ProxyError::short_addresses);
  if (in.size() < total) return need(total - in.size());

  ProxyParse p;
  p.status = Status::done;
  p.header.version = 2;
  p.header.length = total;
  if (!proxy) {
    p.header.command = ProxyHeader::Command::local;  // addresses, if any, ignored (2.2)
    return p;
  }
  p.header.command = ProxyHeader::Command::proxy;
  const std::string_view a = in.substr(proxy_v2_fixed_size);
  if (fam == 0x11) {
    boost::asio::ip::address_v4::bytes_type s{}, d{};
    std::memcpy(s.data(), a.data(), 4);
    std::memcpy(d.data(), a.data() + 4, 4);
    p.header.family = ProxyHeader::Family::inet;
    p.header.src = boost::asio::ip::address_v4(s);
    p.header.dst = boost::asio::ip::address_v4(d);
    p.header.src_port = get16(a, 8);
    p.header.dst_port = get16(a, 10);
  } else {
    boost::asio::ip::address_v6::bytes_type s{}, d{};
    std::memcpy(s.data(), a.data(), 16);
    std::memcpy(d.data(), a.data() + 16, 16);
    p.header.family = ProxyHeader::Family::inet6;
    p.header.src = boost::asio::ip::address_v6(s);
    p.header.dst = boost::asio::ip::address_v6(d);
    p.header.src_port = get16(a, 32);
    p.header.dst_port = get16(a, 34);
  }
  return p;
}

}  // namespace

ProxyParse parse_proxy_header(std::string_view in, std::size_t max_size) {
  if (in.empty()) return need(kV1MinLine);
  if (in[0] == 'P') return parse_v1(in);
  if (in[0] == '\r') return parse_v2(in, max_size);
  return fail(ProxyError::not_proxy);
}

std::string_view to_string(ProxyHeader::Command c) {
  switch (c) {
    case ProxyHeader::Command::proxy: return "PROXY";
    case ProxyHeader::Command::local: return "LOCAL";
    case ProxyHeader::Command::unknown: return "UNKNOWN";
  }
  return "other";
}

}  // namespace batv::relay
