// Fuzz target: whole relay sessions. The input is the byte stream of an SMTP client; a real
// batv::relay::Session (outbound or inbound role) serves it over a loopback TCP connection and
// relays to an in-process scripted next hop on another loopback connection, all on one
// io_context that runs until every coroutine has finished.
//
// Input layout (missing header bytes count as 0):
//   byte 0  listener and policy   bit 0: inbound role (which opens the next hop at the first
//                                         MAIL, upstream_connect = "mail", its default)
//                                  bits 1-2: forward_client none / xclient / proxy-v1 / proxy-v2
//                                  bit 3: STARTTLS offered to the client (in-memory certificate)
//                                  bit 4: outbound: AUTH needed before MAIL (allow_authenticated);
//                                         inbound: client in accept_untagged_from, and with
//                                         bit 3 require_tls
//                                  bits 5-6: inbound: mode enforce / monitor / off / enforce with
//                                         bad_signature = reject and MAILER-DAEMON bounces;
//                                         outbound: bit 5 lowercase-local hash, bit 6 VRFY disabled
//                                  bit 7: smallest limits (512-octet lines, 3 errors, ...)
//   byte 1  next hop's EHLO       bit 0 PIPELINING, 1 CHUNKING, 2 8BITMIME + SMTPUTF8,
//                                  3 DSN + ENHANCEDSTATUSCODES, 4 AUTH PLAIN LOGIN,
//                                  5 XCLIENT ADDR PORT HELO PROTO, 6 SIZE 70000, 7 EHLO refused
//   byte 2  one fault             low 4 bits: what (see Fault), high 4 bits: at which next-hop
//                                  reply (0 = the greeting)
//   byte 3  client write pattern  0: everything in one write; 1: one line per write; n: n bytes
//   rest    the client's bytes. "prvs=TAG=local@domain" becomes a freshly signed tag of
//           local@domain and "prvs=OLD=local@domain" an expired one, so seeds stay valid.
//
// Invariants (each violation aborts, so libFuzzer reports it):
//  - the session ends, and so does every next-hop connection (the relay closes what it opens):
//    no hang, bounded by kRunCap; no exception escapes Session::run (end reason io_error), every
//    end has a reason, sessions_current returns to its value;
//  - the client receives only well-formed replies: CRLF-terminated lines "ddd" SP/"-" text with
//    ddd 2xx-5xx, printable ASCII, the same code throughout a multi-line reply, bounded length;
//  - a message is acknowledged to the client with 2xx only when the next hop accepted it: every
//    "queued as FUZZQ<n>" the client sees was issued once by the next hop for a complete message,
//    each exactly once, and the relay's accepted-message count equals the number seen;
//  - the next hop receives only valid SMTP from the relay: CRLF-terminated command lines without
//    NUL or stray CR/LF within the line-length limit; known verbs; syntactically valid MAIL and RCPT
//    paths; no nested MAIL, no RCPT without a MAIL, no DATA/BDAT without an accepted
//    recipient, BDAT only when CHUNKING was offered, AUTH only when offered; at most
//    limits.recipients_per_message recipients; a DATA body with no bare CR or LF (no smuggling)
//    within limits.message_size; well-formed PROXY headers and XCLIENT attributes;
//  - inbound (connecting at MAIL) opens no next-hop connection for a client stream without "MAIL";
//  - outbound never double-tags (a MAIL FROM carrying our valid tag has a signable original);
//    inbound never passes one of our valid or expired tags on to the next hop.
//
// Triage: FUZZ_SESSION_TRACE=1 build-fuzz/bin/fuzz_session INPUT prints what the client received.
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/prvs.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/nexthop_caps.hpp"
#include "relay/policy.hpp"
#include "relay/session.hpp"
#include "relay/smtp/command.hpp"
#include "tests/session_fixture.hpp"

namespace {

using namespace batv;
using relay::asio::awaitable;
namespace asio = relay::asio;
using tcp = asio::ip::tcp;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr auto kRunCap = std::chrono::seconds(20);  // far above a normal run (milliseconds)
constexpr const char* kHostname = test::kSessionHostname;

[[noreturn]] void fail(const std::string& why) {
  std::fprintf(stderr, "fuzz_session: invariant violated: %s\n", why.c_str());
  std::fflush(stderr);
  std::abort();
}

// Any exception in a harness coroutine is a harness failure, never silently dropped.
void rethrow(std::exception_ptr e) {
  if (!e) return;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    fail(std::string("harness coroutine threw: ") + x.what());
  }
}

bool printable(std::string_view s) {
  for (const char ch : s)
    if (ch < 0x20 || ch > 0x7e) return false;
  return true;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 32);
  return out;
}

// --- Setup ---------------------------------------------------------------------------------------

struct Setup {
  std::uint8_t listener = 0, caps = 0, fault = 0, writes = 0;
  bool inbound() const { return listener & 1; }
  int forward() const { return (listener >> 1) & 3; }
  bool client_tls() const { return listener & 8; }
  bool strict() const { return listener & 16; }
  int mode() const { return (listener >> 5) & 3; }
  bool tiny_limits() const { return listener & 128; }
  bool pipelining() const { return caps & 1; }
  bool chunking() const { return caps & 2; }
  bool utf8() const { return caps & 4; }
  bool dsn() const { return caps & 8; }
  bool auth() const { return caps & 16; }
  bool xclient() const { return caps & 32; }
  bool small_size() const { return caps & 64; }
  bool ehlo_refused() const { return caps & 128; }
};

enum class Fault {
  none, close_421, close_silently, temporary, permanent, garbage, mixed_codes, long_line, many_lines,
  wrong_class, byte_by_byte, reset, dirty_text, multi_line, reply_then_close, split_late
};
// Not among the faults: an unsolicited extra reply. It desynchronises any SMTP client, the relay
// included, which then relies on its reply timeouts (minutes), and a fuzz run cannot wait for them.

// The parts of the Runtime that depend on the listener byte; cached (at most 256).
std::shared_ptr<const relay::Runtime> runtime_for(std::uint8_t listener_byte, std::uint16_t upstream_port) {
  static std::map<std::uint8_t, std::shared_ptr<const relay::Runtime>> cache;
  static const auto server_tls = [] {
    try {
      return test::make_test_server_tls();
    } catch (const std::exception& e) {
      fail(e.what());
    }
  }();
  if (auto it = cache.find(listener_byte); it != cache.end()) return it->second;
  Setup s;
  s.listener = listener_byte;
  // Nothing in a run waits for a timer; the timeouts only bound a relay bug until kRunCap catches it.
  conf::Config cfg = test::session_config("fuzz", s.inbound() ? conf::Role::inbound : conf::Role::outbound,
                                          upstream_port, {"example.com", "example.org"}, std::chrono::seconds(60));
  cfg.timeouts.session = std::chrono::seconds(120);
  cfg.hash = !s.inbound() && (s.mode() & 1) ? conf::HashSetting::lowercase_local : conf::HashSetting::exact;
  cfg.signing.exempt_senders = {{"noreply", "example.com"}};
  cfg.signing.exempt_destinations = {{"", "partner.example"}};
  conf::Listener& l = cfg.listeners[0];
  l.forward_client = static_cast<conf::ForwardClient>(s.forward());
  l.allow_authenticated = !s.inbound() && s.strict();
  if (s.inbound()) {
    const int m = s.mode();
    cfg.inbound.mode = m == 1 ? conf::InboundMode::monitor : m == 2 ? conf::InboundMode::off : conf::InboundMode::enforce;
    if (m == 3) {
      cfg.inbound.bad_signature = conf::BadSignatureAction::reject;
      cfg.inbound.mailer_daemon_is_bounce = true;
      cfg.inbound.domain_mode = {{"example.org", conf::InboundMode::monitor}};
    }
    if (s.strict()) cfg.inbound.accept_untagged_from = {*conf::parse_cidr("127.0.0.0/8")};
  } else if (s.mode() & 2) {
    cfg.smtp.vrfy = conf::VrfyReply::disabled;
  }
  if (s.tiny_limits()) {
    cfg.limits.line_length = 512;
    cfg.limits.reply_line_length = 512;
    cfg.limits.reply_lines = 10;
    cfg.limits.recipients_per_message = 100;
    cfg.limits.message_size = 65536;
    cfg.limits.errors_per_session = 3;
    cfg.limits.commands_before_mail = 10;
    cfg.limits.invalid_recipients_per_session = 2;
  }
  if (s.client_tls()) l.require_tls = s.strict() && s.inbound();

  std::vector<crypto::KeyMaterial> keys;
  keys.push_back({1, true, crypto::Secret(std::string_view("fuzz-session-signing-key"))});
  keys.push_back({2, false, crypto::Secret(std::string_view("fuzz-session-old-key"))});
  std::shared_ptr<const relay::Runtime> rt;
  try {
    rt = test::session_runtime(std::move(cfg), std::move(keys), s.client_tls() ? server_tls : nullptr);
  } catch (const std::exception& e) {
    fail(e.what());
  }
  cache.emplace(listener_byte, rt);
  return rt;
}

// "prvs=TAG=local@domain" / "prvs=OLD=local@domain" in the client stream become real tags.
std::string expand_tags(std::string_view in, const relay::Runtime& rt) {
  std::string out;
  std::size_t pos = 0;
  const std::int64_t now = rt.clock.now();  // the clock the session signs and checks with
  for (;;) {
    const std::size_t tag = in.find("prvs=", pos);
    const bool fresh = tag != std::string_view::npos && in.substr(tag, 9) == "prvs=TAG=";
    const bool old = tag != std::string_view::npos && in.substr(tag, 9) == "prvs=OLD=";
    if (tag == std::string_view::npos) break;
    out.append(in.substr(pos, tag - pos));
    pos = tag;
    if (!fresh && !old) {
      out.append("prvs=");
      pos += 5;
      continue;
    }
    const std::size_t start = tag + 9;
    std::size_t end = in.find_first_of("> \r\n", start);
    if (end == std::string_view::npos) end = in.size();
    const std::string_view address = in.substr(start, end - start);
    const auto s = crypto::sign(rt.keys.default_ring().keyring, address, old ? now - 40 * 86400 : now, rt.prvs);
    out.append(s.tagged ? std::string_view(*s.tagged) : address);
    pos = end;
  }
  out.append(in.substr(pos));
  return out;
}

// --- Observations shared by the coroutines of one run ----------------------------------------------

struct Run {
  Setup setup;
  const relay::Runtime* rt = nullptr;
  Fault fault = Fault::none;
  int fault_at = 0;
  int events = 0;          // next-hop replies so far (greeting included), over all connections
  bool fault_fired = false;
  int queued = 0;          // "queued as FUZZQ<n>" issued: n = 0..queued-1
  int connections = 0, open_connections = 0;
  bool session_done = false;
  std::string client_out;  // everything the client received
};

// --- The scripted next hop ---------------------------------------------------------------------

class Upstream {
 public:
  Upstream(tcp::socket s, Run& run) : sock_(std::move(s)), run_(run), s_(run.setup) {}

  awaitable<void> serve() {
    ++run_.open_connections;
    co_await serve_inner();
    boost::system::error_code ignored;
    sock_.close(ignored);
    --run_.open_connections;
  }

 private:
  const conf::Limits& limits() const { return run_.rt->config.limits; }

  awaitable<void> serve_inner() {
    if (s_.forward() >= 2) {
      const bool got = co_await read_proxy_header();
      if (!got) co_return;
    }
    const bool greeted = co_await reply("220 next.hop ESMTP fuzz\r\n");
    if (!greeted) co_return;
    bool after_xclient = false;
    std::string line;
    for (;;) {
      const bool got = co_await read_line(line);
      if (!got) break;
      check_command_line(line);
      const std::string_view cmd(line.data(), line.size() - 2);
      const std::string_view verb = cmd.substr(0, cmd.find(' '));
      const std::string v = upper(verb);
      const std::string_view args = cmd.size() > verb.size() ? cmd.substr(verb.size() + 1) : std::string_view();
      bool ok = true;
      if (v == "EHLO" || v == "HELO") {
        if (!after_xclient && args != kHostname) fail("EHLO/HELO to the next hop with a name not ours: " + std::string(args));
        if (after_xclient && (args.empty() || args.size() > 255 || !printable(args) || args.find(' ') != std::string_view::npos))
          fail("EHLO after XCLIENT with a bad client name");
        in_tx_ = mail_refused_ = false;
        // Named, not a temporary inside co_await (g++ 12 destroys such a temporary twice).
        const std::string answer = v == "HELO"                                     ? "250 next.hop\r\n"
                                   : s_.ehlo_refused() && !after_xclient ? "500 5.5.1 EHLO not here\r\n"
                                                                          : ehlo_reply();
        ok = co_await reply(answer);
        ehlo_seen_ = true;
      } else if (v == "XCLIENT") {
        if (!offered_xclient()) fail("XCLIENT sent to a next hop that did not offer it");
        check_xclient(args);
        after_xclient = true;
        ok = co_await reply("220 next.hop ESMTP fuzz after XCLIENT\r\n");
      } else if (v == "MAIL") {
        ok = co_await mail(args);
      } else if (v == "RCPT") {
        ok = co_await rcpt(args);
      } else if (v == "DATA") {
        ok = co_await data(args);
      } else if (v == "BDAT") {
        ok = co_await bdat(args);
      } else if (v == "RSET") {
        in_tx_ = mail_refused_ = false;
        ok = co_await reply("250 2.0.0 reset\r\n");
      } else if (v == "NOOP") {
        ok = co_await reply("250 2.0.0 noop\r\n");
      } else if (v == "QUIT") {
        co_await reply("221 2.0.0 bye\r\n");
        co_return;
      } else if (v == "AUTH") {
        ok = co_await auth(args);
      } else {
        fail("unexpected command to the next hop: " + std::string(v));
      }
      if (!ok) co_return;
    }
  }

  bool offered_xclient() const { return s_.xclient() && !s_.ehlo_refused(); }
  bool offered_chunking() const { return s_.chunking() && !s_.ehlo_refused(); }
  bool offered_auth() const { return s_.auth() && !s_.ehlo_refused(); }

  std::string ehlo_reply() const {
    std::string r = "250-next.hop hello\r\n";
    if (s_.pipelining()) r += "250-PIPELINING\r\n";
    if (s_.chunking()) r += "250-CHUNKING\r\n";
    if (s_.utf8()) r += "250-8BITMIME\r\n250-SMTPUTF8\r\n";
    if (s_.dsn()) r += "250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n";
    if (s_.auth()) r += "250-AUTH PLAIN LOGIN\r\n";
    if (s_.xclient()) r += "250-XCLIENT ADDR PORT HELO PROTO\r\n";
    r += s_.small_size() ? "250 SIZE 70000\r\n" : "250 SIZE\r\n";
    return r;
  }

  // The relay's own commands: CRLF-terminated, no NUL, no CR or LF inside, bounded.
  void check_command_line(const std::string& line) const {
    if (line.size() < 2 || line.compare(line.size() - 2, 2, "\r\n") != 0) fail("command line to the next hop without CRLF");
    const std::string_view body(line.data(), line.size() - 2);
    if (body.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos)
      fail("NUL, CR or LF inside a command line to the next hop");
    if (body.size() > static_cast<std::size_t>(limits().line_length) + 64) fail("over-long command line to the next hop");
  }

  awaitable<bool> read_proxy_header() {
    if (s_.forward() == 2) {
      std::string line;
      const bool got = co_await read_line(line);
      if (!got) co_return false;
      // "PROXY TCP4 127.0.0.1 127.0.0.1 sport dport\r\n"
      if (!line.starts_with("PROXY TCP4 127.0.0.1 127.0.0.1 ") || !line.ends_with("\r\n")) fail("bad PROXY v1 header: " + line);
      co_return true;
    }
    std::string head;  // signature, version/command, family, length 12, then the addresses
    const bool got = co_await read_bytes(28, head);
    if (!got) co_return false;
    static constexpr char sig[] = "\r\n\r\n\0\r\nQUIT\n";
    if (head.compare(0, 12, std::string(sig, 12)) != 0 || head[12] != 0x21 || head[13] != 0x11 || head[14] != 0 ||
        head[15] != 12)
      fail("bad PROXY v2 header");
    const std::string addrs = head.substr(16);
    if (addrs.compare(0, 8, std::string("\x7f\0\0\x01\x7f\0\0\x01", 8)) != 0) fail("PROXY v2 addresses are not the loopback client");
    co_return true;
  }

  void check_xclient(std::string_view args) const {
    static const std::set<std::string_view> offered{"ADDR", "PORT", "HELO", "PROTO"};
    std::size_t pos = 0;
    while (pos < args.size()) {
      std::size_t end = args.find(' ', pos);
      if (end == std::string_view::npos) end = args.size();
      const std::string_view attr = args.substr(pos, end - pos);
      const std::size_t eq = attr.find('=');
      if (eq == std::string_view::npos || !offered.count(attr.substr(0, eq)) ||
          !relay::smtp::decode_xtext(attr.substr(eq + 1)))
        fail("bad XCLIENT attribute: " + std::string(attr));
      pos = end + 1;
    }
  }

  awaitable<bool> mail(std::string_view args) {
    const auto p = relay::smtp::parse_mail_from(args);
    if (!p.ok()) fail("invalid MAIL FROM sent to the next hop: " + std::string(args));
    if (in_tx_) fail("nested MAIL sent to the next hop");
    if (!ehlo_seen_) fail("MAIL before EHLO/HELO to the next hop");
    const std::string& from = p.path->address;
    if (!s_.inbound()) {
      const auto v = crypto::verify(run_.rt->keys.default_ring().keyring, from, run_.rt->clock.now(), run_.rt->prvs);
      if (v.verdict == crypto::Verdict::valid && crypto::check_signable(v.original))
        fail("outbound sent a tag on an address that must not be signed: " + from);
    }
    const auto r = co_await respond("250 2.1.0 sender ok\r\n");
    in_tx_ = r.first == '2';
    mail_refused_ = !in_tx_;
    rcpts_ = accepted_rcpts_ = 0;
    used_bdat_ = false;
    co_return r.second;
  }

  awaitable<bool> rcpt(std::string_view args) {
    const auto p = relay::smtp::parse_rcpt_to(args);
    if (!p.ok()) fail("invalid RCPT TO sent to the next hop: " + std::string(args));
    // After a refused MAIL, RCPTs still come (pipelined with it, or sent to get the reply the client
    // is owed); without any MAIL since the last transaction ended, an RCPT is a relay bug.
    if (!in_tx_ && !mail_refused_) fail("RCPT sent to the next hop without a MAIL");
    if (++rcpts_ > limits().recipients_per_message) fail("more RCPTs than recipients_per_message to the next hop");
    const std::string& to = p.path->address;
    if (s_.inbound()) {
      const auto at = to.rfind('@');
      const auto v = crypto::verify(run_.rt->keys.default_ring().keyring, to, run_.rt->clock.now(), run_.rt->prvs);
      if (at != std::string::npos && relay::domain_in(run_.rt->config.domains.verify, to.substr(at + 1)) &&
          (v.verdict == crypto::Verdict::valid || v.verdict == crypto::Verdict::expired))
        fail("inbound passed one of our tags on instead of stripping it: " + to);
    }
    const std::string_view answer = to.starts_with("reject") ? "550 5.1.1 no such user\r\n" : "250 2.1.5 recipient ok\r\n";
    const auto r = co_await respond(answer);
    if (r.first == '2') ++accepted_rcpts_;
    co_return r.second;
  }

  void check_message_start(bool bdat) const {
    if (!in_tx_ || accepted_rcpts_ == 0) fail(std::string(bdat ? "BDAT" : "DATA") + " sent without an accepted recipient");
  }

  awaitable<bool> data(std::string_view args) {
    if (!args.empty()) fail("DATA with arguments");
    check_message_start(false);
    if (used_bdat_) fail("DATA after BDAT in one transaction");
    const auto r = co_await respond("354 go ahead\r\n");
    if (!r.second) co_return false;
    if (r.first != '3') co_return true;  // refused (fault): no body follows
    std::uint64_t size = 0;
    std::string line;
    for (;;) {
      const bool got = co_await read_line(line);
      if (!got) co_return false;  // the relay gave up on the message: fine
      const std::string_view body(line.data(), line.size() - 2);
      if (!line.ends_with("\r\n") || body.find_first_of("\r\n") != std::string_view::npos)
        fail("bare CR or LF in a DATA body sent to the next hop (smuggling)");
      size += line.size();
      if (size > static_cast<std::uint64_t>(limits().message_size) + 5 + 64)
        fail("DATA body over limits.message_size sent to the next hop");
      if (line == ".\r\n") break;
    }
    in_tx_ = mail_refused_ = false;  // the end of data ends the transaction, whatever the reply
    const bool ok = co_await end_of_message();
    co_return ok;
  }

  awaitable<bool> bdat(std::string_view args) {
    if (!offered_chunking()) fail("BDAT sent to a next hop that did not offer CHUNKING");
    const auto b = relay::smtp::parse_bdat(args);
    if (!b) fail("invalid BDAT arguments to the next hop: " + std::string(args));
    check_message_start(true);
    if (b->size > static_cast<std::uint64_t>(limits().message_size) + 64) fail("BDAT chunk over limits.message_size");
    used_bdat_ = true;
    std::string chunk;
    const bool got = co_await read_bytes(static_cast<std::size_t>(b->size), chunk);
    if (!got) co_return false;
    if (b->last) {
      in_tx_ = mail_refused_ = false;
      const bool ok = co_await end_of_message();
    co_return ok;
    }
    co_return co_await reply("250 2.0.0 chunk ok\r\n");
  }

  awaitable<bool> end_of_message() {
    const std::string marker = "250 2.0.0 Ok: queued as FUZZQ" + std::to_string(run_.queued) + "\r\n";
    const auto r = co_await respond(marker);
    co_return r.second;
  }

  awaitable<bool> auth(std::string_view args) {
    if (!offered_auth()) fail("AUTH sent to a next hop that did not offer it");
    const std::string mech = upper(args.substr(0, args.find(' ')));
    const bool initial = args.find(' ') != std::string_view::npos;
    if (mech != "PLAIN" && mech != "LOGIN") co_return co_await reply("504 5.5.4 unknown mechanism\r\n");
    int rounds = mech == "LOGIN" ? 2 : 1;
    if (initial) --rounds;
    std::string line;
    for (int i = 0; i < rounds; ++i) {
      const std::string_view challenge = i == 0 && mech == "LOGIN" ? "334 VXNlcm5hbWU6\r\n" : "334 \r\n";
      const auto r = co_await respond(challenge);
      if (!r.second) co_return false;
      if (r.first != '3') co_return true;
      const bool got = co_await read_line(line);
      if (!got) co_return false;
      check_command_line(line);
      if (line == "*\r\n") co_return co_await reply("501 5.7.0 cancelled\r\n");
    }
    co_return co_await reply("235 2.7.0 authenticated\r\n");
  }

  // Sends `normal`, or the fault when this is the chosen reply. Returns the first digit of what
  // was sent as a success code ('2', '3', or '4'/'5'/'x' for anything else) and whether the
  // connection is still usable.
  awaitable<std::pair<char, bool>> respond(std::string_view normal) {
    const int event = run_.events++;
    const bool eod = normal.find("queued as FUZZQ") != std::string_view::npos;
    if (run_.fault_fired || event != run_.fault_at || run_.fault == Fault::none) {
      if (eod) ++run_.queued;
      {
          const bool sent = co_await write(normal);
          co_return std::pair(normal[0], sent);
        }
    }
    run_.fault_fired = true;
    const std::string code(normal.substr(0, 3));
    std::string text;  // what the fault sends, built before the co_await that sends it
    switch (run_.fault) {
      case Fault::none: break;
      case Fault::close_421:
        co_await write("421 4.3.0 next hop closing\r\n");
        co_return std::pair('4', false);
      case Fault::close_silently: co_return std::pair('x', false);
      case Fault::temporary: {
          const bool sent = co_await write("451 4.3.0 try later\r\n");
          co_return std::pair('4', sent);
        }
      case Fault::permanent: {
          const bool sent = co_await write("554 5.0.0 no\r\n");
          co_return std::pair('5', sent);
        }
      case Fault::garbage: co_await write("hello there\r\n"); co_return std::pair('x', true);
      case Fault::mixed_codes:
        text = code + "-one\r\n451 two\r\n";
        co_await write(text);
        co_return std::pair('x', true);
      case Fault::long_line:
        text = code + " " + std::string(static_cast<std::size_t>(limits().reply_line_length) + 10, 'x') + "\r\n";
        co_await write(text);
        co_return std::pair('x', true);
      case Fault::many_lines:
        for (std::int64_t i = 0; i <= limits().reply_lines; ++i) text += code + "-line\r\n";
        text += code + " last\r\n";
        co_await write(text);
        co_return std::pair('x', true);
      case Fault::wrong_class: {
        // 354 where a 2xx belongs, 250 where 354 or 334 belongs: never a success for the relay.
        const std::string_view wrong = normal[0] == '2' ? "354 surprise\r\n" : "250 2.0.0 surprise\r\n";
        {
          const bool sent = co_await write(wrong);
          co_return std::pair('x', sent);
        }
      }
      case Fault::byte_by_byte: {
        if (eod) ++run_.queued;
        bool ok = true;
        for (std::size_t i = 0; i < normal.size() && ok; ++i) {
          ok = co_await write(normal.substr(i, 1));
          co_await asio::post(sock_.get_executor(), asio::use_awaitable);
        }
        co_return std::pair(normal[0], ok);
      }
      case Fault::reset: {
        boost::system::error_code ignored;
        sock_.set_option(asio::socket_base::linger(true, 0), ignored);
        sock_.close(ignored);
        co_return std::pair('x', false);
      }
      case Fault::dirty_text:  // control and 8-bit bytes in the (last) line's text
        if (eod) ++run_.queued;
        text = std::string(normal.substr(0, normal.size() - 2)) + "\x01\x7f\x80 \xff\r\n";
        {
          const bool sent = co_await write(text);
          co_return std::pair(normal[0], sent);
        }
      case Fault::multi_line:
        if (eod) ++run_.queued;
        text = code + "-first line\r\n" + code + "-\r\n" + std::string(normal);
        {
          const bool sent = co_await write(text);
          co_return std::pair(normal[0], sent);
        }
      case Fault::reply_then_close:  // a next hop that dies right after answering
        if (eod) ++run_.queued;
        co_await write(normal);
        co_return std::pair(normal[0], false);
      case Fault::split_late: {
        if (eod) ++run_.queued;
        // Half a reply, a pause of a few loop turns, then the rest.
        const std::size_t half = normal.size() / 2;
        bool ok = co_await write(normal.substr(0, half));
        for (int i = 0; i < 4; ++i) co_await asio::post(sock_.get_executor(), asio::use_awaitable);
        if (ok) ok = co_await write(normal.substr(half));
        co_return std::pair(normal[0], ok);
      }
    }
    co_return std::pair('x', false);
  }

  awaitable<bool> reply(std::string_view normal) {
    const auto r = co_await respond(normal);
    co_return r.second;
  }

  awaitable<bool> write(std::string_view text) {
    auto [ec, n] = co_await asio::async_write(sock_, asio::buffer(text), use_tuple);
    co_return !ec;
  }

  awaitable<bool> read_line(std::string& line) {
    constexpr std::size_t max_line = 1 << 20;
    for (;;) {
      const std::size_t nl = buf_.find('\n');
      if (nl != std::string::npos) {
        line = buf_.substr(0, nl + 1);
        buf_.erase(0, nl + 1);
        co_return true;
      }
      if (buf_.size() > max_line) fail("over-long line to the next hop");
      const bool got = co_await fill();
      if (!got) co_return false;
    }
  }

  awaitable<bool> read_bytes(std::size_t n, std::string& out) {
    while (buf_.size() < n) {
      const bool got = co_await fill();
      if (!got) co_return false;
    }
    out = buf_.substr(0, n);
    buf_.erase(0, n);
    co_return true;
  }

  awaitable<bool> fill() {
    char tmp[16384];
    auto [ec, n] = co_await sock_.async_read_some(asio::buffer(tmp), use_tuple);
    if (ec) co_return false;
    buf_.append(tmp, n);
    co_return true;
  }

  tcp::socket sock_;
  Run& run_;
  const Setup& s_;
  std::string buf_;
  bool ehlo_seen_ = false, in_tx_ = false, mail_refused_ = false, used_bdat_ = false;
  std::int64_t rcpts_ = 0;
  int accepted_rcpts_ = 0;
};

// --- The client --------------------------------------------------------------------------------

awaitable<void> client_writer(tcp::socket& sock, const std::string& stream, std::uint8_t pattern) {
  std::size_t pos = 0;
  while (pos < stream.size()) {
    std::size_t n = stream.size() - pos;
    if (pattern == 1) {
      const std::size_t nl = stream.find('\n', pos);
      if (nl != std::string::npos) n = nl + 1 - pos;
    } else if (pattern > 1) {
      n = std::min<std::size_t>(n, pattern);
    }
    auto [ec, written] = co_await asio::async_write(sock, asio::buffer(stream.data() + pos, n), use_tuple);
    if (ec) co_return;  // the session closed the connection: what is left is never read
    pos += written;
    // Let the session run between writes so it sees them as separate reads.
    for (int i = 0; i < 3 && pattern != 0; ++i) co_await asio::post(sock.get_executor(), asio::use_awaitable);
  }
  boost::system::error_code ignored;
  sock.shutdown(tcp::socket::shutdown_send, ignored);
}

awaitable<void> client_reader(tcp::socket& sock, std::string& out) {
  char tmp[16384];
  for (;;) {
    auto [ec, n] = co_await sock.async_read_some(asio::buffer(tmp), use_tuple);
    if (ec) co_return;
    out.append(tmp, n);
    if (out.size() > (64u << 20)) fail("client received over 64 MiB of replies");
  }
}

void check_client_output(const Run& run) {
  const std::string& out = run.client_out;
  const std::size_t max_line = static_cast<std::size_t>(std::max<std::int64_t>(run.rt->config.limits.reply_line_length, 512));
  std::set<int> seen;
  std::size_t pos = 0;
  bool in_multi = false;
  std::string code;
  while (pos < out.size()) {
    const std::size_t eol = out.find("\r\n", pos);
    if (eol == std::string::npos) fail("client output does not end with CRLF");
    const std::string_view line(out.data() + pos, eol - pos);
    pos = eol + 2;
    if (line.size() < 4 || line[0] < '2' || line[0] > '5' || line[1] < '0' || line[1] > '9' || line[2] < '0' ||
        line[2] > '9' || (line[3] != ' ' && line[3] != '-'))
      fail("malformed reply line to the client: " + std::string(line.substr(0, 80)));
    if (!printable(line) || line.size() + 2 > max_line) fail("unprintable or over-long reply line to the client");
    if (in_multi && line.substr(0, 3) != code) fail("reply code changes inside a multi-line reply to the client");
    code = std::string(line.substr(0, 3));
    in_multi = line[3] == '-';
    const std::size_t m = line.find("queued as FUZZQ");
    if (m != std::string_view::npos) {
      if (line[0] != '2') fail("a queued marker on a non-2xx reply");
      const int n = std::atoi(std::string(line.substr(m + 15)).c_str());
      if (n < 0 || n >= run.queued || !seen.insert(n).second)
        fail("the client saw a message acknowledgement the next hop never gave (or twice)");
    }
  }
  if (in_multi) fail("client output ends inside a multi-line reply");
  // Every acknowledgement the next hop gave reaches the client.
  if (static_cast<int>(seen.size()) != run.queued)
    fail("the next hop accepted a message the client was not told about");
}

// --- Metrics ------------------------------------------------------------------------------------

std::int64_t metric(const std::string& text, const std::string& sample) {
  const std::size_t at = text.find("\n" + sample + " ");
  if (at == std::string::npos) fail("metric not found: " + sample);
  return std::atoll(text.c_str() + at + sample.size() + 2);
}

struct Counters {
  std::int64_t accepted = 0, io_error = 0, other = 0, current = 0;
};

Counters counters(std::string_view role) {
  const std::string text = relay::metrics().render_prometheus(0);
  const std::string r = "role=\"" + std::string(role) + "\"";
  Counters c;
  c.accepted = metric(text, "batv_messages_total{" + r + ",outcome=\"accepted\"}");
  c.io_error = metric(text, "batv_session_end_total{" + r + ",reason=\"io_error\"}");
  c.other = metric(text, "batv_session_end_total{" + r + ",reason=\"other\"}");
  c.current = metric(text, "batv_sessions_current{" + r + "}");
  return c;
}

// --- One run -------------------------------------------------------------------------------------

struct Harness {
  asio::io_context io{1};
  tcp::acceptor listen{io};    // the relay's listener (we accept for it)
  tcp::acceptor upstream{io};  // the scripted next hop
  Harness() {
    const tcp::endpoint any(asio::ip::make_address("127.0.0.1"), 0);
    for (tcp::acceptor* a : {&listen, &upstream}) {
      a->open(any.protocol());
      a->set_option(tcp::acceptor::reuse_address(true));
      a->bind(any);
      a->listen();
    }
    relay::configure_logging(conf::Logging{conf::LogLevel::error, conf::LogTarget::stderr_, conf::SyslogFacility::mail});
  }
};

Harness& harness() {
  static Harness h;
  return h;
}

awaitable<void> accept_upstreams(Harness& h, Run& run) {
  for (;;) {
    auto [ec, sock] = co_await h.upstream.async_accept(use_tuple);
    if (ec || run.session_done) co_return;
    if (++run.connections > 64) fail("the relay opened over 64 next-hop connections for one session");
    boost::system::error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    auto up = std::make_shared<Upstream>(std::move(sock), run);
    asio::co_spawn(h.io, [up]() -> awaitable<void> { co_await up->serve(); }, rethrow);
  }
}

awaitable<void> start(Harness& h, Run& run, const std::string& stream, tcp::socket& client) {
  co_await client.async_connect(h.listen.local_endpoint(), asio::use_awaitable);
  tcp::socket accepted = co_await h.listen.async_accept(asio::use_awaitable);
  // No Nagle delays on loopback: each run should take milliseconds, not delayed-ACK rounds.
  client.set_option(tcp::no_delay(true));
  accepted.set_option(tcp::no_delay(true));
  relay::SessionContext ctx =
      test::session_context(std::shared_ptr<const relay::Runtime>(run.rt, [](const relay::Runtime*) {}), "fuzz", accepted);
  ctx.needs_auth = run.rt->config.listeners[0].allow_authenticated;
  auto session = std::make_shared<relay::Session>(std::move(accepted), std::move(ctx));
  asio::co_spawn(h.io, accept_upstreams(h, run), rethrow);
  asio::co_spawn(h.io, client_writer(client, stream, run.setup.writes), rethrow);
  asio::co_spawn(h.io, client_reader(client, run.client_out), rethrow);
  co_await session->run();
  run.session_done = true;
  boost::system::error_code ignored;
  h.upstream.cancel(ignored);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Harness& h = harness();
  Run run;
  std::array<std::uint8_t, 4> head{};
  for (std::size_t i = 0; i < head.size() && i < size; ++i) head[i] = data[i];
  run.setup = {head[0], head[1], head[2], head[3]};
  run.fault = static_cast<Fault>(head[2] & 15);
  run.fault_at = head[2] >> 4;
  const auto rt = runtime_for(head[0], h.upstream.local_endpoint().port());
  run.rt = rt.get();
  const std::size_t skip = std::min<std::size_t>(size, head.size());
  const std::string stream = expand_tags(std::string_view(reinterpret_cast<const char*>(data) + skip, size - skip), *rt);

  const std::string_view role = run.setup.inbound() ? "inbound" : "outbound";
  const Counters before = counters(role);
  // What an earlier input's next hop offered must not shape this input's EHLO: each inbound run
  // starts from a cache that says the next hop offers every extension, so that the next hop of
  // byte 1, reached at MAIL, may lack what the client was offered (451 4.3.3 paths).
  relay::NextHopCaps::global().clear();
  if (run.setup.inbound()) {
    relay::smtp::Capabilities all;
    all.pipelining = all.eightbitmime = all.smtputf8 = all.enhancedstatuscodes = all.dsn = all.chunking = true;
    all.size_advertised = true;
    all.size = 100000;
    relay::NextHopCaps::global().learn(relay::NextHopCaps::key_of(rt->config.listeners[0]), all,
                                       relay::NextHopCaps::Source::probe);
  }
  tcp::socket client(h.io);
  h.io.restart();
  asio::co_spawn(h.io, start(h, run, stream, client), rethrow);
  h.io.run_for(kRunCap);
  if (!h.io.stopped()) {
    fail(std::string("the run did not finish within the cap: session ") + (run.session_done ? "ended" : "still running") +
         ", " + std::to_string(run.open_connections) + " next-hop connection(s) still open");
  }
  // Connections the relay opened but that were never accepted (none expected) are dropped.
  h.upstream.non_blocking(true);
  for (;;) {
    boost::system::error_code ec;
    tcp::socket stale(h.io);
    h.upstream.accept(stale, ec);
    if (ec) break;
    fail("the relay connected to the next hop after its session ended");
  }
  h.upstream.non_blocking(false);

  if (std::getenv("FUZZ_SESSION_TRACE") != nullptr)  // for triage: what the client was told
    std::fprintf(stderr, "--- client received (%d message(s) queued by the next hop):\n%s", run.queued,
                 run.client_out.c_str());
  const Counters after = counters(role);
  if (run.setup.inbound() && run.connections > 0 && upper(stream).find("MAIL") == std::string::npos)
    fail("inbound opened a next-hop connection for a session that never sent MAIL");
  if (after.io_error != before.io_error) fail("an exception escaped Session::run (end reason io_error)");
  if (after.other != before.other) fail("a session ended without a reason");
  if (after.current != before.current) fail("sessions_current did not return to its value");
  check_client_output(run);
  const std::int64_t seen_accepted = after.accepted - before.accepted;
  int markers = 0;
  for (std::size_t p = 0; (p = run.client_out.find("queued as FUZZQ", p)) != std::string::npos; ++p) ++markers;
  if (seen_accepted != markers)
    fail("the relay counted " + std::to_string(seen_accepted) + " accepted message(s) but the client saw " +
         std::to_string(markers) + " next-hop acknowledgement(s)");
  return 0;
}
