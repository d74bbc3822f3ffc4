#include "relay/client_identity.hpp"

#include <algorithm>
#include <array>
#include <atomic>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include "conf/limits.hpp"
#include "relay/log.hpp"
#include "relay/smtp/command.hpp"
#include "relay/smtp/reply.hpp"

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

namespace {

boost::asio::awaitable<std::string> lookup_client_name(boost::asio::any_io_executor ex,
                                                       const boost::asio::ip::tcp::endpoint& remote,
                                                       std::chrono::seconds timeout) {
  namespace asio = boost::asio;
  asio::ip::tcp::resolver resolver(ex);
  asio::steady_timer timer(ex);
  timer.expires_after(timeout);
  using namespace asio::experimental::awaitable_operators;
  auto rev = co_await (resolver.async_resolve(remote, asio::as_tuple(asio::use_awaitable)) ||
                       timer.async_wait(asio::as_tuple(asio::use_awaitable)));
  // XCLIENT_README: [TEMPUNAVAIL] for a lookup that failed for now (the MX may defer),
  // [UNAVAILABLE] for no name.
  if (rev.index() != 0) co_return "[TEMPUNAVAIL]";
  auto [rec, names] = std::get<0>(rev);
  if (rec == asio::error::host_not_found_try_again) co_return "[TEMPUNAVAIL]";
  if (rec || names.empty()) co_return "[UNAVAILABLE]";
  const std::string name = names.begin()->host_name();
  boost::system::error_code numeric;
  asio::ip::make_address(name, numeric);
  if (!numeric) co_return "[UNAVAILABLE]";  // getnameinfo fell back to the number: no PTR
  auto fwd = co_await (resolver.async_resolve(name, "", asio::as_tuple(asio::use_awaitable)) ||
                       timer.async_wait(asio::as_tuple(asio::use_awaitable)));
  if (fwd.index() != 0) co_return "[TEMPUNAVAIL]";
  auto [fec, addrs] = std::get<0>(fwd);
  if (fec == asio::error::host_not_found_try_again) co_return "[TEMPUNAVAIL]";
  if (fec) co_return "[UNAVAILABLE]";
  for (const auto& a : addrs)
    if (a.endpoint().address() == remote.address()) co_return name;
  co_return "[UNAVAILABLE]";
}

}  // namespace

boost::asio::awaitable<std::string> confirmed_client_name(boost::asio::any_io_executor ex, const ClientIdentity& who) {
  // Per I/O thread, like the session itself: no lock.
  thread_local ClientNameCache cache;
  const std::string& ip = who.info.addr;
  if (auto cached = cache.find(ip, ClientNameCache::Clock::now())) co_return std::move(*cached);
  std::string name = co_await lookup_client_name(ex, who.remote, who.lookup_timeout);
  if (name != "[TEMPUNAVAIL]")  // a failure for now is asked again next time
    cache.put(ip, name, ClientNameCache::Clock::now(), who.name_ttl, who.names_cached);
  co_return name;
}

boost::asio::awaitable<bool> forward_client_identity(Upstream& up, const ClientIdentity& who) {
  const smtp::Capabilities& caps = up.caps();
  if (!caps.xclient) {
    // The MX then sees the relay's address, which it may trust (Postfix mynetworks): say so at
    // warning level once per listener, then at debug level.
    static std::array<std::atomic<bool>, conf::fixed::xclient_warning_listeners> warned{};
    const bool first = who.listener >= warned.size() || !warned[who.listener].exchange(true);
    log(first ? Level::warning : Level::debug, "xclient")
        .kv("sid", who.sid)
        .kv("result", "not_offered")
        .kv("listener", who.listener)
        .kv("upstream", who.upstream);
    co_return true;
  }
  XclientInfo info = who.info;
  const auto& attrs = caps.xclient_attrs;
  if (std::find(attrs.begin(), attrs.end(), "NAME") != attrs.end())
    info.name = co_await confirmed_client_name(co_await boost::asio::this_coro::executor, who);
  const std::string attributes = xclient_attributes(info, attrs);
  if (attributes.empty()) co_return true;
  auto r = co_await up.xclient(attributes, info.helo);
  if (!r) co_return false;
  // Postfix answers 220 (a new greeting), smtp-sink 250: any 2xx took.
  const bool ok = r->code / 100 == 2;
  auto line = log(ok ? Level::info : Level::warning, "xclient");
  line.kv("sid", who.sid).kv("result", ok ? "ok" : "failed").kv("attributes", attributes);
  if (!ok) line.kv("reply", smtp::format_reply(r->code, r->lines).substr(0, conf::fixed::max_logged_reply_chars));
  co_return true;
}

}  // namespace batv::relay
