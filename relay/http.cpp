#include "relay/http.hpp"

#include <algorithm>
#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <ctime>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/spawn.hpp"

namespace batv::relay {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

constexpr std::size_t body_limit = conf::fixed::metrics_body_bytes;
constexpr std::string_view text_plain = "text/plain; charset=utf-8";
constexpr std::string_view prometheus_type = "text/plain; version=0.0.4; charset=utf-8";

auto with_ec(error_code& ec) { return asio::redirect_error(asio::use_awaitable, ec); }

bool is_http_error(const error_code& ec) {
  return ec.category() == http::make_error_code(http::error::bad_target).category();
}

}  // namespace

struct MetricsServer::State {
  State(asio::io_context& ioc, tcp::endpoint ep, std::function<bool()> check, Options o)
      : strand(asio::make_strand(ioc)), acceptor(strand), endpoint(ep), options(o), healthy(std::move(check)) {}

  asio::strand<asio::io_context::executor_type> strand;
  tcp::acceptor acceptor;  // on the strand
  tcp::endpoint endpoint;  // the requested one, then the bound one
  const Options options;

  std::mutex health_mu;
  std::function<bool()> healthy;  // guarded by health_mu
  std::atomic<bool> stopped{false};
  bool started = false;

  // Strand only:
  std::size_t active = 0;
  std::vector<beast::tcp_stream*> connections;

  bool check_health() {
    std::lock_guard lock(health_mu);
    if (stopped.load()) return false;
    if (!healthy) return true;
    try {
      return healthy();
    } catch (...) {
      return false;
    }
  }

  void close_all() {  // strand only
    error_code ec;
    acceptor.close(ec);
    for (beast::tcp_stream* s : connections) s->close();
  }
};

namespace {

using State = MetricsServer::State;

// One connection's bookkeeping, undone on every way out of the connection coroutine.
class Registration {
 public:
  Registration(State& st, beast::tcp_stream* stream) : st_(st), stream_(stream) {
    st_.connections.push_back(stream_);
  }
  ~Registration() {
    std::erase(st_.connections, stream_);
    --st_.active;
  }
  Registration(const Registration&) = delete;
  Registration& operator=(const Registration&) = delete;

 private:
  State& st_;
  beast::tcp_stream* stream_;
};

http::response<http::string_body> simple(http::status status, unsigned version, std::string body,
                                         std::string_view type = text_plain) {
  http::response<http::string_body> res{status, version};
  res.set(http::field::server, "batv-relay");
  res.set(http::field::content_type, type);
  res.set(http::field::cache_control, "no-store");
  res.body() = std::move(body);
  res.prepare_payload();
  return res;
}

http::response<http::string_body> respond(State& st, const http::request<http::string_body>& req) {
  const unsigned version = req.version();
  const bool head = req.method() == http::verb::head;
  if (req.method() != http::verb::get && !head) {
    auto res = simple(http::status::method_not_allowed, version, "method not allowed\n");
    res.set(http::field::allow, "GET, HEAD");
    return res;
  }
  std::string_view target(req.target().data(), req.target().size());
  target = target.substr(0, target.find('?'));
  http::response<http::string_body> res;
  if (target == "/metrics") {
    res = simple(http::status::ok, version,
                 metrics().render_prometheus(st.options.now ? st.options.now()
                                                            : static_cast<std::int64_t>(std::time(nullptr))),
                 prometheus_type);
  } else if (target == "/healthz") {
    const bool ok = st.check_health();
    res = simple(ok ? http::status::ok : http::status::service_unavailable, version, ok ? "ok\n" : "unhealthy\n");
  } else {
    res = simple(http::status::not_found, version, "not found\n");
  }
  if (head) res.body().clear();  // Content-Length stays the one of the GET answer
  return res;
}

asio::awaitable<void> serve(std::shared_ptr<State> st, tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  Registration reg(*st, &stream);
  if (st->stopped.load()) co_return;
  beast::flat_buffer buffer(st->options.header_limit + body_limit + conf::fixed::metrics_buffer_slack_bytes);
  error_code ec;
  for (unsigned n = 0; n < st->options.max_requests; ++n) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(st->options.header_limit, UINT32_MAX)));
    parser.body_limit(body_limit);
    stream.expires_after(st->options.idle_timeout);
    co_await http::async_read(stream, buffer, parser, with_ec(ec));
    if (ec) {
      http::status status;
      if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
        status = http::status::request_header_fields_too_large;
      else if (ec == http::error::body_limit)
        status = http::status::payload_too_large;
      else if (is_http_error(ec) && ec != http::error::end_of_stream && ec != http::error::partial_message)
        status = http::status::bad_request;
      else
        break;  // a clean close, a timeout, a reset, or stop(): nothing to answer
      auto res = simple(status, 11, std::string(http::obsolete_reason(status)) + "\n");
      res.keep_alive(false);
      stream.expires_after(st->options.idle_timeout);
      co_await http::async_write(stream, res, with_ec(ec));
      break;
    }
    const auto& req = parser.get();
    auto res = respond(*st, req);
    res.keep_alive(req.keep_alive() && n + 1 < st->options.max_requests && !st->stopped.load());
    stream.expires_after(st->options.idle_timeout);
    co_await http::async_write(stream, res, with_ec(ec));
    if (ec || !res.keep_alive()) break;
  }
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  stream.close();
}

asio::awaitable<void> accept_loop(std::shared_ptr<State> st) {
  for (;;) {
    error_code ec;
    tcp::socket socket = co_await st->acceptor.async_accept(with_ec(ec));
    if (st->stopped.load() || !st->acceptor.is_open()) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // Out of file descriptors and the like: back off, never spin.
      log(Level::warning, "metrics_accept_error").kv("error", ec.message());
      asio::steady_timer pause(st->strand, conf::fixed::accept_error_pause);
      co_await pause.async_wait(with_ec(ec));
      continue;
    }
    if (st->active >= st->options.max_connections) {
      socket.close(ec);  // over the limit: no queueing, the scraper retries
      continue;
    }
    ++st->active;
    asio::co_spawn(st->strand, serve(st, std::move(socket)), log_exceptions("metrics_connection"));
  }
}

}  // namespace

MetricsServer::MetricsServer(asio::io_context& ioc, const tcp::endpoint& endpoint, std::function<bool()> healthy)
    : MetricsServer(ioc, endpoint, std::move(healthy), Options{}) {}

MetricsServer::MetricsServer(asio::io_context& ioc, const tcp::endpoint& endpoint, std::function<bool()> healthy,
                             Options options)
    : st_(std::make_shared<State>(ioc, endpoint, std::move(healthy), options)) {}

MetricsServer::~MetricsServer() { stop(); }

error_code MetricsServer::start() {
  State& st = *st_;
  if (st.started) return asio::error::already_started;
  if (st.stopped.load()) return asio::error::operation_aborted;
  error_code ec;
  auto fail = [&] {
    error_code ignored;
    st.acceptor.close(ignored);
    return ec;
  };
  st.acceptor.open(st.endpoint.protocol(), ec);
  if (ec) return fail();
  st.acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
  if (ec) return fail();
  st.acceptor.bind(st.endpoint, ec);
  if (ec) return fail();
  st.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return fail();
  st.endpoint = st.acceptor.local_endpoint(ec);
  if (ec) return fail();
  st.started = true;
  asio::co_spawn(st.strand, accept_loop(st_), log_exceptions("metrics_accept_loop"));
  return {};
}

tcp::endpoint MetricsServer::local_endpoint() const { return st_->endpoint; }

void MetricsServer::stop() {
  {
    std::lock_guard lock(st_->health_mu);
    if (st_->stopped.exchange(true)) return;
    st_->healthy = nullptr;
  }
  asio::dispatch(st_->strand, [st = st_] { st->close_all(); });
}

}  // namespace batv::relay
