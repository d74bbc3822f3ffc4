// bench-forward: the floor for any one-hop TCP proxy on this machine, for tools/bench.
//
// A single-threaded epoll loop that copies bytes between each accepted connection and its own
// connection to the next hop, and does nothing else: no SMTP, no parsing, no timers, no
// allocation per message. tools/bench runs it between smtp-source and smtp-sink next to
// batv-relay, so that the report shows what share of the direct rate is lost to the extra hop
// itself (two more sockets per session, a read and a write per packet each way) and what share
// to the relay's own work. Not a test and not a product: loopback only, no limits beyond the
// descriptor limit.
//
//   bench-forward NEXT_HOP_PORT     listens on 127.0.0.1, port chosen by the kernel; prints
//                                   "port N" on stdout once listening; runs until SIGTERM/SIGINT
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <memory>
#include <vector>

namespace {

constexpr std::size_t kBuffer = 64 * 1024;
volatile std::sig_atomic_t stop = 0;

// One direction of a pair: bytes read from `from` that `to` has not taken yet.
struct Side {
  int fd = -1;
  std::unique_ptr<char[]> buf{new char[kBuffer]};
  std::size_t begin = 0, end = 0;  // pending bytes to write to the peer
  bool eof = false;
  std::uint32_t registered = EPOLLIN;  // what epoll watches on fd
};

struct Pair {
  Side side[2];  // 0: client, 1: next hop; side[i].buf holds what was read from side[i]
};

struct Tag {
  Pair* pair;
  int index;
};

int fail(const char* what) {
  std::fprintf(stderr, "bench-forward: %s: %s\n", what, std::strerror(errno));
  return 1;
}

void nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

void nodelay(int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// What side i waits for: input while its buffer is empty, output while the peer's is not.
std::uint32_t interest(const Pair& p, int i) {
  std::uint32_t ev = 0;
  if (!p.side[i].eof && p.side[i].begin == p.side[i].end) ev |= EPOLLIN;
  const Side& peer = p.side[1 - i];
  if (peer.begin != peer.end) ev |= EPOLLOUT;
  return ev;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: bench-forward NEXT_HOP_PORT\n");
    return 2;
  }
  const int next_port = std::atoi(argv[1]);
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = [](int) { stop = 1; };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  const int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return fail("bind");
  if (listen(lfd, 4096) != 0) return fail("listen");
  socklen_t len = sizeof addr;
  getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len);
  std::printf("port %d\n", ntohs(addr.sin_port));
  std::fflush(stdout);

  const int ep = epoll_create1(0);
  epoll_event lev{};
  lev.events = EPOLLIN;
  lev.data.ptr = nullptr;
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);

  sockaddr_in next{};
  next.sin_family = AF_INET;
  next.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  next.sin_port = htons(static_cast<std::uint16_t>(next_port));

  // Only a change of interest costs an epoll_ctl: the common case (read, forwarded whole at
  // once) costs none.
  auto update = [&](Pair& p, Tag* tags) {
    for (int i = 0; i < 2; ++i) {
      const std::uint32_t want = interest(p, i);
      if (want == p.side[i].registered) continue;
      epoll_event ev{};
      ev.events = want;
      ev.data.ptr = &tags[i];
      epoll_ctl(ep, EPOLL_CTL_MOD, p.side[i].fd, &ev);
      p.side[i].registered = want;
    }
  };
  auto close_pair = [&](Pair* p, Tag* tags) {
    for (auto& s : p->side) close(s.fd);
    delete p;
    delete[] tags;
  };

  std::array<epoll_event, 256> events{};
  while (!stop) {
    const int n = epoll_wait(ep, events.data(), static_cast<int>(events.size()), 200);
    if (n < 0 && errno != EINTR) return fail("epoll_wait");
    for (int k = 0; k < n; ++k) {
      if (events[k].data.ptr == &events) continue;  // a pair closed earlier in this batch
      if (events[k].data.ptr == nullptr) {  // the listener
        for (;;) {
          const int c = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK);
          if (c < 0) break;
          const int u = socket(AF_INET, SOCK_STREAM, 0);
          if (connect(u, reinterpret_cast<sockaddr*>(&next), sizeof next) != 0) {  // loopback: at once
            close(u);
            close(c);
            continue;
          }
          nonblocking(u);
          nodelay(c);
          nodelay(u);
          auto* p = new Pair;
          auto* tags = new Tag[2]{{p, 0}, {p, 1}};
          p->side[0].fd = c;
          p->side[1].fd = u;
          for (int i = 0; i < 2; ++i) {
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.ptr = &tags[i];
            epoll_ctl(ep, EPOLL_CTL_ADD, p->side[i].fd, &ev);
          }
        }
        continue;
      }
      Tag* tag = static_cast<Tag*>(events[k].data.ptr);
      Pair& p = *tag->pair;
      Tag* tags = tag - tag->index;
      const int i = tag->index;
      Side& me = p.side[i];
      Side& peer = p.side[1 - i];
      bool dead = false;
      // Output first: the peer's pending bytes go to this side.
      if ((events[k].events & EPOLLOUT) && peer.begin != peer.end) {
        const ssize_t w = send(me.fd, peer.buf.get() + peer.begin, peer.end - peer.begin, MSG_NOSIGNAL);
        if (w > 0) peer.begin += static_cast<std::size_t>(w);
        else if (errno != EAGAIN) dead = true;
        if (peer.begin == peer.end) peer.begin = peer.end = 0;
      }
      if (!dead && (events[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && me.begin == me.end && !me.eof) {
        const ssize_t r = recv(me.fd, me.buf.get(), kBuffer, 0);
        if (r > 0) {
          me.end = static_cast<std::size_t>(r);
          // Forward at once; what the peer does not take waits for its EPOLLOUT.
          const ssize_t w = send(peer.fd, me.buf.get(), me.end, MSG_NOSIGNAL);
          if (w > 0) me.begin = static_cast<std::size_t>(w);
          else if (errno != EAGAIN) dead = true;
          if (me.begin == me.end) me.begin = me.end = 0;
        } else if (r == 0 || errno != EAGAIN) {
          dead = true;  // SMTP ends with QUIT and 221: either side closing ends the pair
        }
      }
      if (dead) {
        // Later events of this batch may name the pair: drop them before it goes.
        for (int j = k + 1; j < n; ++j)
          if (events[j].data.ptr == &tags[0] || events[j].data.ptr == &tags[1]) events[j].data.ptr = &events;
        close_pair(&p, tags);
        continue;
      }
      update(p, tags);
    }
  }
  return 0;
}
