// relay/spawn.hpp: an exception that escapes a coroutine spawned with log_exceptions(NAME) is
// logged as event=internal_error with the coroutine's name and what(), where asio::detached would
// drop it; a coroutine that returns logs nothing. The log goes to fd 2 (relay/log.cpp): the test
// points fd 2 at a temporary file for the duration and reads it back.
#include <doctest/doctest.h>

#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "relay/spawn.hpp"

namespace asio = boost::asio;
using batv::relay::log_exceptions;

namespace {

// Everything written to fd 2 while `body` runs.
template <class F>
std::string stderr_of(F body) {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  std::fflush(stderr);
  const int saved = ::dup(2);
  REQUIRE(saved >= 0);
  REQUIRE(::dup2(::fileno(f), 2) >= 0);
  body();
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  std::string out;
  std::rewind(f);
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  std::fclose(f);
  return out;
}

asio::awaitable<void> fails_after_a_suspension() {
  // Suspended once, so the exception leaves from inside the io_context's run(), as a real
  // coroutine's would (an accept that fails, a session's bookkeeping).
  co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
  throw std::runtime_error("registry out of step");
}

asio::awaitable<void> throws_a_non_exception() {
  co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
  throw 42;
}

asio::awaitable<void> finishes(bool& done) {
  co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
  done = true;
}

}  // namespace

TEST_CASE("log_exceptions: an escaping exception is logged with the coroutine's name and what()") {
  const std::string err = stderr_of([] {
    asio::io_context io;
    asio::co_spawn(io, fails_after_a_suspension(), log_exceptions("accept_loop"));
    io.run();  // returns: the exception does not leave run()
  });
  CHECK(err.find("level=error event=internal_error coroutine=accept_loop error=\"registry out of step\"") !=
        std::string::npos);
}

TEST_CASE("log_exceptions: an exception that is no std::exception is logged too") {
  const std::string err = stderr_of([] {
    asio::io_context io;
    asio::co_spawn(io, throws_a_non_exception(), log_exceptions("signal_loop"));
    io.run();
  });
  CHECK(err.find("event=internal_error coroutine=signal_loop error=\"unknown exception\"") != std::string::npos);
}

TEST_CASE("log_exceptions: a coroutine that returns logs nothing") {
  bool done = false;
  const std::string err = stderr_of([&] {
    asio::io_context io;
    asio::co_spawn(io, finishes(done), log_exceptions("watch_key_file"));
    io.run();
  });
  CHECK(done);
  CHECK(err.find("internal_error") == std::string::npos);
}
