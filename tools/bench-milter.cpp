// bench-milter: milter transaction round trips at 1 session, for tools/bench (part postfix-nohop).
//
// A small MTA side of the Sendmail 8 / Postfix milter protocol: it negotiates once the way
// Postfix 3.7 does (version 6, every action, every protocol step flag offered), keeps the steps
// the milter did not skip, sends the macros it asked for with SETSYMLIST, and waits only for the
// replies it did not waive (SMFIP_NR_*). Then, per transaction on the same connection: connect,
// helo, mail, rcpt, (data, header, end of headers, body if not skipped), end of message (every
// modification reply up to the final continue/accept), and QUIT_NC so that the next transaction
// starts again from connect, as an MTA reusing the milter connection would. Each transaction is
// timed; the first (warm-up) must carry a CHGFROM with a prvs tag. Then the same number of
// request/reply round trips through a bare unix socketpair (a child process answering each packet
// with one byte): the floor of any milter on this machine.
//
//   bench-milter SOCKET_PATH TRANSACTIONS [session|message [CLIENT_ADDR]]
//   session (default): each transaction from connect to end of message, then QUIT_NC;
//   message: connect and helo once, then mail, rcpt, end of message per transaction (for a
//   milter without QUIT_NC: after end of message the next message starts at MAIL).
//   prints one line: "p50 U p99 U floor_p50 U floor_p99 U n N version V protocol 0xP rtt R
//   macros STAGE:NAME,NAME;..." (U in microseconds, R = round trips per transaction)
// Not a test and not a product: loopback only, exits non-zero with a message on any surprise.
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& why) {
  std::fprintf(stderr, "bench-milter: %s\n", why.c_str());
  std::exit(1);
}

void put32(std::string& s, std::uint32_t v) {
  for (int i = 3; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

std::uint32_t get32(const std::string& s, std::size_t at) {
  std::uint32_t v = 0;
  for (std::size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

class Conn {
 public:
  explicit Conn(int fd) : fd_(fd) {}
  void send(char cmd, const std::string& data = {}) {
    std::string p;
    put32(p, static_cast<std::uint32_t>(data.size() + 1));
    p.push_back(cmd);
    p += data;
    out_ += p;
  }
  void flush() {
    std::size_t off = 0;
    while (off < out_.size()) {
      const ssize_t n = ::write(fd_, out_.data() + off, out_.size() - off);
      if (n <= 0) die(std::string("write: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
    out_.clear();
  }
  std::pair<char, std::string> read() {
    flush();
    for (;;) {
      if (buf_.size() >= 5) {
        const std::uint32_t n = get32(buf_, 0);
        if (n < 1 || n > (1u << 20)) die("bad packet length " + std::to_string(n));
        if (buf_.size() >= 4 + n) {
          std::pair<char, std::string> r{buf_[4], buf_.substr(5, n - 1)};
          buf_.erase(0, 4 + n);
          return r;
        }
      }
      char tmp[65536];
      const ssize_t n = ::read(fd_, tmp, sizeof tmp);
      if (n == 0) die("the milter closed the connection");
      if (n < 0) die(std::string("read: ") + std::strerror(errno));
      buf_.append(tmp, static_cast<std::size_t>(n));
    }
  }

 private:
  int fd_;
  std::string buf_, out_;
};

constexpr std::uint32_t kActionsAll = 0x1ff;     // ADDHDRS .. SETSYMLIST (Postfix 3.7 offers all)
constexpr std::uint32_t kProtocolAll = 0x1fffff;  // every step flag Postfix 3.7 offers

struct Step {
  char cmd;
  std::uint32_t no, nr;  // SMFIP_NO* and SMFIP_NR* bits of the step (0: none)
  int stage;             // SETSYMLIST stage, -1: no macros
};
// connect, helo, mail, rcpt, data, header, end of headers, body, end of message
constexpr Step kConnect{'C', 0x1, 0x1000, 0}, kHelo{'H', 0x2, 0x2000, 1}, kMail{'M', 0x4, 0x4000, 2},
    kRcpt{'R', 0x8, 0x8000, 3}, kData{'T', 0x200, 0x10000, 4}, kHeader{'L', 0x20, 0x80, -1},
    kEoh{'N', 0x40, 0x40000, 6}, kBody{'B', 0x10, 0x80000, -1}, kEom{'E', 0, 0, 5};

bool modification(char r) { return std::strchr("+-2ehimbqp", r) != nullptr && r != 0; }

struct Milter {
  explicit Milter(int fd) : c(fd) {}
  Conn c;
  std::uint32_t version = 0, protocol = 0;
  std::map<int, std::vector<std::string>> macros;
  std::map<std::string, std::string> values;
  int round_trips = 0;  // replies waited for in the last transaction
  bool per_session = true;
  bool connected = false;

  // One step: macros, command, replies (empty when skipped or waived).
  std::vector<std::pair<char, std::string>> step(const Step& s, const std::string& data) {
    if (s.no != 0 && (protocol & s.no)) return {};
    if (s.stage >= 0 && macros.count(s.stage)) {
      std::string d(1, s.cmd);
      for (const auto& m : macros[s.stage]) {
        d += m;
        d.push_back('\0');
        auto it = values.find(m);
        d += it == values.end() ? std::string() : it->second;
        d.push_back('\0');
      }
      c.send('D', d);
    }
    c.send(s.cmd, data);
    if (s.nr != 0 && (protocol & s.nr)) return {};
    ++round_trips;
    std::vector<std::pair<char, std::string>> out;
    for (;;) {
      auto r = c.read();
      if (r.first == 'p') continue;  // progress
      out.push_back(r);
      if (!modification(r.first)) return out;
    }
  }

  std::vector<std::pair<char, std::string>> transaction(const std::string& sender,
                                                        const std::string& rcpt) {
    using namespace std::string_literals;
    round_trips = 0;  // what one transaction costs in this mode
    if (per_session || !connected) {
      step(kConnect, "localhost\0"s + "4"s + "\x00\x19"s + values["{client_addr}"] + "\0"s);
      step(kHelo, "bench.example\0"s);
      connected = true;
      if (!per_session) round_trips = 0;  // connect and helo happen once in this mode
    }
    auto r = step(kMail, "<" + sender + ">\0"s);
    if (!r.empty() && r.back().first != 'c') die("MAIL not continued: " + std::string(1, r.back().first));
    r = step(kRcpt, "<" + rcpt + ">\0"s);
    if (!r.empty() && r.back().first != 'c') die("RCPT not continued: " + std::string(1, r.back().first));
    step(kData, "");
    step(kHeader, "Subject\0bench\0"s);
    step(kEoh, "");
    step(kBody, "body\r\n");
    auto eom = step(kEom, "");
    if (eom.empty() || (eom.back().first != 'c' && eom.back().first != 'a'))
      die("end of message not continued/accepted");
    if (per_session) c.send('K');  // QUIT_NC: the next transaction starts from connect
    c.flush();
    return eom;
  }
};

double pct(std::vector<double> xs, double p) {
  std::sort(xs.begin(), xs.end());
  auto i = static_cast<std::size_t>(std::max(0.0, std::ceil(p / 100.0 * static_cast<double>(xs.size())) - 1));
  return xs[std::min(i, xs.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) die("usage: bench-milter SOCKET_PATH TRANSACTIONS [session|message [CLIENT_ADDR]]");
  const std::string mode = argc > 3 ? argv[3] : "session";
  if (mode != "session" && mode != "message") die("mode must be session or message");
  const int n = std::atoi(argv[2]);
  if (n < 1) die("TRANSACTIONS must be positive");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  if (std::strlen(argv[1]) >= sizeof sa.sun_path) die("socket path too long");
  std::strcpy(sa.sun_path, argv[1]);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    die(std::string("connect ") + argv[1] + ": " + std::strerror(errno));

  Milter m(fd);
  m.per_session = mode == "session";
  m.values = {{"{client_addr}", argc > 4 ? argv[4] : "127.0.0.1"}, {"{daemon_name}", "bench"},
              {"i", "4ABCDEF"}, {"j", "bench.example"}, {"{auth_authen}", ""}};
  std::string opt;
  put32(opt, 6);
  put32(opt, kActionsAll);
  put32(opt, kProtocolAll);
  m.c.send('O', opt);
  auto [cmd, data] = m.c.read();
  if (cmd != 'O' || data.size() < 12) die("negotiation: unexpected reply");
  m.version = get32(data, 0);
  m.protocol = get32(data, 8);
  for (std::size_t at = 12; at + 4 <= data.size();) {
    const int stage = static_cast<int>(get32(data, at));
    const std::size_t end = data.find('\0', at + 4);
    std::string list = data.substr(at + 4, end == std::string::npos ? std::string::npos : end - at - 4);
    at = end == std::string::npos ? data.size() : end + 1;
    std::vector<std::string> names;
    for (std::size_t p = 0; p < list.size();) {
      const std::size_t q = list.find(' ', p);
      std::string name = list.substr(p, q == std::string::npos ? std::string::npos : q - p);
      if (!name.empty()) names.push_back(name);
      p = q == std::string::npos ? list.size() : q + 1;
    }
    m.macros[stage] = names;
  }

  const std::string sender = "homer@example.com", rcpt = "bart@elsewhere.example";
  auto eom = m.transaction(sender, rcpt);  // warm-up, and the check that it signs
  bool signed_ = false;
  for (const auto& [r, d] : eom)
    if (r == 'e' && d.find("prvs=") != std::string::npos) signed_ = true;
  if (!signed_) die("the milter did not send CHGFROM with a prvs tag for " + sender);
  const int rtt = m.round_trips;

  using clock = std::chrono::steady_clock;
  std::vector<double> xs;
  xs.reserve(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) {
    const auto t0 = clock::now();
    m.transaction(sender, rcpt);
    xs.push_back(std::chrono::duration<double, std::micro>(clock::now() - t0).count());
  }
  m.c.send('Q');
  m.c.flush();
  ::close(fd);

  // The floor: the same number of round trips per transaction over a bare socketpair.
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) die("socketpair");
  const pid_t echo = ::fork();  // a process of its own, as the milter is
  if (echo < 0) die("fork");
  if (echo == 0) {
    ::close(sv[0]);
    char buf[64];
    while (::read(sv[1], buf, sizeof buf) > 0)
      if (::write(sv[1], "c", 1) != 1) break;
    ::_exit(0);
  }
  ::close(sv[1]);
  std::vector<double> fl;
  fl.reserve(static_cast<std::size_t>(n));
  char b = 0;
  for (int i = 0; i < n; ++i) {
    const auto t0 = clock::now();
    for (int k = 0; k < rtt; ++k)
      if (::write(sv[0], "xxxxxxxx", 8) != 8 || ::read(sv[0], &b, 1) != 1) die("socketpair echo");
    fl.push_back(std::chrono::duration<double, std::micro>(clock::now() - t0).count());
  }
  ::close(sv[0]);
  ::waitpid(echo, nullptr, 0);

  std::string ms;
  for (const auto& [stage, names] : m.macros) {
    if (!ms.empty()) ms += ";";
    ms += std::to_string(stage) + ":";
    for (std::size_t i = 0; i < names.size(); ++i) ms += (i ? "," : "") + names[i];
  }
  std::printf("mode %s p50 %.1f p99 %.1f floor_p50 %.1f floor_p99 %.1f n %d version %u protocol 0x%x rtt %d macros %s\n",
              mode.c_str(), pct(xs, 50), pct(xs, 99), pct(fl, 50), pct(fl, 99), n, m.version, m.protocol, rtt,
              ms.empty() ? "-" : ms.c_str());
  return 0;
}
