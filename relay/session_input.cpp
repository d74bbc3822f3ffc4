// Session, the client side of the wire: command lines framed by smtp::LineReader (bounded;
// overlong ones skipped to their LF), reads under the idle and command deadlines, writes under
// the idle timeout, and the input buffer that grows for a message body only.
#include "relay/session.hpp"

#include <algorithm>
#include <cstring>

#include "relay/smtp/line_reader.hpp"

namespace batv::relay {

std::string_view Session::unread_input() const { return {in_.data() + in_begin_, in_end_ - in_begin_}; }

bool Session::has_complete_line() const { return smtp::LineReader::has_line(unread_input()); }

awaitable<bool> Session::fill(Clock::time_point deadline) {
  if (stop_requested_) {
    read_failure_ = ReadFailure::stopped;
    co_return false;
  }
  if (in_begin_ == in_end_) in_begin_ = in_end_ = 0;
  if (in_end_ == in_.size() && in_begin_ > 0) {
    std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
  }
  const auto idle_deadline = Clock::now() + cfg_.timeouts.idle;
  const IoResult r = co_await read_some_for(client_, asio::buffer(in_.data() + in_end_, in_.size() - in_end_),
                                            std::min(deadline, idle_deadline) - Clock::now());
  if (!r) {
    if (stop_requested_) read_failure_ = ReadFailure::stopped;
    else if (r.timed_out) read_failure_ = ReadFailure::timeout;
    else read_failure_ = ReadFailure::closed;
    co_return false;
  }
  in_end_ += r.n;
  co_return true;
}

// Framing (LF, the CR before it, overlong lines skipped to their LF) is smtp::LineReader's; this
// only reads more when it needs more. An overlong line is answered once, after its LF.
awaitable<Session::LineStatus> Session::read_line(std::string& line) {
  smtp::LineReader reader(static_cast<std::size_t>(cfg_.limits.line_length));
  for (;;) {
    const smtp::LineRead r = reader.next(unread_input());
    in_begin_ += r.consumed;
    switch (r.status) {
      case smtp::LineRead::Status::line:
        line.assign(r.line);
        co_return LineStatus::ok;
      case smtp::LineRead::Status::too_long: co_return LineStatus::too_long;
      case smtp::LineRead::Status::need_more: break;
    }
    if (!co_await fill(command_deadline_)) {
      switch (read_failure_) {
        case ReadFailure::stopped: co_return LineStatus::stopped;
        case ReadFailure::timeout: co_return LineStatus::timeout;
        case ReadFailure::closed: co_return LineStatus::closed;
      }
    }
  }
}

awaitable<bool> Session::write_client(std::string_view text) {
  if (text.empty()) co_return true;
  const IoResult r = co_await write_all_for(client_, asio::buffer(text.data(), text.size()), cfg_.timeouts.idle);
  if (!r) {
    // A client that stops reading (its window stays shut for timeouts.idle) is not one that left.
    if (end_ == End::none) end_ = r.timed_out ? End::idle_timeout : End::client_closed;
    co_return false;
  }
  co_return true;
}

void Session::resize_input(std::size_t n) {
  if (in_begin_ > 0) {
    std::memmove(in_.data(), in_.data() + in_begin_, in_end_ - in_begin_);
    in_end_ -= in_begin_;
    in_begin_ = 0;
  }
  n = std::max({n, in_end_, static_cast<std::size_t>(cfg_.limits.line_length) + 2});
  if (n == in_.size()) return;
  in_.reallocate(n, in_end_);
}

}  // namespace batv::relay
