#include "relay/client_identity.hpp"

#include <algorithm>
#include <array>

#include "conf/limits.hpp"
#include "relay/smtp/command.hpp"

namespace batv::relay {

namespace {

using boost::asio::ip::address;

address unmapped(const address& a) {
  if (a.is_v6() && a.to_v6().is_v4_mapped())
    return boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, a.to_v6());
  return a;
}

void put16(std::string& out, std::uint16_t v) {
  out += static_cast<char>(v >> 8);
  out += static_cast<char>(v & 0xff);
}

}  // namespace

std::string proxy_v1_header(const boost::asio::ip::tcp::endpoint& client,
                            const boost::asio::ip::tcp::endpoint& local) {
  const address src = unmapped(client.address());
  const address dst = unmapped(local.address());
  if (src.is_v4() != dst.is_v4()) return "PROXY UNKNOWN\r\n";
  return std::string("PROXY ") + (src.is_v4() ? "TCP4 " : "TCP6 ") + src.to_string() + " " + dst.to_string() +
         " " + std::to_string(client.port()) + " " + std::to_string(local.port()) + "\r\n";
}

std::string proxy_v2_header(const boost::asio::ip::tcp::endpoint& client,
                            const boost::asio::ip::tcp::endpoint& local) {
  static constexpr char signature[] = "\r\n\r\n\0\r\nQUIT\n";
  std::string out(signature, 12);
  const address src = unmapped(client.address());
  const address dst = unmapped(local.address());
  if (src.is_v4() != dst.is_v4()) {
    out += static_cast<char>(0x20);  // version 2, LOCAL: the receiver uses the real connection
    out += static_cast<char>(0x00);  // UNSPEC
    put16(out, 0);
    return out;
  }
  out += static_cast<char>(0x21);  // version 2, PROXY
  if (src.is_v4()) {
    out += static_cast<char>(0x11);  // INET, STREAM
    put16(out, 12);
    for (auto b : src.to_v4().to_bytes()) out += static_cast<char>(b);
    for (auto b : dst.to_v4().to_bytes()) out += static_cast<char>(b);
  } else {
    out += static_cast<char>(0x21);  // INET6, STREAM
    put16(out, 36);
    for (auto b : src.to_v6().to_bytes()) out += static_cast<char>(b);
    for (auto b : dst.to_v6().to_bytes()) out += static_cast<char>(b);
  }
  put16(out, client.port());
  put16(out, local.port());
  return out;
}

std::string xclient_attributes(const XclientInfo& info, const std::vector<std::string>& offered) {
  auto has = [&](std::string_view a) { return std::find(offered.begin(), offered.end(), a) != offered.end(); };
  std::string out;
  auto add = [&](std::string_view key, const std::string& value) {
    if (!has(key)) return;
    if (!out.empty()) out += ' ';
    out.append(key).append("=").append(smtp::encode_xtext(value));
  };
  add("ADDR", info.ipv6 ? "IPV6:" + info.addr : info.addr);
  add("PORT", std::to_string(info.port));
  add("NAME", info.name);
  add("HELO", info.helo);
  add("PROTO", info.esmtp ? "ESMTP" : "SMTP");
  return out;
}

std::string clean_helo(std::string_view arg, std::string_view fallback) {
  const auto end = arg.find_first_of(" \t");
  std::string_view word = arg.substr(0, end);
  word = word.substr(0, conf::fixed::max_forwarded_helo_length);
  const bool printable = std::all_of(word.begin(), word.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
  if (word.empty() || !printable) return std::string(fallback);
  return std::string(word);
}

std::optional<std::string> ClientNameCache::find(const std::string& ip, Clock::time_point now) const {
  const auto it = names_.find(ip);
  if (it == names_.end() || it->second.expires <= now) return std::nullopt;
  return it->second.name;
}

void ClientNameCache::put(const std::string& ip, std::string name, Clock::time_point now,
                          std::chrono::seconds ttl, std::size_t capacity) {
  // Drop expired entries and, when full, the oldest: the queue is in expiry order as long as
  // the TTL does not change; a stale queue entry (its key re-added since) erases nothing.
  const auto drop_front = [this] {
    const auto& [key, expires] = order_.front();
    const auto it = names_.find(key);
    if (it != names_.end() && it->second.expires == expires) names_.erase(it);
    order_.pop_front();
  };
  while (!order_.empty() && order_.front().second <= now) drop_front();
  if (capacity == 0 || ttl <= std::chrono::seconds::zero()) return;
  while (names_.size() >= capacity && !order_.empty()) drop_front();
  const auto expires = now + ttl;
  names_[ip] = Entry{std::move(name), expires};
  order_.emplace_back(ip, expires);
  while (order_.size() > 2 * capacity + 16) drop_front();  // stale entries never pile up
}

}  // namespace batv::relay
