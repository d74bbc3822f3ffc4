// milter connection: reads packets with the idle timeout between commands and the command
// timeout for the rest of a packet, feeds the handler, writes its replies.
#include "relay/milter/connection.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>

#include "conf/limits.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/milter/handler.hpp"
#include "relay/session_end.hpp"

namespace batv::relay {
namespace {

class MilterConnection final : public Connection, public std::enable_shared_from_this<MilterConnection> {
 public:
  MilterConnection(LocalSocket s, ConnContext ctx)
      : sock_(std::move(s)), ctx_(std::move(ctx)), timer_(sock_.get_executor()),
        handler_(ctx_.runtime, ctx_.listener, ctx_.id, [rt = ctx_.runtime] { return rt->clock.now(); }) {}

  asio::any_io_executor executor() override { return sock_.get_executor(); }

  void stop() override {
    auto self = shared_from_this();
    asio::post(sock_.get_executor(), [self] {
      self->stop_requested_ = true;
      if (!self->handler_.in_request() && !self->busy_) {
        boost::system::error_code ec;
        self->sock_.cancel(ec);
      }
    });
  }

  awaitable<void> run() override {
    metrics().session_started(conf::Role::milter);
    log(Level::info, "session_start").kv("sid", ctx_.id).kv("peer", ctx_.peer).kv("role", "milter");
    try {
      co_await serve();
    } catch (const std::exception& e) {
      if (reason_ == SessionEnd::quit) reason_ = SessionEnd::io_error;
      log(Level::error, "session_error").kv("sid", ctx_.id).kv("error", e.what());
    }
    boost::system::error_code ec;
    timer_.cancel();
    sock_.close(ec);
    metrics().session_ended(conf::Role::milter, reason_);
    log(Level::info, "session_end").kv("sid", ctx_.id).kv("peer", ctx_.peer).kv("role", "milter")
        .kv("reason", to_string(reason_)).kv("messages", handler_.messages()).kv("signed", handler_.signed_count())
        .kv("refused", handler_.refused());
  }

 private:
  // Reads at least one more byte, within `deadline`; false on timeout, EOF or error.
  awaitable<bool> read_more(std::chrono::seconds deadline, bool idle) {
    if (buf_.size() >= max_) co_return false;
    std::size_t old = buf_.size();
    buf_.resize(std::min(max_, old + conf::fixed::milter_read_bytes));
    timed_out_ = false;
    timer_.expires_after(deadline);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) {
        self->timed_out_ = true;
        boost::system::error_code e2;
        self->sock_.cancel(e2);
      }
    });
    boost::system::error_code ec;
    std::size_t n = co_await sock_.async_read_some(asio::buffer(buf_.data() + old, buf_.size() - old),
                                                   asio::redirect_error(asio::use_awaitable, ec));
    timer_.cancel();
    buf_.resize(old + n);
    if (timed_out_) reason_ = idle ? SessionEnd::idle_timeout : SessionEnd::data_timeout;
    else if (ec == asio::error::eof) reason_ = SessionEnd::client_closed;
    else if (ec == asio::error::operation_aborted && stop_requested_) reason_ = SessionEnd::shutdown;
    else if (ec) reason_ = SessionEnd::io_error;
    co_return !ec && n > 0;
  }

  awaitable<void> serve() {
    const auto& cfg = ctx_.runtime->config;
    max_ = static_cast<std::size_t>(cfg.limits.milter_packet) + 4;
    for (;;) {
      if (stop_requested_ && !handler_.in_request()) { reason_ = SessionEnd::shutdown; co_return; }
      auto fr = milter::parse_packet(std::string_view(buf_.data(), buf_.size()), max_ - 4);
      if (!fr.ok && fr.error == milter::Error::incomplete) {
        if (!co_await read_more(buf_.empty() ? cfg.timeouts.milter_idle : cfg.timeouts.milter_command, buf_.empty()))
          co_return;
        continue;
      }
      std::string out;
      if (!fr.ok) {
        handler_.on_frame_error(fr.error, out);
        reason_ = fr.error == milter::Error::too_large ? SessionEnd::request_too_large : SessionEnd::protocol_error;
      } else {
        handler_.on_packet(fr.packet, out);
        buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(fr.packet.consumed));
        if (handler_.state() == milter::Handler::State::closed)
          reason_ = handler_.error().empty() ? SessionEnd::quit : SessionEnd::protocol_error;
      }
      if (!out.empty()) {
        busy_ = true;
        timer_.expires_after(cfg.timeouts.milter_command);
        timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
          if (!ec) { boost::system::error_code e2; self->sock_.cancel(e2); }
        });
        boost::system::error_code ec;
        co_await asio::async_write(sock_, asio::buffer(out), asio::redirect_error(asio::use_awaitable, ec));
        timer_.cancel();
        busy_ = false;
        if (ec) { reason_ = SessionEnd::io_error; co_return; }
      }
      if (handler_.state() == milter::Handler::State::closed) co_return;
    }
  }

  LocalSocket sock_;
  ConnContext ctx_;
  asio::steady_timer timer_;
  milter::Handler handler_;
  std::vector<char> buf_;
  std::size_t max_ = 0;
  bool stop_requested_ = false;
  bool busy_ = false;
  bool timed_out_ = false;
  SessionEnd reason_ = SessionEnd::quit;
};

}  // namespace

std::shared_ptr<Connection> make_milter_connection(LocalSocket socket, ConnContext ctx) {
  return std::make_shared<MilterConnection>(std::move(socket), std::move(ctx));
}

}  // namespace batv::relay
