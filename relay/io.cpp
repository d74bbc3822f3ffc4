#include "relay/io.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

namespace batv::relay {

using namespace asio::experimental::awaitable_operators;
namespace {
constexpr auto as_tuple_awaitable = asio::as_tuple(asio::use_awaitable);

Clock::duration at_least_zero(Clock::duration d) { return d < Clock::duration::zero() ? Clock::duration::zero() : d; }
}  // namespace

awaitable<IoResult> read_some_for(tcp::socket& s, asio::mutable_buffer buf, Clock::duration limit) {
  asio::steady_timer timer(s.get_executor());
  timer.expires_after(at_least_zero(limit));
  auto r = co_await (s.async_read_some(buf, as_tuple_awaitable) || timer.async_wait(as_tuple_awaitable));
  if (r.index() == 0) {
    auto [ec, n] = std::get<0>(r);
    co_return IoResult{ec, n, false};
  }
  co_return IoResult{asio::error::timed_out, 0, true};
}

awaitable<IoResult> write_all_for(tcp::socket& s, asio::const_buffer buf, Clock::duration limit) {
  asio::steady_timer timer(s.get_executor());
  timer.expires_after(at_least_zero(limit));
  auto r = co_await (asio::async_write(s, buf, as_tuple_awaitable) || timer.async_wait(as_tuple_awaitable));
  if (r.index() == 0) {
    auto [ec, n] = std::get<0>(r);
    co_return IoResult{ec, n, false};
  }
  co_return IoResult{asio::error::timed_out, 0, true};
}

awaitable<IoResult> connect_for(tcp::socket& s, const std::string& host, std::uint16_t port,
                                Clock::duration limit) {
  const auto deadline = Clock::now() + limit;
  tcp::resolver resolver(s.get_executor());
  asio::steady_timer timer(s.get_executor());
  timer.expires_at(deadline);
  auto rr = co_await (resolver.async_resolve(host, std::to_string(port), as_tuple_awaitable) ||
                      timer.async_wait(as_tuple_awaitable));
  if (rr.index() != 0) co_return IoResult{asio::error::timed_out, 0, true};
  auto [rec, endpoints] = std::get<0>(rr);
  if (rec) co_return IoResult{rec, 0, false};
  timer.expires_at(deadline);
  auto cr = co_await (asio::async_connect(s, endpoints, as_tuple_awaitable) ||
                      timer.async_wait(as_tuple_awaitable));
  if (cr.index() != 0) co_return IoResult{asio::error::timed_out, 0, true};
  auto [cec, ep] = std::get<0>(cr);
  (void)ep;
  if (!cec) {
    boost::system::error_code ignored;
    s.set_option(tcp::no_delay(true), ignored);
  }
  co_return IoResult{cec, 0, false};
}

std::string to_string(const tcp::endpoint& ep) {
  const auto a = ep.address();
  if (a.is_v6()) return "[" + a.to_string() + "]:" + std::to_string(ep.port());
  return a.to_string() + ":" + std::to_string(ep.port());
}

}  // namespace batv::relay
