// The policy and socketmap connections (relay/postfix/request_connection) in process: a unix
// socketpair on one io_context in the test thread, the connection on one end, the test as the MTA
// on the other. Every wait is bounded by a deadline timer, so a hang fails instead of blocking.
#include <doctest/doctest.h>

#include <sys/socket.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <chrono>
#include <string>

#include "crypto/prvs.hpp"
#include "relay/connection.hpp"
#include "relay/postfix/netstring.hpp"
#include "relay/postfix/policy_service.hpp"
#include "relay/postfix/socketmap.hpp"
#include "tests/unit/fixtures.hpp"

using namespace batv;
using namespace batv::relay;
using namespace std::chrono_literals;

namespace {

std::shared_ptr<const Runtime> runtime_for(std::string_view role, const std::string& timeouts) {
  const std::string text = "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n[[listener]]\nrole = \"" +
                           std::string(role) + "\"\nlisten = \"127.0.0.1:0\"\n[timeouts]\n" + timeouts;
  auto r = conf::load_config_string(text, "t.toml", "");
  REQUIRE_MESSAGE(r.config.has_value(), (r.errors.empty() ? "" : conf::format(r.errors[0])));
  const crypto::PrvsParams params = prvs_params(*r.config);
  return std::make_shared<const Runtime>(
      Runtime{std::move(*r.config), test::spec_ring(), params, "relay.test", {}, {}});
}

struct Harness {
  asio::io_context io{1};
  asio::local::stream_protocol::socket mta{io};
  std::shared_ptr<Connection> conn;
  bool finished = false;

  Harness(std::string_view role, const std::string& timeouts = "") : Harness(role, runtime_for(role, timeouts)) {}
  Harness(std::string_view role, std::shared_ptr<const Runtime> rt) {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0);
    mta.assign(asio::local::stream_protocol(), fds[0]);
    LocalSocket side(io, asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), fds[1]);
    ConnContext ctx;
    ctx.runtime = std::move(rt);
    ctx.id = "test";
    ctx.peer = "unix:test";
    conn = role == "policy" ? postfix::make_policy_connection(std::move(side), std::move(ctx))
                            : postfix::make_socketmap_connection(std::move(side), std::move(ctx));
    asio::co_spawn(io, [this]() -> awaitable<void> {
      co_await conn->run();
      finished = true;
    }, asio::detached);
  }

  // Runs the io_context until `done()` or `limit` passes.
  template <class F>
  bool run_until(F done, std::chrono::milliseconds limit = 5000ms) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < end) {
      io.run_for(10ms);
      if (io.stopped()) io.restart();
    }
    return done();
  }

  // Reads what the connection sends until `want` bytes came or it closed (or 5 s passed).
  std::string read(std::size_t want, bool* closed = nullptr) {
    struct State {
      std::string got;
      bool eof = false, pending = false;
      char buf[4096];
    };
    auto st = std::make_shared<State>();  // the read handler may outlive this call
    auto step = [&] {
      if (st->pending || st->eof || st->got.size() >= want) return;
      st->pending = true;
      mta.async_read_some(asio::buffer(st->buf), [st](boost::system::error_code ec, std::size_t n) {
        st->pending = false;
        if (ec) st->eof = true;
        st->got.append(st->buf, n);
      });
    };
    run_until([&] {
      step();
      return st->eof || st->got.size() >= want;
    });
    if (st->pending) {
      mta.cancel();
      run_until([&] { return !st->pending; });
    }
    if (closed) *closed = st->eof;
    return st->got;
  }

  void write(std::string_view data) { asio::write(mta, asio::buffer(data.data(), data.size())); }
};

}  // namespace

TEST_CASE("socketmap connection: queries written a byte at a time are answered whole and in order") {
  Harness h("socketmap");
  const std::string one = postfix::encode_netstring("strip user@example.com") +
                          postfix::encode_netstring("other x") + postfix::encode_netstring("strip a@elsewhere.org");
  const std::string want = postfix::encode_netstring("NOTFOUND ") + postfix::encode_netstring("PERM unknown map name") +
                           postfix::encode_netstring("NOTFOUND ");
  for (const char c : one) {
    h.write(std::string_view(&c, 1));
    h.io.poll();
    if (h.io.stopped()) h.io.restart();
  }
  CHECK(h.read(want.size()) == want);
  // A broken netstring after a good one: the good one is answered, then the connection closes.
  h.write(postfix::encode_netstring("strip user@example.com") + "01:x,");
  bool closed = false;
  CHECK(h.read(1000, &closed) == postfix::encode_netstring("NOTFOUND "));
  CHECK(closed);
  CHECK(h.run_until([&] { return h.finished; }));
}

TEST_CASE("policy connection: stop() ends an idle connection at once, and one with half a request") {
  for (const bool half : {false, true}) {
    CAPTURE(half);
    Harness h("policy");
    h.write("request=smtpd_access_policy\nprotocol_state=MAIL\n\n");
    CHECK(h.read(14) == "action=DUNNO\n\n");
    if (half) h.write("request=smtpd_access_policy\nprotocol_");
    h.io.poll();
    if (h.io.stopped()) h.io.restart();
    const auto t0 = std::chrono::steady_clock::now();
    h.conn->stop();
    CHECK(h.run_until([&] { return h.finished; }, 2000ms));
    CHECK(std::chrono::steady_clock::now() - t0 < 1s);
    bool closed = false;
    CHECK(h.read(1, &closed).empty());
    CHECK(closed);
  }
}

TEST_CASE("policy connection: the idle timeout closes without an answer; a request keeps it open") {
  Harness h("policy", "policy_idle = 1\npolicy_request = 5\n");
  const auto t0 = std::chrono::steady_clock::now();
  // Requests at half the idle timeout keep the connection.
  for (int i = 0; i < 3; ++i) {
    h.run_until([] { return false; }, 500ms);
    h.write("request=smtpd_access_policy\nprotocol_state=MAIL\n\n");
    CHECK(h.read(14) == "action=DUNNO\n\n");
  }
  CHECK_FALSE(h.finished);
  CHECK(h.run_until([&] { return h.finished; }, 3000ms));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took >= 2500ms);  // 3 x 0.5 s, then the 1 s idle timeout
  CHECK(took < 4000ms);
}

TEST_CASE("policy connection: the prvs day is the runtime's clock (Runtime::clock), not the system's") {
  // A bounce to a tag made at T1: valid on T1, expired 30 days later, as the clock the runtime
  // carries says; the system clock (2026 and on) would call it expired in both.
  const std::string text =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\nverify = [\"example.com\"]\n[[listener]]\nrole = \"policy\"\n"
      "listen = \"127.0.0.1:0\"\n";
  const auto tag = crypto::sign(test::spec_ring(), "user@example.com", test::T1);
  REQUIRE(tag.tagged);
  const std::string request = "request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\nrecipient=" +
                              *tag.tagged + "\n\n";
  struct Row {
    std::int64_t now;
    std::string answer;
  };
  const Row rows[] = {
      {test::T1, "action=DUNNO\n\n"},
      {test::T1 + 6 * 86400, "action=DUNNO\n\n"},
      {test::T1 + 30 * 86400, "action=550 5.7.1 bounce refused: tag expired\n\n"},
  };
  for (const Row& r : rows) {
    CAPTURE(r.now);
    auto loaded = conf::load_config_string(text, "t.toml", "");
    REQUIRE_MESSAGE(loaded.config.has_value(), (loaded.errors.empty() ? "" : conf::format(loaded.errors[0])));
    const crypto::PrvsParams params = prvs_params(*loaded.config);
    Runtime rt{std::move(*loaded.config), test::spec_ring(), params, "relay.test", {}, {}};
    int reads = 0;
    rt.clock.source = [now = r.now, &reads] {
      ++reads;
      return now;
    };
    Harness h("policy", std::make_shared<const Runtime>(std::move(rt)));
    h.write(request);
    CHECK(h.read(r.answer.size()) == r.answer);
    CHECK(reads > 0);
  }
}
