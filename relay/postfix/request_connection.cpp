#include "relay/postfix/request_connection.hpp"

#include <algorithm>
#include <cstring>

#include "conf/limits.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/spawn.hpp"

namespace batv::relay::postfix {

namespace {
// Reads go into at least conf::fixed::request_read_bytes of free space; the buffer starts at
// twice that and grows (up to max_request + read_room) only for a request that does not fit.
constexpr std::size_t read_room = conf::fixed::request_read_bytes;
constexpr std::size_t initial_buffer = 2 * read_room;
}  // namespace

RequestConnection::RequestConnection(LocalSocket sock, ConnContext ctx, Options opt)
    : sock_(std::move(sock)), ctx_(std::move(ctx)), rt_(ctx_.runtime), opt_(opt), timer_(sock_.get_executor()) {}

RequestConnection::~RequestConnection() = default;

void RequestConnection::stop() {
  auto self = shared_from_this();
  asio::post(sock_.get_executor(), [self] {
    self->stop_requested_ = true;
    // A write in progress finishes (its answers are owed); anything else ends now.
    if (!self->writing_) {
      boost::system::error_code ignored;
      self->sock_.cancel(ignored);
    }
  });
}

awaitable<void> RequestConnection::run() {
  auto self = shared_from_this();
  const std::string_view role = conf::to_string(opt_.role);
  metrics().session_started(opt_.role);
  log(Level::info, "session_start").kv("sid", ctx_.id).kv("role", role).kv("peer", ctx_.peer);
  deadline_ = Clock::now() + opt_.idle;
  asio::co_spawn(sock_.get_executor(), [self]() { return self->watchdog(); }, log_exceptions("request_watchdog"));
  try {
    co_await serve();
  } catch (const std::exception& e) {
    end_ = SessionEnd::io_error;
    detail_ = e.what();
  }
  done_ = true;
  timer_.cancel();
  boost::system::error_code ignored;
  sock_.shutdown(asio::socket_base::shutdown_both, ignored);
  sock_.close(ignored);
  metrics().session_ended(opt_.role, end_);
  const bool failed = end_ == SessionEnd::protocol_error || end_ == SessionEnd::request_too_large ||
                      end_ == SessionEnd::io_error;
  auto line = log(failed ? Level::warning : Level::info, "session_end");
  line.kv("sid", ctx_.id).kv("role", role).kv("peer", ctx_.peer).kv("reason", to_string(end_)).kv("requests", requests_);
  if (!detail_.empty()) line.kv("error", detail_);
}

// Deadlines only ever move later (a new request starts after the timer was armed, and one
// request's deadline is fixed at its first byte), so the timer, armed for at most min(idle,
// request) ahead, never fires after a deadline that was set while it slept.
awaitable<void> RequestConnection::watchdog() {
  auto self = shared_from_this();
  const Clock::duration step = std::min(opt_.idle, opt_.request);
  while (!done_) {
    const auto now = Clock::now();
    if (now >= deadline_) {
      timed_out_ = true;
      boost::system::error_code ignored;
      sock_.cancel(ignored);
      co_return;
    }
    timer_.expires_at(std::min(deadline_, now + step));
    auto [ec] = co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;  // cancelled: the connection is over
  }
}

awaitable<void> RequestConnection::serve() {
  buf_.resize(initial_buffer);
  const std::size_t cap = opt_.max_request + read_room;
  Clock::time_point request_start{};
  auto deadline = [&](bool pending) {
    const auto now = Clock::now();
    return pending ? std::min(now + opt_.idle, request_start + opt_.request) : now + opt_.idle;
  };
  for (;;) {
    if (stop_requested_) {
      end_ = SessionEnd::shutdown;
      co_return;
    }
    const bool pending = tail_ > head_;
    if (buf_.size() - tail_ < read_room) {
      if (head_ > 0) {
        std::memmove(buf_.data(), buf_.data() + head_, tail_ - head_);
        tail_ -= head_;
        head_ = 0;
      }
      if (buf_.size() - tail_ < read_room && buf_.size() < cap)
        buf_.resize(std::min(cap, std::max(buf_.size() * 2, tail_ + read_room)));
      if (buf_.size() == tail_) {  // cannot happen: process() refuses what does not fit; be safe
        end_ = SessionEnd::request_too_large;
        co_return;
      }
    }
    deadline_ = deadline(pending);
    auto [ec, n] = co_await sock_.async_read_some(asio::buffer(buf_.data() + tail_, buf_.size() - tail_),
                                                  asio::as_tuple(asio::use_awaitable));
    if (ec) {
      if (timed_out_) end_ = SessionEnd::idle_timeout;
      else if (stop_requested_) end_ = SessionEnd::shutdown;
      else if (ec == asio::error::eof || ec == asio::error::connection_reset) end_ = SessionEnd::client_closed;
      else {
        end_ = SessionEnd::io_error;
        detail_ = ec.message();
      }
      co_return;
    }
    if (!pending) request_start = Clock::now();
    tail_ += n;
    if (ctx_.current)
      if (auto now = ctx_.current(); now && now != rt_) rt_ = std::move(now);
    Step st = process(std::string_view(buf_.data() + head_, tail_ - head_), out_);
    head_ += st.consumed;
    if (head_ == tail_) head_ = tail_ = 0;
    else if (st.consumed > 0) request_start = Clock::now();  // the rest is the next request's start
    if (!out_.empty()) {
      writing_ = true;
      deadline_ = deadline(true);
      auto [wec, wn] = co_await asio::async_write(sock_, asio::buffer(out_), asio::as_tuple(asio::use_awaitable));
      writing_ = false;
      out_.clear();
      if (wec) {
        if (timed_out_) end_ = SessionEnd::idle_timeout;
        else if (wec == asio::error::broken_pipe || wec == asio::error::connection_reset) end_ = SessionEnd::client_closed;
        else {
          end_ = SessionEnd::io_error;
          detail_ = wec.message();
        }
        co_return;
      }
    }
    if (st.close) {
      end_ = st.reason;
      detail_ = std::move(st.detail);
      co_return;
    }
  }
}

}  // namespace batv::relay::postfix
