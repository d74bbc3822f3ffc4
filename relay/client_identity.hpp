// client_identity: how the next hop learns the real client behind the relay, so that its SPF,
// RBL checks and logs keep working. Pure formatting, no I/O, but for the last section (the
// XCLIENT exchange and the client name lookup it needs, with their bounds from the session):
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

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "relay/upstream.hpp"

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

// --- The one I/O piece: telling the next hop (XCLIENT), with a forward-confirmed name -----------

// Who the client is, for XCLIENT, and what bounds the name lookup.
struct ClientIdentity {
  std::string sid;                    // for logs
  std::size_t listener = 0;           // for the once-per-listener warning
  std::string upstream;               // the next hop, for logs
  boost::asio::ip::tcp::endpoint remote;
  XclientInfo info;                   // addr, ipv6, port, helo, esmtp; name is looked up here
  std::chrono::seconds lookup_timeout{};  // timeouts.upstream_connect
  std::chrono::seconds name_ttl{};        // timeouts.client_name_ttl
  std::size_t names_cached = 0;           // limits.client_names_cached
};

// Forward-confirmed reverse DNS, as Postfix does itself: the PTR name counts only when it resolves
// back to the client's address. "[UNAVAILABLE]" for no (confirmed) name, "[TEMPUNAVAIL]" for a
// lookup that failed for now (XCLIENT_README). Answers are cached per client address and I/O
// thread (ClientNameCache; a temporary failure is asked again next time).
boost::asio::awaitable<std::string> confirmed_client_name(boost::asio::any_io_executor ex, const ClientIdentity& who);

// XCLIENT (Postfix XCLIENT_README) on a next-hop connection just opened, with the attributes it
// offers; nothing when the listener's next hop offers no XCLIENT (a warning once per listener:
// the next hop then sees the relay's address). A refusal is logged and the session goes on.
// False: the next-hop connection failed.
boost::asio::awaitable<bool> forward_client_identity(Upstream& up, const ClientIdentity& who);

}  // namespace batv::relay
