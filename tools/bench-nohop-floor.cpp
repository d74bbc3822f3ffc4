// bench-nohop-floor: the floor for Postfix's no-hop BATV set-up on this machine, for tools/bench.
//
// What Postfix pays for a milter, a policy service and a socketmap whatever answers them: the
// same exchanges as batv-relay's three roles, answered from canned bytes by one single-threaded
// epoll loop: no configuration, no decisions, no crypto, no timers, no logging. tools/bench runs
// a third Postfix against it next to Postfix alone and Postfix with batv-relay, so the report
// shows how much of what the no-hop set-up costs is Postfix's own side (its milter, policy and
// table clients, cleanup's sender rewrite) and how much is batv-relay's. Not a test and not a
// product: loopback and a unix socket only, no limits beyond the descriptor limit.
//
// The milter side negotiates as batv-relay's milter does (protocol version 6, CHGFROM and
// SETSYMLIST, the same skipped steps and no-reply steps, the same macro lists), answers RCPT with
// CONTINUE and end of message with a CHGFROM to a tagged sender of a real tag's length and
// ACCEPT. The policy side answers every request "action=DUNNO"; the socketmap every lookup
// "NOTFOUND" (what batv-relay answers for the bench's outbound mail).
//
//   bench-nohop-floor MILTER_SOCKET_PATH   listens on that unix socket (mode 0666) and on two
//                                          loopback TCP ports chosen by the kernel; prints
//                                          "policy N socketmap M" once listening; runs until
//                                          SIGTERM/SIGINT
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

namespace {

volatile std::sig_atomic_t stop = 0;

enum class Kind : std::uint8_t { milter_listener, policy_listener, socketmap_listener, milter, policy, socketmap };

struct Conn {
  int fd = -1;
  Kind kind{};
  std::string in;   // bytes read, not yet answered
  std::string out;  // answers not yet written
};

// Milter protocol constants (Sendmail's libmilter/mfdef.h, as batv-relay's relay/milter/codec.hpp).
constexpr std::uint32_t kVersion = 6;
constexpr std::uint32_t kActions = 0x40 | 0x100;  // SMFIF_CHGFROM | SMFIF_SETSYMLIST
// NOCONNECT NOHELO NOHDRS NOBODY NOEOH NOUNKNOWN NODATA and NR_ CONN HELO MAIL DATA UNKN EOH BODY.
constexpr std::uint32_t kSkip = 0x1 | 0x2 | 0x20 | 0x10 | 0x40 | 0x100 | 0x200 | 0x1000 | 0x2000 | 0x4000 |
                                0x10000 | 0x20000 | 0x40000 | 0x80000;
constexpr std::string_view kMailMacros = "{client_addr} {client_name} {auth_authen} {daemon_name} i";
constexpr std::string_view kEomMacros = "i";
// A sender as batv-relay's CHGFROM gives it for the bench's homer@example.com.
constexpr std::string_view kTagged = "<prvs=3797000000=homer@example.com>";

void put32(std::string& s, std::uint32_t v) {
  const std::uint32_t n = htonl(v);
  s.append(reinterpret_cast<const char*>(&n), 4);
}

void packet(std::string& out, char cmd, std::string_view data) {
  put32(out, static_cast<std::uint32_t>(data.size() + 1));
  out += cmd;
  out.append(data);
}

std::uint32_t get32(const char* p) {
  std::uint32_t n;
  std::memcpy(&n, p, 4);
  return ntohl(n);
}

// Answers every whole milter packet in c.in; false when the connection is to close.
bool milter(Conn& c) {
  std::size_t at = 0;
  bool open = true;
  while (c.in.size() - at >= 5) {
    const std::uint32_t len = get32(c.in.data() + at);
    if (len == 0 || len > (1u << 20)) return false;
    if (c.in.size() - at < 4 + len) break;
    const char cmd = c.in[at + 4];
    const char* data = c.in.data() + at + 5;
    switch (cmd) {
      case 'O': {  // option negotiation: version, actions, protocol offered by the MTA
        const std::uint32_t offered = len >= 13 ? get32(data + 8) : 0;
        std::string d;
        put32(d, kVersion);
        put32(d, kActions);
        put32(d, kSkip & offered);
        put32(d, 2);  // SMFIM_ENVFROM
        d.append(kMailMacros);
        d += '\0';
        put32(d, 5);  // SMFIM_EOM
        d.append(kEomMacros);
        d += '\0';
        packet(c.out, 'O', d);
        break;
      }
      case 'R': packet(c.out, 'c', {}); break;  // RCPT: continue
      case 'E': {                               // end of message: CHGFROM, then accept
        std::string d(kTagged);
        d += '\0';
        packet(c.out, 'e', d);
        packet(c.out, 'a', {});
        break;
      }
      case 'Q': open = false; break;  // quit
      default: break;                 // macros, MAIL (no reply negotiated), abort, quit_nc
    }
    at += 4 + len;
  }
  c.in.erase(0, at);
  return open;
}

// Answers every whole policy request (attributes up to an empty line) in c.in.
void policy(Conn& c) {
  std::size_t end;
  while ((end = c.in.find("\n\n")) != std::string::npos) {
    c.out += "action=DUNNO\n\n";
    c.in.erase(0, end + 2);
  }
}

// Answers every whole netstring lookup ("LEN:map key,") in c.in.
bool socketmap(Conn& c) {
  for (;;) {
    const std::size_t colon = c.in.find(':');
    if (colon == std::string::npos) return c.in.size() < 12;
    const std::size_t len = std::strtoul(c.in.c_str(), nullptr, 10);
    if (c.in.size() < colon + 1 + len + 1) return true;
    c.out += "9:NOTFOUND ,";
    c.in.erase(0, colon + 1 + len + 1);
  }
}

int fail(const char* what) {
  std::fprintf(stderr, "bench-nohop-floor: %s: %s\n", what, std::strerror(errno));
  return 1;
}

void nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

int tcp_listener(std::uint16_t& port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t n = sizeof a;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 1024) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &n) != 0)
    return -1;
  port = ntohs(a.sin_port);
  return fd;
}

int unix_listener(const char* path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (std::strlen(path) >= sizeof a.sun_path) return -1;
  std::strcpy(a.sun_path, path);
  unlink(path);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || chmod(path, 0666) != 0 || listen(fd, 1024) != 0)
    return -1;
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: bench-nohop-floor MILTER_SOCKET_PATH\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa{};
  sa.sa_handler = [](int) { stop = 1; };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  std::uint16_t policy_port = 0, socketmap_port = 0;
  const int lm = unix_listener(argv[1]);
  if (lm < 0) return fail("milter socket");
  const int lp = tcp_listener(policy_port);
  const int ls = tcp_listener(socketmap_port);
  if (lp < 0 || ls < 0) return fail("tcp listener");
  const int ep = epoll_create1(0);
  if (ep < 0) return fail("epoll_create1");
  auto watch = [ep](Conn* c, std::uint32_t events, int op) {
    epoll_event ev{};
    ev.events = events;
    ev.data.ptr = c;
    return epoll_ctl(ep, op, c->fd, &ev) == 0;
  };
  Conn listeners[3] = {{lm, Kind::milter_listener, {}, {}}, {lp, Kind::policy_listener, {}, {}},
                       {ls, Kind::socketmap_listener, {}, {}}};
  for (Conn& l : listeners) {
    nonblocking(l.fd);
    if (!watch(&l, EPOLLIN, EPOLL_CTL_ADD)) return fail("epoll_ctl");
  }
  std::printf("policy %u socketmap %u\n", policy_port, socketmap_port);
  std::fflush(stdout);

  epoll_event events[256];
  char buf[16 * 1024];
  while (!stop) {
    const int n = epoll_wait(ep, events, 256, 500);
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      Conn* c = static_cast<Conn*>(events[i].data.ptr);
      if (c->kind == Kind::milter_listener || c->kind == Kind::policy_listener ||
          c->kind == Kind::socketmap_listener) {
        for (;;) {
          const int fd = accept4(c->fd, nullptr, nullptr, SOCK_NONBLOCK);
          if (fd < 0) break;
          const Kind k = c->kind == Kind::milter_listener ? Kind::milter
                         : c->kind == Kind::policy_listener ? Kind::policy : Kind::socketmap;
          auto* conn = new Conn{fd, k, {}, {}};
          if (!watch(conn, EPOLLIN, EPOLL_CTL_ADD)) {
            close(fd);
            delete conn;
          }
        }
        continue;
      }
      bool open = true;
      if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        for (;;) {
          const ssize_t r = read(c->fd, buf, sizeof buf);
          if (r > 0) {
            c->in.append(buf, static_cast<std::size_t>(r));
            if (static_cast<std::size_t>(r) < sizeof buf) break;
            continue;
          }
          if (r == 0 || (errno != EAGAIN && errno != EINTR)) open = false;
          break;
        }
        if (c->kind == Kind::milter) open = milter(*c) && open;
        else if (c->kind == Kind::policy) policy(*c);
        else open = socketmap(*c) && open;
      }
      while (!c->out.empty()) {
        const ssize_t w = write(c->fd, c->out.data(), c->out.size());
        if (w <= 0) break;
        c->out.erase(0, static_cast<std::size_t>(w));
      }
      // A peer that does not take a few hundred bytes at once is not Postfix on loopback.
      if (!open || !c->out.empty()) {
        close(c->fd);
        delete c;
      }
    }
  }
  unlink(argv[1]);
  return 0;
}
