#include "relay/task_group.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace batv::relay {

namespace asio = boost::asio;

TaskGroup::TaskGroup() : st_(std::make_shared<State>()) {}

TaskGroup::Member TaskGroup::join() {
  std::lock_guard lock(st_->mu);
  ++st_->size;
  return Member(st_);
}

std::size_t TaskGroup::size() const {
  std::lock_guard lock(st_->mu);
  return st_->size;
}

void TaskGroup::Member::reset() noexcept {
  if (!st_) return;
  std::shared_ptr<asio::steady_timer> wake;
  {
    std::lock_guard lock(st_->mu);
    if (--st_->size == 0) wake = st_->waiter.lock();
  }
  st_.reset();
  if (!wake) return;
  // Cancelled on the waiter's executor, never from this thread. A wake-up that cannot be queued
  // (out of memory) leaves the waiter to its deadline.
  try {
    auto ex = wake->get_executor();
    asio::post(ex, [wake = std::move(wake)] { wake->cancel(); });
  } catch (...) {
  }
}

asio::awaitable<bool> TaskGroup::wait_empty(Clock::time_point deadline) {
  auto timer = std::make_shared<asio::steady_timer>(co_await asio::this_coro::executor, deadline);
  bool empty = false;
  for (;;) {
    bool sleep = false;
    {
      std::lock_guard lock(st_->mu);
      empty = st_->size == 0;
      sleep = !empty && Clock::now() < deadline;
      if (sleep) st_->waiter = timer;
      else st_->waiter.reset();
    }
    if (!sleep) break;
    // A member that leaves between the unlock and this wait posts its cancel behind this handler,
    // so it still finds the wait armed; a wake-up for nothing only makes the loop look again.
    co_await timer->async_wait(asio::as_tuple(asio::use_awaitable));
  }
  co_return empty;
}

}  // namespace batv::relay
