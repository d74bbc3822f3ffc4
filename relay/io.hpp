// io: socket operations with a deadline (Boost 1.81 has no cancel_after).
//
// Reads and writes are timed by one watchdog timer per Stream instead of a timer per operation:
// an operation only stores its deadline, and the watchdog, armed lazily, cancels the socket when
// the deadline of the operation in progress has passed (when it fires early because the deadline
// moved on, it re-arms). A busy connection therefore costs no timer work, allocation or extra
// handler per read or write (measured: the per-operation `timer || op` race cost about a third of
// the relay's user CPU and four epoll_wait calls per read). Connect, resolve and TLS handshakes,
// once per connection, still race a timer with the awaitable || operator.
// A timed-out read leaves the socket usable; a timed-out write or connect leaves it in an unknown
// state, and the callers close it.
#pragma once

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
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

// A TCP connection that may be upgraded to TLS in place (STARTTLS, RFC 3207) or start with it
// (implicit TLS). Not movable: the TLS layer refers to the socket member.
class Stream {
 public:
  explicit Stream(tcp::socket s);
  explicit Stream(asio::any_io_executor ex);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  tcp::socket& socket() { return sock_; }
  const tcp::socket& socket() const { return sock_; }
  asio::any_io_executor get_executor() { return sock_.get_executor(); }
  [[nodiscard]] bool tls() const { return tls_ != nullptr; }
  [[nodiscard]] bool is_open() const { return sock_.is_open(); }

  // Starts TLS on the connection. As a client, `name` is sent as SNI and, when `verify` is set,
  // checked against the certificate (RFC 6125 host name rules, OpenSSL's matcher).
  awaitable<IoResult> handshake(asio::ssl::context& ctx, asio::ssl::stream_base::handshake_type type,
                                Clock::duration limit, const std::string& name = {}, bool verify = false);
  // "TLSv1.3" and the cipher name, or "none".
  [[nodiscard]] std::string protocol() const;
  [[nodiscard]] std::string cipher() const;

  void cancel();
  void close();   // drops TLS state and closes the socket (no TLS close_notify: SMTP ends at QUIT)
  void reset();   // close, then a fresh socket on the same executor

  asio::ssl::stream<tcp::socket&>* tls_stream() { return tls_.get(); }

  // The watchdog: begin_op() before an operation (limit from now), end_op() after it; end_op()
  // says whether the watchdog cancelled it. One operation at a time per Stream.
  void begin_op(Clock::duration limit);
  bool end_op();

  struct Watchdog;

 private:
  tcp::socket sock_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  std::shared_ptr<Watchdog> dog_;  // shared with the pending timer handler, which may outlive us
};

awaitable<IoResult> read_some_for(Stream& s, asio::mutable_buffer buf, Clock::duration limit);
awaitable<IoResult> write_all_for(Stream& s, asio::const_buffer buf, Clock::duration limit);
// Resolves `host` (name or IP literal) and connects to the first endpoint that answers.
// An IP literal is used as is; a name goes through the resolver (a helper thread in Asio).
awaitable<IoResult> connect_for(tcp::socket& s, const std::string& host, std::uint16_t port,
                                Clock::duration limit);

// "ip:port" or "[v6]:port" of an endpoint, for logs.
std::string to_string(const tcp::endpoint& ep);

}  // namespace batv::relay
