// net: pure parsers for the network values in the config: CIDR blocks, host:port endpoints and
// domain names.
//
// Contract: string_view in, value or std::nullopt out (with a one-line reason through the
// optional `why` pointer). No sockets, no DNS, no I/O: IP literals go through inet_pton only.
// Hostnames are never resolved here; the relay resolves upstream hostnames when it connects.
//
// Accepted forms
//   CIDR      "10.0.0.0/8", "2001:db8::/32"; a bare address is /32 or /128. Host bits set beyond
//             the prefix ("10.1.2.3/8") are accepted and masked off (stored as 10.0.0.0/8).
//   host:port "127.0.0.1:25", "[::1]:25", and with allow_hostname "mx.example.com:25". IPv6
//             literals must be bracketed; zone ids ("%eth0") are refused. Port 0..65535 (the
//             caller decides whether 0 is meaningful).
//   domain    ASCII letters, digits and hyphens in dot-separated labels (RFC 1035 2.3.1, RFC 1123
//             2.1): no empty label, labels <= 63 octets not starting or ending with '-', total
//             <= 253. Internationalized names must be given as A-labels ("xn--..."). Result is
//             lowercased. No trailing dot.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace batv::conf {

// An IP address as raw bytes; IPv4 occupies bytes[0..3] and the rest are zero.
struct IpAddress {
  std::array<std::uint8_t, 16> bytes{};
  bool v6 = false;
  std::string to_string() const;  // inet_ntop form: "127.0.0.1", "::1"
  friend bool operator==(const IpAddress&, const IpAddress&) = default;
};
// Plain IPv4 dotted quad or IPv6 text, no brackets, no prefix.
std::optional<IpAddress> parse_ip(std::string_view text);

struct Cidr {
  std::array<std::uint8_t, 16> addr{};  // network address, host bits zero; IPv4 in addr[0..3]
  bool v6 = false;
  int prefix = 0;                       // 0..32 (v4) or 0..128 (v6)

  // `ip` is 4 bytes (IPv4) or 16 bytes (IPv6), network order, as from asio's to_bytes().
  // An IPv4-mapped IPv6 address (::ffff:a.b.c.d, what a dual-stack socket reports for an IPv4
  // peer) is matched against IPv4 networks as a.b.c.d. Any other length never matches.
  bool contains(std::span<const std::uint8_t> ip) const;
  bool contains(const IpAddress& ip) const;
  bool contains(std::string_view ip_literal) const;  // false when not an IP literal
  std::string to_string() const;                      // "10.0.0.0/8", "::1/128"
  friend bool operator==(const Cidr&, const Cidr&) = default;
};
std::optional<Cidr> parse_cidr(std::string_view text, std::string* why = nullptr);

struct HostPort {
  std::string host;              // hostname (lowercased) or IP literal in canonical form, no brackets
  std::uint16_t port = 0;
  bool is_ipv6_literal = false;
  bool is_ip_literal = false;    // IPv4 or IPv6 literal
  std::string to_string() const; // "127.0.0.1:25", "[::1]:25", "mx.example.com:25"
  friend bool operator==(const HostPort&, const HostPort&) = default;
};
// allow_hostname = false: the host must be an IP literal (listen addresses).
std::optional<HostPort> parse_host_port(std::string_view text, bool allow_hostname,
                                        std::string* why = nullptr);

// Validates and lowercases a domain name (see the rules above).
std::optional<std::string> normalize_domain(std::string_view text, std::string* why = nullptr);

}  // namespace batv::conf
