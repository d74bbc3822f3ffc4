// task_group: the tasks the server spawned (its admitted connections' coroutines) as a group that
// one waiter can await to become empty, with a deadline, without polling.
//
//   TaskGroup group;
//   TaskGroup::Member m = group.join();   // any thread; the task keeps m until it ends
//   ...                                  // destroying m (or m.reset()) leaves the group
//   bool empty = co_await group.wait_empty(deadline);  // true: empty; false: the deadline came
//
// join() and leaving are thread-safe: one mutex, held for a count change. wait_empty() sleeps on a
// steady_timer of its own executor until the deadline; the member that leaves last while it waits
// posts one wake-up (a cancel of that timer) to that executor, so the timer is only ever touched
// there. Nothing is posted while nobody waits. One waiter at a time, on an executor that runs its
// handlers one at a time (an io_context run by one thread, or a strand). A member may join after a
// wake-up (a connection whose PROXY header was still being read): the waiter then waits again, to
// the same deadline.
//
// Lifetime: members share the count with the group (a member may outlive the TaskGroup object, as
// a coroutine frame destroyed with its io_context does); the waiter's timer lives in its own
// coroutine and in the one wake-up queued for it.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <utility>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

namespace batv::relay {

class TaskGroup {
  struct State;

 public:
  using Clock = std::chrono::steady_clock;

  // A place in the group: move-only; leaves when destroyed or reset.
  class Member {
   public:
    Member() = default;
    Member(Member&&) noexcept = default;
    Member& operator=(Member&& o) noexcept {
      if (this != &o) {
        reset();
        st_ = std::move(o.st_);
      }
      return *this;
    }
    ~Member() { reset(); }
    void reset() noexcept;
    [[nodiscard]] bool joined() const { return st_ != nullptr; }

   private:
    friend class TaskGroup;
    explicit Member(std::shared_ptr<State> st) : st_(std::move(st)) {}
    std::shared_ptr<State> st_;
  };

  TaskGroup();
  TaskGroup(const TaskGroup&) = delete;
  TaskGroup& operator=(const TaskGroup&) = delete;

  [[nodiscard]] Member join();
  [[nodiscard]] std::size_t size() const;

  // Until the group is empty or `deadline` has passed, whichever comes first; true when empty.
  // Returns at once when the group is empty already (or the deadline has passed).
  boost::asio::awaitable<bool> wait_empty(Clock::time_point deadline);

 private:
  struct State {
    std::mutex mu;
    std::size_t size = 0;                          // guarded by mu
    std::weak_ptr<boost::asio::steady_timer> waiter;  // guarded by mu: set while wait_empty() sleeps
  };
  std::shared_ptr<State> st_;
};

}  // namespace batv::relay
