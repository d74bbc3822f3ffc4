#include "relay/io.hpp"

#include <boost/asio/experimental/awaitable_operators.hpp>

namespace batv::relay {

using namespace asio::experimental::awaitable_operators;
namespace {
constexpr auto as_tuple_awaitable = asio::as_tuple(asio::use_awaitable);

Clock::duration at_least_zero(Clock::duration d) { return d < Clock::duration::zero() ? Clock::duration::zero() : d; }
}  // namespace

// --- The watchdog -----------------------------------------------------------------------------------

struct Stream::Watchdog {
  explicit Watchdog(tcp::socket& s) : timer(s.get_executor()), sock(&s) {}
  asio::steady_timer timer;
  tcp::socket* sock;
  Clock::time_point deadline = Clock::time_point::max();  // of the operation in progress
  Clock::time_point armed_for{};                          // expiry of the pending wait
  std::uint64_t generation = 0;                           // a re-armed wait supersedes the old one
  bool active = false;                                    // an operation is in progress
  bool waiting = false;                                   // a wait is pending
  bool fired = false;                                     // the watchdog cancelled the operation
};

namespace {
// The handler holds a weak_ptr: a Stream destroyed with a wait pending destroys the timer, whose
// cancelled handler then finds nothing to do.
void arm(const std::shared_ptr<Stream::Watchdog>& dog) {
  Stream::Watchdog& w = *dog;
  w.timer.expires_at(w.deadline);  // cancels a pending wait; its handler sees an old generation
  w.armed_for = w.deadline;
  w.waiting = true;
  const std::uint64_t generation = ++w.generation;
  w.timer.async_wait([weak = std::weak_ptr<Stream::Watchdog>(dog), generation](const boost::system::error_code&) {
    const auto d = weak.lock();
    if (!d || d->generation != generation) return;
    d->waiting = false;
    if (!d->active) return;  // armed again by the next operation
    if (Clock::now() >= d->deadline) {
      d->fired = true;
      boost::system::error_code ignored;
      d->sock->cancel(ignored);
    } else {
      arm(d);  // the deadline moved on since this wait was armed
    }
  });
}
}  // namespace

Stream::Stream(tcp::socket s) : sock_(std::move(s)), dog_(std::make_shared<Watchdog>(sock_)) {}
Stream::Stream(asio::any_io_executor ex) : sock_(ex), dog_(std::make_shared<Watchdog>(sock_)) {}
Stream::~Stream() = default;

void Stream::begin_op(Clock::duration limit) {
  Watchdog& d = *dog_;
  const auto now = Clock::now();
  d.active = true;
  d.fired = false;
  limit = at_least_zero(limit);
  d.deadline = limit >= Clock::time_point::max() - now ? Clock::time_point::max() : now + limit;
  if (d.deadline == Clock::time_point::max()) return;
  if (!d.waiting || d.armed_for > d.deadline) arm(dog_);
}

bool Stream::end_op() {
  Watchdog& d = *dog_;
  d.active = false;
  const bool fired = d.fired;
  d.fired = false;
  return fired;
}

namespace {
template <class AsyncStream>
awaitable<IoResult> read_some_on(AsyncStream& s, Stream& st, asio::mutable_buffer buf, Clock::duration limit) {
  st.begin_op(limit);
  std::tuple<boost::system::error_code, std::size_t> r = co_await s.async_read_some(buf, as_tuple_awaitable);
  const bool fired = st.end_op();
  if (std::get<0>(r) && fired) co_return IoResult{asio::error::timed_out, 0, true};
  co_return IoResult{std::get<0>(r), std::get<1>(r), false};
}

// Writes what the kernel takes without blocking; would_block when it took less than all of it
// (n says how much it took).
IoResult write_now(tcp::socket& sock, asio::const_buffer buf) {
  boost::system::error_code ec;
  if (!sock.non_blocking()) {
    sock.non_blocking(true, ec);
    if (ec) return IoResult{asio::error::would_block, 0, false};  // leave it to the async path
  }
  std::size_t n = 0;
  while (n < buf.size()) {
    n += sock.write_some(buf + n, ec);
    if (ec) return IoResult{ec, n, false};
  }
  return IoResult{{}, n, false};
}

template <class AsyncStream>
awaitable<IoResult> write_all_on(AsyncStream& s, Stream& st, asio::const_buffer buf, Clock::duration limit) {
  st.begin_op(limit);
  std::tuple<boost::system::error_code, std::size_t> r = co_await asio::async_write(s, buf, as_tuple_awaitable);
  const bool fired = st.end_op();
  if (std::get<0>(r) && fired) co_return IoResult{asio::error::timed_out, 0, true};
  co_return IoResult{std::get<0>(r), std::get<1>(r), false};
}
}  // namespace

awaitable<IoResult> read_some_for(Stream& s, asio::mutable_buffer buf, Clock::duration limit) {
  if (auto* t = s.tls_stream()) co_return co_await read_some_on(*t, s, buf, limit);
  co_return co_await read_some_on(s.socket(), s, buf, limit);
}

awaitable<IoResult> write_all_for(Stream& s, asio::const_buffer buf, Clock::duration limit) {
  if (auto* t = s.tls_stream()) co_return co_await write_all_on(*t, s, buf, limit);
  // A plain socket is written at once while the kernel takes the data, which it nearly always
  // does for a reply or a command. An asynchronous write that completes at once is posted as a
  // completion, and the extra trip through the scheduler costs an epoll_wait per write
  // (measured: 2 epoll_wait per message exchange without this, 1 with it). What the kernel does not
  // take at once goes through the timed asynchronous path.
  const std::size_t total = buf.size();
  const IoResult first = write_now(s.socket(), buf);
  if (first.ec != asio::error::would_block && first.ec != asio::error::try_again) co_return first;
  IoResult rest = co_await write_all_on(s.socket(), s, buf + first.n, limit);
  rest.n = rest.ec ? first.n + rest.n : total;
  co_return rest;
}

awaitable<IoResult> Stream::handshake(asio::ssl::context& ctx, asio::ssl::stream_base::handshake_type type,
                                      Clock::duration limit, const std::string& name, bool verify) {
  tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(sock_, ctx);
  if (type == asio::ssl::stream_base::client && !name.empty()) {
    // SNI; the name is ours (config), never a peer's.
    SSL_set_tlsext_host_name(tls_->native_handle(), name.c_str());
    if (verify) {
      tls_->set_verify_mode(asio::ssl::verify_peer);
      tls_->set_verify_callback(asio::ssl::host_name_verification(name));
    }
  }
  asio::steady_timer timer(sock_.get_executor());
  timer.expires_after(at_least_zero(limit));
  auto r = co_await (tls_->async_handshake(type, as_tuple_awaitable) || timer.async_wait(as_tuple_awaitable));
  if (r.index() == 0) {
    auto [ec] = std::get<0>(r);
    co_return IoResult{ec, 0, false};
  }
  co_return IoResult{asio::error::timed_out, 0, true};
}

std::string Stream::protocol() const {
  if (!tls_) return "none";
  const char* v = SSL_get_version(tls_->native_handle());
  return v ? v : "unknown";
}

std::string Stream::cipher() const {
  if (!tls_) return "none";
  const char* c = SSL_get_cipher_name(tls_->native_handle());
  return c ? c : "unknown";
}

void Stream::cancel() {
  boost::system::error_code ignored;
  sock_.cancel(ignored);
}

void Stream::close() {
  boost::system::error_code ignored;
  if (sock_.is_open()) {
    sock_.shutdown(tcp::socket::shutdown_both, ignored);
    sock_.close(ignored);
  }
}

void Stream::reset() {
  close();
  tls_.reset();
  sock_ = tcp::socket(sock_.get_executor());
}

awaitable<IoResult> connect_for(tcp::socket& s, const std::string& host, std::uint16_t port,
                                Clock::duration limit) {
  const auto deadline = Clock::now() + limit;
  asio::steady_timer timer(s.get_executor());
  timer.expires_at(deadline);
  boost::system::error_code cec;
  boost::system::error_code literal;
  const auto address = asio::ip::make_address(host, literal);
  if (!literal) {
    // An IP literal: no resolver, whose helper thread costs two context switches per connection.
    const tcp::endpoint ep(address, port);
    auto cr = co_await (s.async_connect(ep, as_tuple_awaitable) || timer.async_wait(as_tuple_awaitable));
    if (cr.index() != 0) co_return IoResult{asio::error::timed_out, 0, true};
    cec = std::get<0>(std::get<0>(cr));
  } else {
    tcp::resolver resolver(s.get_executor());
    auto rr = co_await (resolver.async_resolve(host, std::to_string(port), as_tuple_awaitable) ||
                        timer.async_wait(as_tuple_awaitable));
    if (rr.index() != 0) co_return IoResult{asio::error::timed_out, 0, true};
    auto [rec, endpoints] = std::get<0>(rr);
    if (rec) co_return IoResult{rec, 0, false};
    timer.expires_at(deadline);
    auto cr = co_await (asio::async_connect(s, endpoints, as_tuple_awaitable) ||
                        timer.async_wait(as_tuple_awaitable));
    if (cr.index() != 0) co_return IoResult{asio::error::timed_out, 0, true};
    cec = std::get<0>(std::get<0>(cr));
  }
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
