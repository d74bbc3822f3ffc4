// relay/http: the metrics HTTP endpoint (MetricsServer), on the process-wide registry (reset
// first). The server runs on 127.0.0.1:0 with its io_context on a thread; the client is a plain
// blocking socket with a receive timeout, so every wait is bounded.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <future>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "relay/http.hpp"
#include "relay/metrics.hpp"
#include "tests/unit/exposition.hpp"

using namespace batv;
using namespace batv::test;
using Role = conf::Role;

// --- HTTP endpoint -------------------------------------------------------------------------------

namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// An io_context running on its own thread. finish() lets it run out of work (the server must
// leave nothing pending after stop()) and says whether it did so within the limit.
class IoThread {
 public:
  IoThread() : guard_(asio::make_work_guard(ioc)), done_(promise_.get_future()) {
    thread_ = std::thread([this] {
      ioc.run();
      promise_.set_value();
    });
  }
  ~IoThread() { finish(std::chrono::seconds(5)); }
  IoThread(const IoThread&) = delete;
  IoThread& operator=(const IoThread&) = delete;

  bool finish(std::chrono::milliseconds limit) {
    if (!thread_.joinable()) return true;
    guard_.reset();
    const bool clean = done_.wait_for(limit) == std::future_status::ready;
    ioc.stop();
    thread_.join();
    return clean;
  }

  asio::io_context ioc;

 private:
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::promise<void> promise_;
  std::future<void> done_;
  std::thread thread_;
};

// A blocking client socket with a 5 s receive timeout.
class Client {
 public:
  explicit Client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    timeval tv{5, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  bool connected() const { return connected_; }

  bool send(const std::string& data) {
    std::size_t off = 0;
    while (off < data.size()) {
      const ssize_t n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
      if (n <= 0) return false;
      off += static_cast<std::size_t>(n);
    }
    return true;
  }

  // Everything until the peer closes (closed = true), or until the timeout / a reset.
  std::string read_all(bool* closed = nullptr) {
    std::string out;
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n > 0) {
        out.append(buf, static_cast<std::size_t>(n));
        continue;
      }
      if (closed) *closed = n == 0 || errno == ECONNRESET;
      return out;
    }
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

struct Response {
  int status = 0;
  std::string head;  // status line and headers
  std::string body;
};

Response parse(const std::string& raw) {
  Response r;
  const std::size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos || raw.size() < 12 || !raw.starts_with("HTTP/1.")) return r;
  r.status = std::stoi(raw.substr(9, 3));
  r.head = raw.substr(0, end + 2);
  r.body = raw.substr(end + 4);
  return r;
}

std::string header(const Response& r, const std::string& name) {
  for (const auto& l : lines_of(r.head)) {
    std::string line = l;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > name.size() + 1 && line[name.size()] == ':') {
      bool same = true;
      for (std::size_t i = 0; i < name.size(); ++i)
        same = same && std::tolower(static_cast<unsigned char>(line[i])) ==
                           std::tolower(static_cast<unsigned char>(name[i]));
      if (same) return line.substr(name.size() + 2);
    }
  }
  return {};
}

Response request(std::uint16_t port, const std::string& method, const std::string& target,
                 const std::string& extra_headers = "", const std::string& body = "") {
  Client c(port);
  REQUIRE(c.connected());
  REQUIRE(c.send(method + " " + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra_headers +
                 "Connection: close\r\n\r\n" + body));
  bool closed = false;
  const std::string raw = c.read_all(&closed);
  CHECK_MESSAGE(closed, "the server did not close after Connection: close");
  return parse(raw);
}

struct ServerFixture {
  explicit ServerFixture(relay::MetricsServer::Options opts = {}) {
    relay::metrics().reset_for_tests();
    server.emplace(io.ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0),
                   [this] {
                     ++health_calls;
                     return healthy.load();
                   },
                   opts);
    const auto ec = server->start();
    REQUIRE_MESSAGE(!ec, ec.message());
    port = server->local_endpoint().port();
    REQUIRE(port != 0);
  }
  ~ServerFixture() { server.reset(); }

  std::atomic<bool> healthy{true};
  std::atomic<int> health_calls{0};
  IoThread io;
  std::optional<relay::MetricsServer> server;
  std::uint16_t port = 0;
};

}  // namespace

TEST_CASE("MetricsServer: /metrics, /healthz, 404, 405, HEAD") {
  ServerFixture f;
  relay::metrics().session_started(Role::outbound);
  relay::metrics().not_signed(crypto::NoSignReason::not_our_domain);

  SUBCASE("GET /metrics is the rendered registry") {
    const Response r = request(f.port, "GET", "/metrics");
    CHECK(r.status == 200);
    CHECK(header(r, "Content-Type").starts_with("text/plain; version=0.0.4"));
    CHECK(header(r, "Content-Length") == std::to_string(r.body.size()));
    check_format(r.body);
    CHECK(has_line(r.body, "batv_sessions_total{role=\"outbound\"} 1"));
    CHECK(has_line(r.body, "batv_signing_total{decision=\"not_signed\",reason=\"not_our_domain\"} 1"));
    CHECK(request(f.port, "GET", "/metrics?name[]=x").status == 200);  // query ignored
  }
  SUBCASE("/healthz follows the health check") {
    Response r = request(f.port, "GET", "/healthz");
    CHECK(r.status == 200);
    CHECK(r.body == "ok\n");
    f.healthy = false;
    r = request(f.port, "GET", "/healthz");
    CHECK(r.status == 503);
    CHECK(r.body == "unhealthy\n");
    CHECK(f.health_calls.load() == 2);
  }
  SUBCASE("unknown paths and methods") {
    CHECK(request(f.port, "GET", "/").status == 404);
    CHECK(request(f.port, "GET", "/metrics/x").status == 404);
    const Response r = request(f.port, "POST", "/metrics", "Content-Length: 3\r\n", "a=b");
    CHECK(r.status == 405);
    CHECK(request(f.port, "POST", "/nope", "Content-Length: 5000\r\n", std::string(5000, 'x')).status == 413);
    const Response d = request(f.port, "DELETE", "/healthz");
    CHECK(d.status == 405);
    CHECK(header(d, "Allow") == "GET, HEAD");
  }
  SUBCASE("HEAD has the headers of GET and no body") {
    const Response r = request(f.port, "HEAD", "/healthz");
    CHECK(r.status == 200);
    CHECK(header(r, "Content-Length") == "3");
    CHECK(r.body.empty());
  }
}

TEST_CASE("MetricsServer: keep-alive, bad requests, oversized headers, idle timeout") {
  relay::MetricsServer::Options opts;
  opts.idle_timeout = std::chrono::milliseconds(500);
  ServerFixture f(opts);

  SUBCASE("two pipelined requests on one connection") {
    Client c(f.port);
    REQUIRE(c.connected());
    REQUIRE(c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    bool closed = false;
    const std::string raw = c.read_all(&closed);
    CHECK(closed);
    const Response first = parse(raw);
    CHECK(first.status == 200);
    const std::size_t second = raw.find("HTTP/1.1 404");
    CHECK(second != std::string::npos);
    CHECK(raw.starts_with("HTTP/1.1 200"));
  }
  SUBCASE("a malformed request gets 400 and the connection is closed") {
    Client c(f.port);
    REQUIRE(c.connected());
    REQUIRE(c.send("HELLO THERE\r\n\r\n"));
    bool closed = false;
    const Response r = parse(c.read_all(&closed));
    CHECK(closed);
    CHECK(r.status == 400);
  }
  SUBCASE("a header over 8 KiB gets 431 or a closed connection") {
    Client c(f.port);
    REQUIRE(c.connected());
    const std::string big = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(16 * 1024, 'a') + "\r\n\r\n";
    c.send(big);  // may fail half way when the server already closed
    bool closed = false;
    const std::string raw = c.read_all(&closed);
    CHECK(closed);
    CHECK_MESSAGE((raw.empty() || parse(raw).status == 431), raw.substr(0, 200));
  }
  SUBCASE("an idle connection is closed after the idle timeout") {
    Client c(f.port);
    REQUIRE(c.connected());
    const auto t0 = std::chrono::steady_clock::now();
    bool closed = false;
    c.send("GET /metr");  // a request that never ends
    CHECK(c.read_all(&closed).empty());
    CHECK(closed);
    const auto waited = std::chrono::steady_clock::now() - t0;
    CHECK(waited >= std::chrono::milliseconds(400));
    CHECK(waited < std::chrono::seconds(4));
  }
}

TEST_CASE("MetricsServer: connection limit, stop closes everything") {
  relay::MetricsServer::Options opts;
  opts.max_connections = 2;
  opts.idle_timeout = std::chrono::seconds(20);
  ServerFixture f(opts);

  Client a(f.port), b(f.port);
  REQUIRE(a.connected());
  REQUIRE(b.connected());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the server accept both
  {
    Client c(f.port);  // the kernel completes the handshake; the server closes it at once
    REQUIRE(c.connected());
    c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    bool closed = false;
    const auto t0 = std::chrono::steady_clock::now();
    CHECK(c.read_all(&closed).empty());
    CHECK(closed);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3));
  }
  // Held connections still work.
  REQUIRE(a.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  bool closed = false;
  CHECK(parse(a.read_all(&closed)).status == 200);
  CHECK(closed);

  // stop(): the listener and every connection close; the io_context runs out of work.
  f.server->stop();
  f.server->stop();  // idempotent
  closed = false;
  CHECK(b.read_all(&closed).empty());
  CHECK(closed);
  Client late(f.port);
  CHECK_FALSE(late.connected());
  CHECK(f.io.finish(std::chrono::seconds(5)));
  const int calls = f.health_calls.load();
  CHECK(calls == 1);
}

TEST_CASE("MetricsServer: start reports a port in use") {
  ServerFixture f;
  IoThread io;
  relay::MetricsServer second(io.ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), f.port), {});
  const auto ec = second.start();
  CHECK(ec == asio::error::address_in_use);
}

