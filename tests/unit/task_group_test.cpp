// relay/task_group.hpp: the group the server's shutdown awaits. A waiter returns as soon as the
// last member leaves (from any thread), not at its deadline; at its deadline when members stay;
// at once when the group is empty. Members that leave from other threads are the server's
// connections ending on their own io_contexts.
#include <doctest/doctest.h>

#include <atomic>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <exception>
#include <optional>
#include <thread>
#include <vector>

#include "relay/task_group.hpp"

namespace asio = boost::asio;
using batv::relay::TaskGroup;
using namespace std::chrono_literals;

namespace {

struct Waited {
  std::optional<bool> empty;
  std::chrono::steady_clock::duration took{};
};

// Runs group.wait_empty(now + limit) on an io_context of its own on this thread.
Waited wait(TaskGroup& group, std::chrono::steady_clock::duration limit) {
  asio::io_context io;
  Waited w;
  const auto t0 = std::chrono::steady_clock::now();
  asio::co_spawn(io, group.wait_empty(t0 + limit), [&](std::exception_ptr e, bool empty) {
    REQUIRE_FALSE(e);
    w.empty = empty;
  });
  io.run();
  w.took = std::chrono::steady_clock::now() - t0;
  return w;
}

}  // namespace

TEST_CASE("task group: an empty group is waited for at once") {
  TaskGroup group;
  CHECK(group.size() == 0);
  const Waited w = wait(group, 60s);
  REQUIRE(w.empty.has_value());
  CHECK(*w.empty);
  CHECK(w.took < 5s);
}

TEST_CASE("task group: members that stay keep the waiter until its deadline") {
  TaskGroup group;
  TaskGroup::Member a = group.join();
  CHECK(group.size() == 1);
  const Waited w = wait(group, 100ms);
  REQUIRE(w.empty.has_value());
  CHECK_FALSE(*w.empty);
  CHECK(w.took >= 100ms);
  CHECK(group.size() == 1);
  a.reset();
  CHECK(group.size() == 0);
  CHECK(*wait(group, 0s).empty);
}

TEST_CASE("task group: the last member to leave, on another thread, wakes the waiter long before its deadline") {
  TaskGroup group;
  std::vector<TaskGroup::Member> members;
  for (int i = 0; i < 8; ++i) members.push_back(group.join());
  CHECK(group.size() == 8);
  std::atomic<int> left{0};
  std::vector<std::thread> threads;
  for (auto& m : members)
    threads.emplace_back([&left, &m, delay = 10ms * (threads.size() + 1)] {
      std::this_thread::sleep_for(delay);
      ++left;  // before the leave: a waiter that saw the group empty saw this too
      m.reset();
    });
  const Waited w = wait(group, 60s);
  for (auto& t : threads) t.join();
  REQUIRE(w.empty.has_value());
  CHECK(*w.empty);
  CHECK(left.load() == 8);  // not woken before the last one left
  CHECK(w.took < 30s);      // woken, not timed out
  CHECK(group.size() == 0);
}

TEST_CASE("task group: a member that joins while the waiter waits is waited for too") {
  TaskGroup group;
  TaskGroup::Member first = group.join();
  std::atomic<bool> second_left{false};
  std::thread t([&] {
    TaskGroup::Member second = group.join();  // a connection admitted during the shutdown
    std::this_thread::sleep_for(20ms);
    first.reset();
    std::this_thread::sleep_for(100ms);
    second_left = true;
    second.reset();
  });
  const Waited w = wait(group, 60s);
  t.join();
  REQUIRE(w.empty.has_value());
  CHECK(*w.empty);
  CHECK(second_left.load());
  CHECK(w.took < 30s);
}

TEST_CASE("task group: members move, leave once, and may outlive the group") {
  std::optional<TaskGroup> group(std::in_place);
  TaskGroup::Member a = group->join();
  TaskGroup::Member b = std::move(a);
  CHECK_FALSE(a.joined());
  CHECK(b.joined());
  CHECK(group->size() == 1);
  a.reset();  // a moved-from member is no member: nothing leaves
  CHECK(group->size() == 1);
  TaskGroup::Member c = group->join();
  c = std::move(b);  // c's own place is given up, b's taken over
  CHECK(group->size() == 1);
  group.reset();  // a coroutine frame destroyed after the server: its member still leaves safely
  c.reset();
  CHECK_FALSE(c.joined());
}
