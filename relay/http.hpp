// http: the metrics listener, a small HTTP/1.1 server built on Boost.Beast.
//
//   GET /metrics  200 text/plain; version=0.0.4; charset=utf-8   metrics().render_prometheus(now),
//                 now from Options::now
//   GET /healthz  200 "ok\n", or 503 "unhealthy\n" when the health check says false (or throws)
//   other paths   404;  methods other than GET and HEAD: 405 (with Allow: GET, HEAD)
//   a request header over Options::header_limit: 431, then close; a malformed request: 400, close
//
// Bounded: every read and write has a deadline (Options::idle_timeout, beast::tcp_stream
// expires_after), so an idle keep-alive connection or a slow client is closed; at most
// Options::max_connections connections at once (one more is accepted and closed at once); at most
// Options::max_requests requests per connection; request bodies up to 4 KiB (413 beyond,
// conf::fixed::metrics_body_bytes). Nothing
// blocks the io_context: everything runs as coroutines on one strand of it. The health check runs
// on that strand too, so it must be cheap and must not block.
//
// Lifetime: stop() (also run by the destructor) closes the listener and every connection; after
// it returns the health check is never called again. The io_context must outlive the server
// object (declare the server after the io_context, or destroy it first).
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "conf/limits.hpp"

namespace batv::relay {

class MetricsServer {
 public:
  // Defaults: conf::fixed (metrics_*); tests set smaller ones.
  struct Options {
    std::chrono::steady_clock::duration idle_timeout = conf::fixed::metrics_idle_timeout;
    std::size_t max_connections = conf::fixed::metrics_max_connections;
    std::size_t header_limit = conf::fixed::metrics_header_bytes;
    unsigned max_requests = conf::fixed::metrics_max_requests;  // per connection, then Connection: close
    // The wall clock (unix seconds) /metrics is rendered at (the key ages); empty: std::time. The
    // server passes its Runtime's clock.
    std::function<std::int64_t()> now;
  };

  // `healthy` may be empty: always healthy.
  MetricsServer(boost::asio::io_context& ioc, const boost::asio::ip::tcp::endpoint& endpoint,
                std::function<bool()> healthy);
  MetricsServer(boost::asio::io_context& ioc, const boost::asio::ip::tcp::endpoint& endpoint,
                std::function<bool()> healthy, Options options);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Opens, binds (SO_REUSEADDR) and listens, then starts the accept coroutine on the io_context.
  // Call once, before or while the io_context runs. On error nothing is left open.
  boost::system::error_code start();

  // The bound address (port 0 resolved), valid after a successful start().
  boost::asio::ip::tcp::endpoint local_endpoint() const;

  // Stops accepting and closes every open connection. Thread-safe, idempotent.
  void stop();

  struct State;  // implementation detail (relay/http.cpp)

 private:
  std::shared_ptr<State> st_;
};

}  // namespace batv::relay
