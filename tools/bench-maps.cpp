// bench-maps: load generator for batv-relay's Postfix no-hop roles (tools/bench, part "maps").
//
//   bench-maps policy|socketmap ADDRESS CONNECTIONS DEPTH SECONDS TAGGED [UNTAGGED]
//
// ADDRESS is 127.0.0.1:PORT or unix:/path. Opens CONNECTIONS connections and keeps DEPTH
// requests in flight on each (DEPTH 1 is how Postfix talks: one request, wait for the answer;
// more is pipelining), for SECONDS, on one thread with epoll. The requests cycle through three
// kinds that exercise the real decision (a prvs verification where the recipient is tagged):
//   policy:     a Postfix 3.7-sized RCPT request (about 600 bytes): a bounce to TAGGED (DUNNO), a
//               bounce to UNTAGGED (550), a normal sender to TAGGED (DUNNO)
//   socketmap:  "strip TAGGED" (OK), "strip UNTAGGED" (NOTFOUND), "strip someone@elsewhere"
//               (NOTFOUND)
// Every answer is checked against what that kind must get; a wrong or missing answer counts as an
// error. Prints one line:
//   requests=N seconds=S errors=E client_cpu=C
// Not a test and not part of the relay: POSIX sockets only, links nothing of batv-relay.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "bench-maps: %s: %s\n", what, std::strerror(errno));
  std::exit(1);
}

int connect_to(const std::string& where) {
  int fd = -1;
  if (where.rfind("unix:", 0) == 0) {
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string path = where.substr(5);
    if (path.size() >= sizeof a.sun_path) die("socket path too long");
    std::memcpy(a.sun_path, path.data(), path.size());
    fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect");
  } else {
    const auto colon = where.rfind(':');
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(std::atoi(where.c_str() + colon + 1)));
    if (::inet_pton(AF_INET, where.substr(0, colon).c_str(), &a.sin_addr) != 1) die("address");
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die("connect");
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
  return fd;
}

std::string policy_request(std::string_view sender, std::string_view recipient) {
  std::string r;
  r += "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\n";
  r += "helo_name=mx.remote.example\nqueue_id=\nsender=" + std::string(sender) + "\n";
  r += "recipient=" + std::string(recipient) + "\nrecipient_count=0\nclient_address=192.0.2.7\n";
  r += "client_name=mx.remote.example\nreverse_client_name=mx.remote.example\n";
  r += "instance=1a2b.5f0c1d2e.3f4a5.0\nsasl_method=\nsasl_username=\nsasl_sender=\nsize=0\n";
  r += "ccert_subject=\nccert_issuer=\nccert_fingerprint=\nccert_pubkey_fingerprint=\n";
  r += "encryption_protocol=TLSv1.3\nencryption_cipher=TLS_AES_256_GCM_SHA384\nencryption_keysize=256\n";
  r += "etrn_domain=\nstress=\nclient_port=45678\npolicy_context=\nserver_address=127.0.0.1\n";
  r += "server_port=25\ncompatibility_level=3.6\nmail_version=3.7.11\n\n";
  return r;
}

std::string netstring(std::string_view s) { return std::to_string(s.size()) + ":" + std::string(s) + ","; }

struct Kind {
  std::string request;
  std::string answer;  // the exact answer bytes expected
};

struct Conn {
  int fd = -1;
  std::string out;
  std::size_t out_off = 0;
  std::string in;
  std::size_t in_off = 0;
  std::vector<int> expect;  // kinds of the requests in flight, oldest first
  std::size_t expect_head = 0;
  std::size_t next_kind = 0;
  bool want_out = false;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: bench-maps policy|socketmap ADDRESS CONNECTIONS DEPTH SECONDS TAGGED [UNTAGGED]\n");
    return 64;
  }
  const std::string proto = argv[1];
  const std::string where = argv[2];
  const int nconn = std::atoi(argv[3]);
  const int depth = std::atoi(argv[4]);
  const double seconds = std::atof(argv[5]);
  const std::string tagged = argv[6];
  const std::string untagged = argc > 7 ? argv[7] : tagged.substr(tagged.find('=', 5) + 1);
  std::vector<Kind> kinds;
  if (proto == "policy") {
    kinds.push_back({policy_request("", tagged), "action=DUNNO\n\n"});
    kinds.push_back({policy_request("", untagged), "action=550 5.7.1 bounce refused: address not tagged\n\n"});
    kinds.push_back({policy_request("bart@remote.example", tagged), "action=DUNNO\n\n"});
  } else if (proto == "socketmap") {
    kinds.push_back({netstring("strip " + tagged), netstring("OK " + untagged)});
    kinds.push_back({netstring("strip " + untagged), netstring("NOTFOUND ")});
    kinds.push_back({netstring("strip someone@elsewhere.example"), netstring("NOTFOUND ")});
  } else {
    std::fprintf(stderr, "bench-maps: unknown protocol %s\n", proto.c_str());
    return 64;
  }
  if (nconn < 1 || depth < 1 || seconds <= 0) return 64;

  const int ep = ::epoll_create1(0);
  std::vector<Conn> conns(static_cast<std::size_t>(nconn));
  for (std::size_t i = 0; i < conns.size(); ++i) {
    conns[i].fd = connect_to(where);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.u64 = i;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev) != 0) die("epoll_ctl");
  }
  std::uint64_t done = 0, errors = 0;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  bool sending = true;

  auto flush = [&](Conn& c, std::size_t idx) {
    while (c.out_off < c.out.size()) {
      const ssize_t n = ::send(c.fd, c.out.data() + c.out_off, c.out.size() - c.out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN) break;
        die("send");
      }
      c.out_off += static_cast<std::size_t>(n);
    }
    if (c.out_off == c.out.size()) {
      c.out.clear();
      c.out_off = 0;
    }
    const bool want = !c.out.empty();
    if (want != c.want_out) {
      epoll_event ev{};
      ev.events = want ? (EPOLLIN | EPOLLOUT) : EPOLLIN;
      ev.data.u64 = idx;
      ::epoll_ctl(ep, EPOLL_CTL_MOD, c.fd, &ev);
      c.want_out = want;
    }
  };
  auto enqueue = [&](Conn& c) {
    const int k = static_cast<int>(c.next_kind++ % kinds.size());
    c.out += kinds[static_cast<std::size_t>(k)].request;
    c.expect.push_back(k);
  };
  for (std::size_t i = 0; i < conns.size(); ++i) {
    for (int d = 0; d < depth; ++d) enqueue(conns[i]);
    flush(conns[i], i);
  }
  std::size_t in_flight = conns.size() * static_cast<std::size_t>(depth);
  std::vector<epoll_event> events(conns.size());
  char buf[65536];
  while (in_flight > 0) {
    if (sending && Clock::now() >= end) sending = false;
    const int n = ::epoll_wait(ep, events.data(), static_cast<int>(events.size()), 1000);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("epoll_wait");
    }
    if (n == 0 && Clock::now() > end + std::chrono::seconds(10)) {
      std::fprintf(stderr, "bench-maps: %zu answers missing 10 s after the end\n", in_flight);
      errors += in_flight;
      break;
    }
    for (int e = 0; e < n; ++e) {
      const std::size_t idx = events[static_cast<std::size_t>(e)].data.u64;
      Conn& c = conns[idx];
      if (events[static_cast<std::size_t>(e)].events & EPOLLOUT) flush(c, idx);
      if (!(events[static_cast<std::size_t>(e)].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
      const ssize_t got = ::recv(c.fd, buf, sizeof buf, 0);
      if (got < 0 && errno == EAGAIN) continue;
      if (got <= 0) {
        std::fprintf(stderr, "bench-maps: connection %zu closed by the server\n", idx);
        errors += c.expect.size() - c.expect_head;
        in_flight -= c.expect.size() - c.expect_head;
        ::epoll_ctl(ep, EPOLL_CTL_DEL, c.fd, nullptr);
        ::close(c.fd);
        c.fd = -1;
        c.expect_head = c.expect.size();
        continue;
      }
      c.in.append(buf, static_cast<std::size_t>(got));
      std::size_t answered = 0;
      while (c.expect_head < c.expect.size()) {
        const std::string& want = kinds[static_cast<std::size_t>(c.expect[c.expect_head])].answer;
        if (c.in.size() - c.in_off < want.size()) break;
        if (std::string_view(c.in).substr(c.in_off, want.size()) != want) {
          ++errors;
          // Resynchronise on the framing: the end of this answer, whatever it said.
          const std::size_t cut = proto == "policy" ? c.in.find("\n\n", c.in_off) : c.in.find(',', c.in_off);
          if (cut == std::string::npos) break;
          c.in_off = cut + (proto == "policy" ? 2 : 1);
        } else {
          c.in_off += want.size();
          ++done;
        }
        ++c.expect_head;
        ++answered;
        --in_flight;
      }
      if (c.in_off == c.in.size()) {
        c.in.clear();
        c.in_off = 0;
      }
      if (c.expect_head == c.expect.size() || c.expect_head > 4096) {
        c.expect.erase(c.expect.begin(), c.expect.begin() + static_cast<std::ptrdiff_t>(c.expect_head));
        c.expect_head = 0;
      }
      if (sending) {
        for (std::size_t k = 0; k < answered; ++k) enqueue(c);
        in_flight += answered;
        flush(c, idx);
      }
    }
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  const double cpu = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                     static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  std::printf("requests=%llu seconds=%.3f errors=%llu client_cpu=%.3f\n", static_cast<unsigned long long>(done), secs,
              static_cast<unsigned long long>(errors), cpu);
  for (auto& c : conns)
    if (c.fd >= 0) ::close(c.fd);
  return errors == 0 ? 0 : 2;
}
