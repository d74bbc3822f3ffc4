// client_identity: how the next hop learns the real client behind the relay, so that its SPF,
// RBL checks and logs keep working. Pure formatting, no I/O:
// - HAProxy PROXY protocol v1 (text) and v2 (binary) headers (haproxy.org proxy-protocol.txt),
//   sent first on every next-hop connection;
// - Postfix XCLIENT attributes (XCLIENT_README), limited to those the next hop offered.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/ip/tcp.hpp>

namespace batv::relay {

// "PROXY TCP4 src dst sport dport\r\n" (TCP6 for IPv6; IPv4-mapped IPv6 is unmapped first);
// "PROXY UNKNOWN\r\n" when the two addresses are of different families.
std::string proxy_v1_header(const boost::asio::ip::tcp::endpoint& client,
                            const boost::asio::ip::tcp::endpoint& local);
// The 16-byte v2 signature/command/family/length block plus the address block (PROXY command,
// STREAM over INET or INET6); LOCAL command with no addresses when families differ.
std::string proxy_v2_header(const boost::asio::ip::tcp::endpoint& client,
                            const boost::asio::ip::tcp::endpoint& local);

struct XclientInfo {
  std::string addr;   // client IP as text (IPv4, or IPv6 without brackets)
  bool ipv6 = false;
  std::uint16_t port = 0;
  std::string name;   // forward-confirmed reverse DNS name, or "[UNAVAILABLE]"
  std::string helo;   // the client's HELO/EHLO argument
  bool esmtp = true;
};
// "ADDR=... PORT=... NAME=... HELO=... PROTO=ESMTP", keeping only attributes in `offered`
// (upper-case names from the next hop's EHLO). Values are xtext-encoded; IPv6 as "IPV6:addr".
// Empty when none of them is offered.
std::string xclient_attributes(const XclientInfo& info, const std::vector<std::string>& offered);

// A HELO/EHLO argument fit to repeat upstream: the first word, printable ASCII only, at most
// conf::fixed::max_forwarded_helo_length (255) octets; `fallback` when nothing is left.
std::string clean_helo(std::string_view arg, std::string_view fallback);

// Forward-confirmed client names by client IP (XCLIENT NAME), so that a reconnecting sender costs
// no DNS lookup: each entry lives `ttl`, at most `capacity` entries (the oldest go first). A
// negative answer ("[UNAVAILABLE]") is cached like a name. Pure: the caller gives the time.
class ClientNameCache {
 public:
  using Clock = std::chrono::steady_clock;
  std::optional<std::string> find(const std::string& ip, Clock::time_point now) const;
  void put(const std::string& ip, std::string name, Clock::time_point now, std::chrono::seconds ttl,
           std::size_t capacity);
  [[nodiscard]] std::size_t size() const { return names_.size(); }

 private:
  struct Entry {
    std::string name;
    Clock::time_point expires;
  };
  std::unordered_map<std::string, Entry> names_;
  std::deque<std::pair<std::string, Clock::time_point>> order_;  // insertion = expiry order
};

}  // namespace batv::relay
