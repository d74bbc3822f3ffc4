// net: see net.hpp. inet_pton/inet_ntop are pure text<->bytes conversions (no resolver).
#include "conf/net.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#include "conf/limits.hpp"
#include "conf/ascii.hpp"

namespace batv::conf {
namespace {

void set_why(std::string* why, std::string text) {
  if (why) *why = std::move(text);
}

using text::is_alpha;
using text::is_digit;

// Decimal digits only, no sign, at most `max_digits` digits, value <= max.
std::optional<unsigned> parse_uint(std::string_view s, std::size_t max_digits, unsigned max) {
  if (s.empty() || s.size() > max_digits) return std::nullopt;
  unsigned v = 0;
  for (char c : s) {
    if (!is_digit(c)) return std::nullopt;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > max) return std::nullopt;
  return v;
}

}  // namespace

std::optional<IpAddress> parse_ip(std::string_view text) {
  // inet_pton needs a NUL-terminated string; anything longer than the longest IPv6 text form
  // (INET6_ADDRSTRLEN - 1) cannot be an address.
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN) return std::nullopt;
  if (text.find('\0') != std::string_view::npos) return std::nullopt;
  char buf[INET6_ADDRSTRLEN] = {};
  std::memcpy(buf, text.data(), text.size());
  IpAddress ip;
  if (text.find(':') != std::string_view::npos) {
    if (inet_pton(AF_INET6, buf, ip.bytes.data()) != 1) return std::nullopt;
    ip.v6 = true;
  } else {
    if (inet_pton(AF_INET, buf, ip.bytes.data()) != 1) return std::nullopt;
  }
  return ip;
}

std::string IpAddress::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (!inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buf, sizeof buf)) return "?";
  return buf;
}

std::optional<Cidr> parse_cidr(std::string_view text, std::string* why) {
  std::string_view addr_text = text;
  std::optional<unsigned> prefix;
  if (auto slash = text.find('/'); slash != std::string_view::npos) {
    addr_text = text.substr(0, slash);
    std::string_view p = text.substr(slash + 1);
    prefix = parse_uint(p, 3, 999);
    if (!prefix) {
      set_why(why, "prefix length must be a number after '/'");
      return std::nullopt;
    }
  }
  auto ip = parse_ip(addr_text);
  if (!ip) {
    set_why(why, addr_text.empty() ? "missing address" : "not an IPv4 or IPv6 address");
    return std::nullopt;
  }
  const unsigned bits = ip->v6 ? 128u : 32u;
  if (!prefix) prefix = bits;
  if (*prefix > bits) {
    set_why(why, std::string("prefix length exceeds ") + (ip->v6 ? "128" : "32"));
    return std::nullopt;
  }
  Cidr c;
  c.v6 = ip->v6;
  c.prefix = static_cast<int>(*prefix);
  // Mask host bits (documented: accepted, not an error).
  for (unsigned i = 0; i < bits / 8; ++i) {
    const unsigned lo = i * 8;
    std::uint8_t mask = 0;
    if (*prefix >= lo + 8)
      mask = 0xff;
    else if (*prefix > lo)
      mask = static_cast<std::uint8_t>(0xff << (8 - (*prefix - lo)));
    c.addr[i] = static_cast<std::uint8_t>(ip->bytes[i] & mask);
  }
  return c;
}

bool Cidr::contains(std::span<const std::uint8_t> ip) const {
  static constexpr std::uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  if (ip.size() == 16 && !v6 && std::equal(ip.begin(), ip.begin() + 12, kV4MappedPrefix))
    ip = ip.subspan(12);  // ::ffff:a.b.c.d seen by a dual-stack socket = IPv4 peer a.b.c.d
  if (ip.size() != (v6 ? 16u : 4u)) return false;
  const int full = prefix / 8;
  for (int i = 0; i < full; ++i)
    if (ip[i] != addr[i]) return false;
  if (const int rest = prefix % 8; rest != 0) {
    const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
    if ((ip[full] & mask) != addr[full]) return false;
  }
  return true;
}

bool Cidr::contains(const IpAddress& ip) const {
  return contains(std::span<const std::uint8_t>(ip.bytes.data(), ip.v6 ? 16u : 4u));
}

bool Cidr::contains(std::string_view ip_literal) const {
  auto ip = parse_ip(ip_literal);
  return ip && contains(*ip);
}

std::string Cidr::to_string() const {
  IpAddress ip{addr, v6};
  return ip.to_string() + "/" + std::to_string(prefix);
}

std::optional<std::string> normalize_domain(std::string_view text, std::string* why) {
  if (text.empty()) {
    set_why(why, "empty domain");
    return std::nullopt;
  }
  if (text.size() > fixed::max_domain_length) {
    set_why(why, "longer than " + std::to_string(fixed::max_domain_length) + " characters");
    return std::nullopt;
  }
  std::string out;
  out.reserve(text.size());
  std::size_t label_start = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i == text.size() || text[i] == '.') {
      std::string_view label = text.substr(label_start, i - label_start);
      if (label.empty()) {
        set_why(why, "empty label (leading, trailing or doubled '.')");
        return std::nullopt;
      }
      if (label.size() > fixed::max_label_length) {
        set_why(why, "label longer than " + std::to_string(fixed::max_label_length) + " characters");
        return std::nullopt;
      }
      if (label.front() == '-' || label.back() == '-') {
        set_why(why, "label starts or ends with '-'");
        return std::nullopt;
      }
      if (i < text.size()) out.push_back('.');
      label_start = i + 1;
      continue;
    }
    const char c = text[i];
    if (static_cast<unsigned char>(c) >= 0x80) {
      set_why(why, "non-ASCII character; write an internationalized name as its A-label (xn--...)");
      return std::nullopt;
    }
    if (!is_alpha(c) && !is_digit(c) && c != '-') {
      set_why(why, "only letters, digits, '-' and '.' are allowed");
      return std::nullopt;
    }
    out.push_back(text::lower(c));
  }
  return out;
}

std::optional<HostPort> parse_host_port(std::string_view text, bool allow_hostname, std::string* why) {
  HostPort hp;
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) {
      set_why(why, "missing ']' after IPv6 address");
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') {
      set_why(why, "missing port: write [address]:port");
      return std::nullopt;
    }
    port_text = rest.substr(1);
    auto ip = parse_ip(host);
    if (!ip || !ip->v6 || host.find(':') == std::string_view::npos) {
      set_why(why, "not an IPv6 address inside [ ]");
      return std::nullopt;
    }
    hp.host = ip->to_string();
    hp.is_ipv6_literal = hp.is_ip_literal = true;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      set_why(why, "missing port: write host:port");
      return std::nullopt;
    }
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      set_why(why, "IPv6 address must be in brackets, e.g. [::1]:25");
      return std::nullopt;
    }
    if (host.empty()) {
      set_why(why, "missing host before ':'");
      return std::nullopt;
    }
    if (auto ip = parse_ip(host)) {
      hp.host = ip->to_string();
      hp.is_ip_literal = true;
    } else if (!allow_hostname) {
      set_why(why, "host must be an IP address (IPv4, or IPv6 in brackets)");
      return std::nullopt;
    } else {
      std::string domain_why;
      auto name = normalize_domain(host, &domain_why);
      if (!name) {
        set_why(why, "bad hostname: " + domain_why);
        return std::nullopt;
      }
      // RFC 3696 2: a top-level label is never all-numeric, so "256.1.1.1" is a bad IP, not a name.
      const auto last = name->substr(name->rfind('.') == std::string::npos ? 0 : name->rfind('.') + 1);
      if (std::all_of(last.begin(), last.end(), is_digit)) {
        set_why(why, "not a valid IPv4 address or hostname");
        return std::nullopt;
      }
      hp.host = std::move(*name);
    }
  }
  if (port_text.empty()) {
    set_why(why, "missing port number after ':'");
    return std::nullopt;
  }
  auto port = parse_uint(port_text, 5, 65535);
  if (!port) {
    set_why(why, "port must be a number from 0 to 65535");
    return std::nullopt;
  }
  hp.port = static_cast<std::uint16_t>(*port);
  return hp;
}

std::string HostPort::to_string() const {
  std::string s = is_ipv6_literal ? "[" + host + "]" : host;
  return s + ":" + std::to_string(port);
}

}  // namespace batv::conf
