// io: socket operations with a deadline (Boost 1.81 has no cancel_after): each races the operation
// against a steady_timer with the awaitable || operator; the loser is cancelled. A timed-out read
// leaves the socket usable; a timed-out write or connect leaves it in an unknown state, and the
// callers close it.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <string>

namespace batv::relay {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
template <class T>
using awaitable = asio::awaitable<T>;

struct IoResult {
  boost::system::error_code ec;
  std::size_t n = 0;
  bool timed_out = false;
  explicit operator bool() const { return !ec && !timed_out; }
};

awaitable<IoResult> read_some_for(tcp::socket& s, asio::mutable_buffer buf, Clock::duration limit);
awaitable<IoResult> write_all_for(tcp::socket& s, asio::const_buffer buf, Clock::duration limit);
// Resolves `host` (name or IP literal) and connects to the first endpoint that answers.
awaitable<IoResult> connect_for(tcp::socket& s, const std::string& host, std::uint16_t port,
                                Clock::duration limit);

// "ip:port" or "[v6]:port" of an endpoint, for logs.
std::string to_string(const tcp::endpoint& ep);

}  // namespace batv::relay
