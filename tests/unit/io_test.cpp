// relay/io: timed reads and writes on a Stream.
//
// The socket tests run a real loopback TCP pair on one io_context in the test thread; every
// operation has a deadline, so a hang fails the test instead of blocking it.
#include <doctest/doctest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "relay/io.hpp"

using namespace batv::relay;
using namespace std::chrono_literals;

namespace {

struct Pair {
  asio::io_context io{1};
  std::unique_ptr<Stream> a, b;
  Pair() {
    tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    tcp::socket client(io);
    client.connect(acc.local_endpoint());
    tcp::socket server = acc.accept();
    a = std::make_unique<Stream>(std::move(client));
    b = std::make_unique<Stream>(std::move(server));
  }
};

std::string pattern(std::size_t n) {
  std::string s(n, '\0');
  std::uint32_t x = 12345;
  for (char& c : s) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 24);
  }
  return s;
}

}  // namespace

TEST_CASE("write_all_for: a write the kernel cannot take at once finishes on the async path, bytes intact") {
  Pair p;
  const std::string data = pattern(16 * 1024 * 1024);  // far beyond loopback socket buffers
  IoResult wrote;
  std::string got;
  bool reader_done = false;
  asio::co_spawn(p.io, [&]() -> awaitable<void> {
    wrote = co_await write_all_for(*p.a, asio::buffer(data), 10s);
    p.a->close();
  }, asio::detached);
  asio::co_spawn(p.io, [&]() -> awaitable<void> {
    std::vector<char> buf(64 * 1024);
    for (int i = 0; i < 100000; ++i) {
      const IoResult r = co_await read_some_for(*p.b, asio::buffer(buf), 10s);
      if (!r) break;
      got.append(buf.data(), r.n);
    }
    reader_done = true;
  }, asio::detached);
  p.io.run_for(30s);
  CHECK(reader_done);
  CHECK(wrote.ec.message() == boost::system::error_code{}.message());
  CHECK_FALSE(wrote.timed_out);
  CHECK(wrote.n == data.size());
  CHECK(got.size() == data.size());
  CHECK(got == data);
}

TEST_CASE("write_all_for: a peer that never reads makes the write time out, not hang") {
  Pair p;
  const std::string data = pattern(64 * 1024 * 1024);
  IoResult wrote;
  bool done = false;
  asio::co_spawn(p.io, [&]() -> awaitable<void> {
    wrote = co_await write_all_for(*p.a, asio::buffer(data), 1s);
    done = true;
  }, asio::detached);
  p.io.run_for(20s);
  REQUIRE(done);
  CHECK(wrote.timed_out);
  CHECK_FALSE(static_cast<bool>(wrote));
}

TEST_CASE("write_all_for: writing to a connection the peer reset is an error, not a crash or a signal") {
  Pair p;
  // RST on close: SO_LINGER 0.
  p.b->socket().set_option(asio::socket_base::linger(true, 0));
  p.b->close();
  const std::string data = pattern(1024 * 1024);
  IoResult first, second;
  asio::co_spawn(p.io, [&]() -> awaitable<void> {
    first = co_await write_all_for(*p.a, asio::buffer(data), 5s);
    second = co_await write_all_for(*p.a, asio::buffer(data), 5s);
  }, asio::detached);
  p.io.run_for(20s);
  CHECK_FALSE(static_cast<bool>(second));
  CHECK_FALSE(second.timed_out);
}

TEST_CASE("read_some_for: no data within the limit is a timeout, and the stream stays usable") {
  Pair p;
  IoResult r1, r2;
  std::string got;
  asio::co_spawn(p.io, [&]() -> awaitable<void> {
    char buf[64];
    r1 = co_await read_some_for(*p.b, asio::buffer(buf), 1s);
    co_await write_all_for(*p.a, asio::buffer(std::string_view("EHLO x\r\n")), 5s);
    r2 = co_await read_some_for(*p.b, asio::buffer(buf), 5s);
    got.assign(buf, r2.n);
  }, asio::detached);
  p.io.run_for(20s);
  CHECK(r1.timed_out);
  CHECK(static_cast<bool>(r2));
  CHECK(got == "EHLO x\r\n");
}
