// The dialogue tier: scripted SMTP dialogues, one data file each (tests/dialogue/*.dlg), run
// against a real batv::relay::Session over real loopback TCP connections, with the next hop
// scripted in-process, all on one io_context with a bounded run. Deterministic: the runtime's
// clock is fixed (prvs tags are the same on every run), every wait is on a socket or a signal,
// each bounded (kStepCap per step, kRunCap per dialogue: a hang fails the dialogue, never the run).
// What the dialogues pin is today's wire behaviour, byte for byte: the client's replies, the
// commands the next hop gets, and the session's end reason.
//
// One ctest per file (tests/CMakeLists.txt: dialogue.<file>, label unit); each dialogue of the
// file is a doctest SUBCASE. `batv_dialogue_tests --file=NAME.dlg` runs one file, without --file
// every file. BATV_DIALOGUE_TRACE=1 prints every step and the relay's log (info level) for triage.
//
// ---- File format ---------------------------------------------------------------------------------
// Blank lines and lines starting with '#' are ignored. A file holds one or more dialogues:
//
//   dialogue NAME            starts a dialogue (NAME: letters, digits, '_', '-')
//   key = value              header lines, before the first step (keys below)
//   STEP ...                 the script, run in order
//
// Steps ("text" is the rest of the line after the two-character tag and one space):
//   C: text      the client sends text + CRLF. Consecutive C:/C+ steps go out in ONE write (a
//                pipelining client); any other step in between splits the writes.
//   C+ text      the client sends text without CRLF; escapes \r \n \t \\ \xHH (BDAT chunks)
//   S: text      the next reply line the client receives is exactly text (CRLF-terminated)
//   S~ regex     ... matches the ECMAScript regex as a whole (hostname- or tag-dependent text)
//   >: text      the next command line the next hop receives (current connection) is exactly text
//   >~ regex     ... matches regex as a whole
//   >+ text      the next bytes the next hop receives are exactly text (escapes as C+): chunk data
//   U: text      the next hop writes text + CRLF: one reply line (a multi-line reply is several
//                U: lines, "250-..." then "250 ...", as on the wire)
//   hop: close   the next hop closes its current connection
//   hops: N      the relay has opened exactly N next-hop connections so far
//   stop         Session::stop() (what SIGTERM does after the grace period)
//   tls          the client's TLS handshake (after "S: 220 2.0.0 Ready to start TLS"); every
//                client step after it goes through TLS
//   eof          the client shuts down its sending side (the session reads end of stream)
//   closed       the relay closes the client connection: end of stream, no byte unread before it
//   end: NAME    the session has ended, with SessionEnd NAME (relay/session_end.hpp to_string):
//                exactly one batv_session_end_total{role,reason} sample grew, by one. Required
//                once in every dialogue.
// The next hop is the "current" connection: the latest one the relay opened; a >: step that finds
// it closed by the relay waits for the next one (a reconnect). Each connection
// is greeted and its EHLO answered by the runner itself (next_hop_greeting / next_hop_ehlo), so
// scripts start after the relay's "EHLO relay.test". After the script the runner checks that the
// client received nothing more than the S: steps read, and that every next-hop connection was
// closed by the relay with nothing unread (a command the script did not expect fails).
// In every text and regex, "prvs=TAG=local@domain" becomes the tag the runtime signs for
// local@domain today (the fixed clock, kNow), "prvs=OLD=local@domain" one signed 40 days ago
// (expired), "prvs=BAD=local@domain" today's tag with a wrong hash.
//
// Header keys (defaults in brackets); the runtime is built by tests/session_fixture.hpp, as for fuzz_session:
//   role                 outbound | inbound                       [outbound]
//   upstream_connect     connect | mail            [connect outbound, mail inbound, as the config]
//   next_hop             listening | refused                      [listening]
//   next_hop_greeting    the next hop's greeting line             [220 next.hop ESMTP test]
//   next_hop_ehlo        its EHLO keywords, comma-separated       [PIPELINING, SIZE 10485760,
//                                                                  ENHANCEDSTATUSCODES, CHUNKING]
//   cached_caps          upstream_connect = mail: what NextHopCaps knows before the session
//                        (comma-separated EHLO keywords, or "none": nothing learned) [next_hop_ehlo]
//   starttls             yes | no: a certificate, STARTTLS offered  [no; yes with require_tls]
//   require_tls          yes | no                                 [no]
//   needs_auth           yes | no: SessionContext::needs_auth     [no]
//   plaintext_auth_loopback  yes | no                             [yes]
//   admission            ok | denied | too_many | too_many_from_client   [ok]
//   inbound_mode         enforce | monitor | off                  [enforce]
//   bad_signature        strip | keep | reject                    [strip]
//   vrfy                 cannot_verify | disabled                 [cannot_verify]
//   errors_per_session, commands_before_mail, invalid_recipients, recipients_per_message,
//   message_size, line_length                                     [conf/limits.hpp defaults]
//   idle_timeout, command_timeout, data_timeout, session_timeout, upstream_reply_timeout
//                        seconds                                  [10; 1 is the smallest allowed]
//   step_cap             seconds a step may wait (the runner's own tests)        [5]
//   expect_failure       the runner's own tests (runner_selftest.dlg): the dialogue must FAIL,
//                        with this text in the failure message

// Domains: sign and verify example.com; signing key 1 "dialogue-signing-key"; hostname relay.test.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/ssl.hpp>

#include "crypto/prvs.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/nexthop_caps.hpp"
#include "relay/policy.hpp"
#include "relay/session.hpp"
#include "relay/session_end.hpp"
#include "tests/session_fixture.hpp"

namespace {

using namespace batv;
namespace asio = relay::asio;
using asio::awaitable;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

constexpr auto kStepCap = std::chrono::seconds(5);   // one step (default): far above any relay timeout used
constexpr auto kRunCap = std::chrono::seconds(30);   // one dialogue, cleanup included
constexpr std::int64_t kNow = 1700000000;            // the runtime's clock (tests/unit/fixtures.hpp T1)
constexpr const char* kHostname = test::kSessionHostname;
constexpr const char* kDefaultEhlo = "PIPELINING, SIZE 10485760, ENHANCEDSTATUSCODES, CHUNKING";

bool tracing() { return std::getenv("BATV_DIALOGUE_TRACE") != nullptr; }

// --- Dialogue files ------------------------------------------------------------------------------

enum class Kind {
  client_line, client_raw, expect_reply, expect_reply_re, hop_line, hop_line_re, hop_raw, hop_reply,
  hop_close, hops, stop, tls, eof, closed, end
};

struct Step {
  Kind kind;
  std::string text;
  int line = 0;
};

struct Dialogue {
  std::string file, name;
  int line = 0;
  std::map<std::string, std::string> header;
  std::vector<Step> steps;
};

std::string trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return std::string(s);
}

// \r \n \t \\ \xHH
std::string unescape(std::string_view s, const std::string& where) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      out += s[i];
      continue;
    }
    if (++i == s.size()) throw std::runtime_error(where + ": a lone backslash at the end");
    switch (s[i]) {
      case 'r': out += '\r'; break;
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case '\\': out += '\\'; break;
      case 'x': {
        if (i + 2 >= s.size()) throw std::runtime_error(where + ": short \\x escape");
        out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
        i += 2;
        break;
      }
      default: throw std::runtime_error(where + ": unknown escape \\" + std::string(1, s[i]));
    }
  }
  return out;
}

const std::vector<std::string>& header_keys() {
  static const std::vector<std::string> keys{
      "role", "upstream_connect", "next_hop", "next_hop_greeting", "next_hop_ehlo", "cached_caps", "starttls",
      "require_tls", "needs_auth", "plaintext_auth_loopback", "admission", "inbound_mode", "bad_signature", "vrfy",
      "errors_per_session", "commands_before_mail", "invalid_recipients", "recipients_per_message", "message_size",
      "line_length", "idle_timeout", "command_timeout", "data_timeout", "session_timeout", "upstream_reply_timeout",
      "expect_failure", "step_cap"};
  return keys;
}

std::vector<Dialogue> parse_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path.string() + ": cannot read");
  const std::string file = path.filename().string();
  std::vector<Dialogue> out;
  std::string raw;
  int n = 0;
  while (std::getline(in, raw)) {
    ++n;
    const std::string where = file + ":" + std::to_string(n);
    const std::string line = trim(raw);
    if (line.empty() || line[0] == '#') continue;
    if (line.rfind("dialogue ", 0) == 0) {
      Dialogue d;
      d.file = file;
      d.name = trim(line.substr(9));
      d.line = n;
      if (d.name.empty() || d.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
                                std::string::npos)
        throw std::runtime_error(where + ": bad dialogue name");
      for (const Dialogue& e : out)
        if (e.name == d.name) throw std::runtime_error(where + ": dialogue " + d.name + " twice");
      out.push_back(std::move(d));
      continue;
    }
    if (out.empty()) throw std::runtime_error(where + ": expected \"dialogue NAME\" first");
    Dialogue& d = out.back();
    // Step tags are two characters, then one space ("S: x"), or a bare word.
    const std::string tag = line.substr(0, 2);
    // The text is taken from the raw line after the tag and one space: trailing spaces count
    // (a reply "334 " ends in one), a trailing CR (CRLF file) does not.
    const std::size_t at = raw.find(tag);
    std::string text = raw.size() > at + 3 ? raw.substr(at + 3) : std::string();
    if (!text.empty() && text.back() == '\r') text.pop_back();
    const bool tagged = tag == "C:" || tag == "C+" || tag == "S:" || tag == "S~" || tag == ">:" || tag == ">~" ||
                        tag == ">+" || tag == "U:";
    if (tagged && line.size() > 2 && line[2] != ' ') throw std::runtime_error(where + ": a space must follow " + tag);
    auto add = [&](Kind k, std::string t) { d.steps.push_back({k, std::move(t), n}); };
    if (tag == "C:") add(Kind::client_line, text);
    else if (tag == "C+") add(Kind::client_raw, unescape(text, where));
    else if (tag == "S:") add(Kind::expect_reply, text);
    else if (tag == "S~") add(Kind::expect_reply_re, text);
    else if (tag == ">:") add(Kind::hop_line, text);
    else if (tag == ">~") add(Kind::hop_line_re, text);
    else if (tag == ">+") add(Kind::hop_raw, unescape(text, where));
    else if (tag == "U:") add(Kind::hop_reply, text);
    else if (line == "hop: close") add(Kind::hop_close, "");
    else if (line.rfind("hops: ", 0) == 0) add(Kind::hops, trim(line.substr(6)));
    else if (line == "stop") add(Kind::stop, "");
    else if (line == "eof") add(Kind::eof, "");
    else if (line == "tls") add(Kind::tls, "");
    else if (line == "closed") add(Kind::closed, "");
    else if (line.rfind("end: ", 0) == 0) add(Kind::end, trim(line.substr(5)));
    else if (const auto eq = line.find('='); eq != std::string::npos && d.steps.empty()) {
      const std::string key = trim(line.substr(0, eq));
      if (std::find(header_keys().begin(), header_keys().end(), key) == header_keys().end())
        throw std::runtime_error(where + ": unknown header key " + key);
      if (!d.header.emplace(key, trim(line.substr(eq + 1))).second)
        throw std::runtime_error(where + ": header key " + key + " twice");
    } else {
      throw std::runtime_error(where + ": not a step: " + line);
    }
  }
  for (const Dialogue& d : out) {
    const auto ends = std::count_if(d.steps.begin(), d.steps.end(), [](const Step& s) { return s.kind == Kind::end; });
    if (ends != 1) throw std::runtime_error(d.file + ":" + std::to_string(d.line) + ": dialogue " + d.name +
                                            " needs exactly one \"end: REASON\" step");
    for (const Step& s : d.steps) {
      if (s.kind != Kind::end) continue;
      bool known = false;
      for (std::size_t i = 0; i < relay::session_end_count; ++i)
        known = known || relay::to_string(static_cast<relay::SessionEnd>(i)) == s.text;
      if (!known) throw std::runtime_error(d.file + ":" + std::to_string(s.line) + ": no SessionEnd " + s.text);
    }
  }
  if (out.empty()) throw std::runtime_error(file + ": no dialogue");
  return out;
}

// --- The runtime of one dialogue -------------------------------------------------------------------

std::string get(const Dialogue& d, const std::string& key, const std::string& def) {
  const auto it = d.header.find(key);
  return it == d.header.end() ? def : it->second;
}

bool yes(const Dialogue& d, const std::string& key, bool def) {
  const std::string v = get(d, key, def ? "yes" : "no");
  if (v != "yes" && v != "no") throw std::runtime_error(d.name + ": " + key + " must be yes or no");
  return v == "yes";
}

std::int64_t number(const Dialogue& d, const std::string& key, std::int64_t def) {
  const auto it = d.header.find(key);
  if (it == d.header.end()) return def;
  const auto l = conf::find_limit(key.ends_with("_timeout") ? "timeouts" : "limits",
                                  key.ends_with("_timeout") ? key.substr(0, key.size() - 8)
                                  : key == "invalid_recipients" ? std::string("invalid_recipients_per_session")
                                                                : key);
  const std::int64_t v = std::stoll(it->second);
  // The header may only choose what a config file could: inside the limits table's range.
  if (l == nullptr || v < l->min || v > l->max)
    throw std::runtime_error(d.name + ": " + key + " = " + it->second + " is outside conf/limits.hpp");
  return v;
}

std::vector<std::string> split_caps(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!trim(item).empty()) out.push_back(trim(item));
  return out;
}

std::string ehlo_reply(const std::vector<std::string>& caps) {
  std::string r;
  if (caps.empty()) return "250 next.hop\r\n";
  r = "250-next.hop\r\n";
  for (std::size_t i = 0; i < caps.size(); ++i) r += (i + 1 == caps.size() ? "250 " : "250-") + caps[i] + "\r\n";
  return r;
}

relay::smtp::Capabilities caps_of(const std::vector<std::string>& caps) {
  relay::smtp::Reply r;
  r.code = 250;
  r.lines.push_back("next.hop");
  for (const auto& c : caps) r.lines.push_back(c);
  return relay::smtp::parse_ehlo(r);
}

[[noreturn]] void setup_failed(const std::string& why) { throw std::runtime_error("runner setup: " + why); }

// One certificate for every dialogue that offers STARTTLS (making a key per dialogue is slow).
std::shared_ptr<asio::ssl::context> server_tls() {
  static const std::shared_ptr<asio::ssl::context> ctx = test::make_test_server_tls();
  return ctx;
}

std::shared_ptr<const relay::Runtime> make_runtime(const Dialogue& d, std::uint16_t upstream_port) {
  const std::string role = get(d, "role", "outbound");
  if (role != "outbound" && role != "inbound") setup_failed("role must be outbound or inbound");
  const bool inbound = role == "inbound";
  // 10 s unless a dialogue asks for expiry: no relay timer fires in a dialogue that does not.
  conf::Config cfg = test::session_config("dialogue", inbound ? conf::Role::inbound : conf::Role::outbound,
                                          upstream_port, {"example.com"}, std::chrono::seconds(10));
  conf::Listener& l = cfg.listeners[0];
  const std::string uc = get(d, "upstream_connect", inbound ? "mail" : "connect");
  if (uc != "mail" && uc != "connect") setup_failed("upstream_connect must be mail or connect");
  l.upstream_connect = uc == "mail" ? conf::UpstreamConnect::mail : conf::UpstreamConnect::connect;
  l.require_tls = yes(d, "require_tls", false);
  l.plaintext_auth_loopback = yes(d, "plaintext_auth_loopback", true);
  l.allow_authenticated = yes(d, "needs_auth", false);

  const std::string mode = get(d, "inbound_mode", "enforce");
  cfg.inbound.mode = mode == "monitor" ? conf::InboundMode::monitor
                     : mode == "off"   ? conf::InboundMode::off
                     : mode == "enforce" ? conf::InboundMode::enforce
                                         : (setup_failed("inbound_mode: " + mode), conf::InboundMode::off);
  const std::string bad = get(d, "bad_signature", "strip");
  cfg.inbound.bad_signature = bad == "keep"     ? conf::BadSignatureAction::keep
                              : bad == "reject" ? conf::BadSignatureAction::reject
                              : bad == "strip"  ? conf::BadSignatureAction::strip
                                                : (setup_failed("bad_signature: " + bad), conf::BadSignatureAction::strip);
  const std::string vrfy = get(d, "vrfy", "cannot_verify");
  if (vrfy != "cannot_verify" && vrfy != "disabled") setup_failed("vrfy: " + vrfy);
  cfg.smtp.vrfy = vrfy == "disabled" ? conf::VrfyReply::disabled : conf::VrfyReply::cannot_verify;

  auto& lim = cfg.limits;
  lim.errors_per_session = number(d, "errors_per_session", lim.errors_per_session);
  lim.commands_before_mail = number(d, "commands_before_mail", lim.commands_before_mail);
  lim.invalid_recipients_per_session = number(d, "invalid_recipients", lim.invalid_recipients_per_session);
  lim.recipients_per_message = number(d, "recipients_per_message", lim.recipients_per_message);
  lim.message_size = number(d, "message_size", lim.message_size);
  lim.line_length = number(d, "line_length", lim.line_length);
  auto& t = cfg.timeouts;
  t.idle = std::chrono::seconds(number(d, "idle_timeout", 10));
  t.command = std::chrono::seconds(number(d, "command_timeout", 10));
  t.data = std::chrono::seconds(number(d, "data_timeout", 10));
  t.session = std::chrono::seconds(number(d, "session_timeout", 10));
  t.upstream_reply = std::chrono::seconds(number(d, "upstream_reply_timeout", 10));

  std::vector<crypto::KeyMaterial> keys;
  keys.push_back({1, true, crypto::Secret(std::string_view("dialogue-signing-key"))});
  const bool starttls = yes(d, "starttls", l.require_tls);
  return test::session_runtime(std::move(cfg), std::move(keys), starttls ? server_tls() : nullptr,
                               relay::WallClock{[] { return kNow; }});
}

// prvs=TAG=, prvs=OLD=, prvs=BAD= placeholders (see the format above).
std::string expand_tags(std::string_view in, const relay::Runtime& rt) {
  std::string out;
  std::size_t pos = 0;
  for (;;) {
    const std::size_t at = in.find("prvs=", pos);
    if (at == std::string_view::npos) break;
    const std::string_view kind = in.substr(at, 9);
    out.append(in.substr(pos, at - pos));
    if (kind != "prvs=TAG=" && kind != "prvs=OLD=" && kind != "prvs=BAD=") {
      out.append("prvs=");
      pos = at + 5;
      continue;
    }
    const std::size_t start = at + 9;
    std::size_t end = in.find_first_of("> \r\n", start);
    if (end == std::string_view::npos) end = in.size();
    const std::string_view address = in.substr(start, end - start);
    const auto s = crypto::sign(rt.keys.default_ring().keyring, address, kind == "prvs=OLD=" ? kNow - 40 * 86400 : kNow,
                                rt.prvs);
    if (!s.tagged) throw std::runtime_error("cannot sign " + std::string(address));
    std::string tagged = *s.tagged;
    if (kind == "prvs=BAD=") {  // prvs=KDDDSSSSSS=: change the first hash digit
      char& c = tagged[9];
      c = c == '0' ? '1' : '0';
    }
    out.append(tagged);
    pos = end;
  }
  out.append(in.substr(pos));
  return out;
}

// batv_session_end_total samples of one role, by reason.
std::map<std::string, std::int64_t> session_ends(std::string_view role) {
  std::map<std::string, std::int64_t> out;
  const std::string text = relay::metrics().render_prometheus(0);
  const std::string prefix = "batv_session_end_total{role=\"" + std::string(role) + "\",reason=\"";
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(prefix, 0) != 0) continue;
    const std::size_t q = line.find('"', prefix.size());
    out[line.substr(prefix.size(), q - prefix.size())] = std::atoll(line.c_str() + line.find("} ") + 2);
  }
  return out;
}

// --- One run ---------------------------------------------------------------------------------------

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A signal on one executor: waiters re-check their condition each time it fires.
class Signal {
 public:
  explicit Signal(asio::any_io_executor ex) : timer_(ex) {}
  void notify() { timer_.cancel(); }
  // Waits until notified or the deadline; false at the deadline.
  awaitable<bool> wait(Clock::time_point deadline) {
    if (Clock::now() >= deadline) co_return false;
    timer_.expires_at(deadline);
    co_await timer_.async_wait(use_tuple);
    co_return Clock::now() < deadline;
  }

 private:
  asio::steady_timer timer_;
};

// Reads more bytes into buf: false at the deadline; eof set at end of stream or an error.
template <class AsyncStream>
awaitable<bool> read_more(AsyncStream& s, std::string& buf, bool& eof, Clock::time_point deadline) {
  using namespace asio::experimental::awaitable_operators;
  char tmp[16384];
  asio::steady_timer timer(s.get_executor());
  timer.expires_at(deadline);
  auto r = co_await (s.async_read_some(asio::buffer(tmp), use_tuple) || timer.async_wait(use_tuple));
  if (r.index() == 1) co_return false;
  auto [ec, n] = std::get<0>(r);
  if (ec) {
    eof = true;
    co_return true;
  }
  buf.append(tmp, n);
  co_return true;
}

// One end of a connection the runner holds: the client's, or the next hop's. The client's may
// switch to TLS (the `tls` step); what it reads then is the decrypted stream.
struct Conn {
  explicit Conn(tcp::socket s) : sock(std::move(s)) {}
  tcp::socket sock;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls;
  std::string buf;  // received, not yet read by a step
  bool eof = false;
  awaitable<bool> more(Clock::time_point deadline) {
    if (tls) return read_more(*tls, buf, eof, deadline);
    return read_more(sock, buf, eof, deadline);
  }
  awaitable<void> write(const std::string& data) {
    // A write the relay no longer reads (it closed) is not an error of the dialogue: the steps
    // after it say what the peer sees.
    if (tls) co_await asio::async_write(*tls, asio::buffer(data), use_tuple);
    else co_await asio::async_write(sock, asio::buffer(data), use_tuple);
  }
};

// A next-hop connection: greeted and its EHLO answered by the runner, then the script's.
struct Hop : Conn {
  using Conn::Conn;
  bool ready = false;   // greeting and EHLO done: the script takes over
  bool closed_by_script = false;
};

std::string printable(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n";
    else if (c < 0x20 || c > 0x7e) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", static_cast<unsigned char>(c));
      out += b;
    } else out += c;
  }
  return out;
}

class Run {
 public:
  Run(const Dialogue& d) : d_(d), signal_(io_.get_executor()) {
    const tcp::endpoint any(asio::ip::make_address("127.0.0.1"), 0);
    for (tcp::acceptor* a : {&listen_, &hop_acceptor_}) {
      a->open(any.protocol());
      a->set_option(tcp::acceptor::reuse_address(true));
      a->bind(any);
      a->listen();
    }
    rt_ = make_runtime(d, hop_acceptor_.local_endpoint().port());
    const std::string next_hop = get(d, "next_hop", "listening");
    if (next_hop == "refused") hop_acceptor_.close();  // its port now refuses connections
    else if (next_hop != "listening") setup_failed("next_hop must be listening or refused");
    greeting_ = get(d, "next_hop_greeting", "220 next.hop ESMTP test") + "\r\n";
    const auto caps = split_caps(get(d, "next_hop_ehlo", kDefaultEhlo));
    ehlo_ = ehlo_reply(caps);
    // What a session connecting at MAIL offers at EHLO: the cache as the header says.
    relay::NextHopCaps::global().clear();
    const std::string cached = get(d, "cached_caps", "");
    if (cached != "none")
      relay::NextHopCaps::global().learn(relay::NextHopCaps::key_of(rt_->config.listeners[0]),
                                         caps_of(cached.empty() ? caps : split_caps(cached)),
                                         relay::NextHopCaps::Source::probe);
    role_ = conf::to_string(rt_->config.listeners[0].role);
    if (const auto it = d.header.find("step_cap"); it != d.header.end()) step_cap_ = std::chrono::seconds(std::stoi(it->second));
  }

  // The failures of the dialogue, empty when it passed.
  std::string go() {
    ends_before_ = session_ends(role_);
    asio::co_spawn(io_, drive(), [this](std::exception_ptr e) {
      if (e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& x) {
          fail(x.what());
        }
      }
      abort();
    });
    io_.run_for(kRunCap);
    if (!io_.stopped()) {
      fail("the dialogue did not finish within " + std::to_string(kRunCap.count()) + " s (session " +
           (session_done_ ? "ended" : "still running") + ")");
      abort();
      io_.run_for(std::chrono::seconds(2));
    }
    return failures_;
  }

 private:
  void fail(const std::string& why) {
    if (!failures_.empty()) failures_ += "\n";
    failures_ += why;
  }
  std::string at(const Step& s) const { return d_.file + ":" + std::to_string(s.line) + ": "; }

  // Ends everything still open, so that io_.run returns.
  void abort() {
    boost::system::error_code ignored;
    listen_.close(ignored);
    hop_acceptor_.close(ignored);
    client_.sock.close(ignored);
    for (auto& h : hops_) h->sock.close(ignored);
    if (session_ && !session_done_) session_->stop();
  }

  awaitable<void> accept_hops() {
    for (;;) {
      auto [ec, sock] = co_await hop_acceptor_.async_accept(use_tuple);
      if (ec) co_return;
      boost::system::error_code ignored;
      sock.set_option(tcp::no_delay(true), ignored);
      auto hop = std::make_shared<Hop>(std::move(sock));
      hops_.push_back(hop);
      asio::co_spawn(io_, greet(hop), asio::detached);
    }
  }

  // The next hop's side of the relay's connection set-up: greeting, then EHLO relay.test.
  awaitable<void> greet(std::shared_ptr<Hop> hop) {
    auto [ec, n] = co_await asio::async_write(hop->sock, asio::buffer(greeting_), use_tuple);
    if (!ec && greeting_.rfind("220", 0) == 0) {
      std::string line;
      const auto deadline = Clock::now() + step_cap_;
      while (!hop->eof && hop->buf.find('\n') == std::string::npos)
        if (!co_await hop->more(deadline)) break;
      const std::size_t nl = hop->buf.find('\n');
      if (nl == std::string::npos) {
        fail("the next hop got no EHLO after its greeting");
      } else {
        line = hop->buf.substr(0, nl + 1);
        hop->buf.erase(0, nl + 1);
        if (line != std::string("EHLO ") + kHostname + "\r\n") fail("the next hop got " + printable(line) + " for EHLO");
        co_await asio::async_write(hop->sock, asio::buffer(ehlo_), use_tuple);
      }
    }
    hop->ready = true;
    signal_.notify();
  }

  awaitable<void> start_session() {
    co_await client_.sock.async_connect(listen_.local_endpoint(), asio::use_awaitable);
    tcp::socket accepted = co_await listen_.async_accept(asio::use_awaitable);
    client_.sock.set_option(tcp::no_delay(true));
    accepted.set_option(tcp::no_delay(true));
    relay::SessionContext ctx = test::session_context(rt_, "dialogue", accepted);
    ctx.needs_auth = yes(d_, "needs_auth", false);
    const std::string adm = get(d_, "admission", "ok");
    using A = relay::SessionContext::Admission;
    ctx.admission = adm == "denied" ? A::denied : adm == "too_many" ? A::too_many
                    : adm == "too_many_from_client" ? A::too_many_from_client
                    : adm == "ok" ? A::ok : (setup_failed("admission: " + adm), A::ok);
    session_ = std::make_shared<relay::Session>(std::move(accepted), std::move(ctx));
    asio::co_spawn(io_, session_->run(), [this](std::exception_ptr e) {
      if (e) fail("Session::run threw");
      session_done_ = true;
      signal_.notify();
      // The session's sockets keep watchdog timers (relay/io.cpp) until they are destroyed: the
      // session goes, so that io_.run returns as soon as the dialogue is over.
      asio::post(io_, [this] { session_.reset(); });
    });
  }

  std::shared_ptr<Hop> current_hop() const {
    return hops_.empty() || !hops_.back()->ready ? nullptr : hops_.back();
  }

  awaitable<std::shared_ptr<Hop>> wait_hop(const Step& s) {
    const auto deadline = Clock::now() + step_cap_;
    while (!current_hop())
      if (!co_await signal_.wait(deadline)) throw Failure(at(s) + "the relay opened no next-hop connection");
    co_return current_hop();
  }

  // The relay closed `hop` (a command was expected on it): the command goes to the connection it
  // opens next (a reconnect), if it does so within the step's time.
  awaitable<std::shared_ptr<Hop>> successor(const std::shared_ptr<Hop>& hop, const Step& s) {
    const auto deadline = Clock::now() + step_cap_;
    while (hops_.back() == hop || !hops_.back()->ready)
      if (!co_await signal_.wait(deadline))
        throw Failure(at(s) + "the next hop got end of stream (and no new connection), expected: " + s.text);
    co_return hops_.back();
  }

  // The next CRLF-terminated line from c (CRLF removed). nullopt at end of stream with nothing
  // left when eof_ok (a next-hop connection the relay closed: the line may come on its successor).
  awaitable<std::optional<std::string>> next_line(Conn& c, const Step& s, const char* who, bool eof_ok = false) {
    const auto deadline = Clock::now() + step_cap_;
    for (;;) {
      const std::size_t nl = c.buf.find('\n');
      if (nl != std::string::npos) {
        std::string line = c.buf.substr(0, nl + 1);
        c.buf.erase(0, nl + 1);
        if (line.size() < 2 || line[line.size() - 2] != '\r')
          throw Failure(at(s) + who + " got a line without CRLF: " + printable(line));
        line.resize(line.size() - 2);
        co_return line;
      }
      if (c.eof && eof_ok && c.buf.empty()) co_return std::nullopt;
      if (c.eof) throw Failure(at(s) + who + " got end of stream" + (c.buf.empty() ? "" : " after " + printable(c.buf)) +
                               ", expected: " + s.text);
      if (!co_await c.more(deadline))
        throw Failure(at(s) + who + " waited " + std::to_string(step_cap_.count()) + " s in vain" +
                      (c.buf.empty() ? "" : " (got " + printable(c.buf) + ")") + ", expected: " + s.text);
    }
  }

  void match(const Step& s, const std::string& got, bool regex, const char* who) {
    const std::string want = expand_tags(s.text, *rt_);
    const bool ok = regex ? std::regex_match(got, std::regex(want)) : got == want;
    if (tracing()) std::fprintf(stderr, "  %s %s %s\n", who, ok ? "ok " : "BAD", printable(got).c_str());
    if (!ok) throw Failure(at(s) + who + " got: " + printable(got) + "\n    expected" + (regex ? " (regex): " : ": ") + want);
  }

  awaitable<void> drive() {
    asio::co_spawn(io_, accept_hops(), asio::detached);
    co_await start_session();
    std::string batch;  // client bytes of consecutive C:/C+ steps
    for (std::size_t i = 0; i < d_.steps.size(); ++i) {
      const Step& s = d_.steps[i];
      if (tracing()) std::fprintf(stderr, "%s:%d %s\n", d_.file.c_str(), s.line, printable(s.text).c_str());
      switch (s.kind) {
        case Kind::client_line:
        case Kind::client_raw: {
          batch += expand_tags(s.text, *rt_);
          if (s.kind == Kind::client_line) batch += "\r\n";
          const bool more = i + 1 < d_.steps.size() &&
                            (d_.steps[i + 1].kind == Kind::client_line || d_.steps[i + 1].kind == Kind::client_raw);
          if (!more) {
            co_await client_.write(batch);
            batch.clear();
          }
          break;
        }
        case Kind::expect_reply:
        case Kind::expect_reply_re: {
          const std::string got = *co_await next_line(client_, s, "client");
          match(s, got, s.kind == Kind::expect_reply_re, "client");
          break;
        }
        case Kind::hop_line:
        case Kind::hop_line_re: {
          auto hop = co_await wait_hop(s);
          std::optional<std::string> got;
          while (!(got = co_await next_line(*hop, s, "next hop", true))) hop = co_await successor(hop, s);
          match(s, *got, s.kind == Kind::hop_line_re, "next hop");
          break;
        }
        case Kind::hop_raw: {
          auto hop = co_await wait_hop(s);
          const auto deadline = Clock::now() + step_cap_;
          while (hop->buf.size() < s.text.size() && !hop->eof)
            if (!co_await hop->more(deadline)) break;
          const std::string got = hop->buf.substr(0, s.text.size());
          hop->buf.erase(0, got.size());
          if (got != s.text)
            throw Failure(at(s) + "next hop got bytes: " + printable(got) + "\n    expected: " + printable(s.text));
          break;
        }
        case Kind::hop_reply: {
          auto hop = co_await wait_hop(s);
          const std::string text = expand_tags(s.text, *rt_) + "\r\n";
          co_await hop->write(text);
          break;
        }
        case Kind::hop_close: {
          auto hop = co_await wait_hop(s);
          boost::system::error_code ignored;
          hop->closed_by_script = true;
          hop->sock.close(ignored);
          break;
        }
        case Kind::hops:
          if (std::to_string(hops_.size()) != s.text)
            throw Failure(at(s) + "the relay opened " + std::to_string(hops_.size()) + " next-hop connection(s), expected " + s.text);
          break;
        case Kind::stop:
          if (!session_) throw Failure(at(s) + "stop: the session has ended already");
          session_->stop();
          break;
        case Kind::tls: {
          // The client's side of STARTTLS: a handshake over the client connection (any
          // certificate: the relay's is made up in memory).
          using namespace asio::experimental::awaitable_operators;
          static asio::ssl::context client_ctx(asio::ssl::context::tls_client);
          client_.tls = std::make_unique<asio::ssl::stream<tcp::socket&>>(client_.sock, client_ctx);
          client_.tls->set_verify_mode(asio::ssl::verify_none);
          if (!client_.buf.empty()) throw Failure(at(s) + "the client got bytes before its TLS handshake: " + printable(client_.buf));
          asio::steady_timer timer(io_);
          timer.expires_after(step_cap_);
          auto r = co_await (client_.tls->async_handshake(asio::ssl::stream_base::client, use_tuple) ||
                             timer.async_wait(use_tuple));
          if (r.index() == 1) throw Failure(at(s) + "the TLS handshake timed out");
          if (auto [ec] = std::get<0>(r); ec) throw Failure(at(s) + "the TLS handshake failed: " + ec.message());
          break;
        }
        case Kind::eof: {
          boost::system::error_code ignored;
          client_.sock.shutdown(tcp::socket::shutdown_send, ignored);
          break;
        }
        case Kind::closed: {
          const auto deadline = Clock::now() + step_cap_;
          while (!client_.eof && client_.buf.empty())
            if (!co_await client_.more(deadline))
              throw Failure(at(s) + "the relay did not close the client connection");
          if (!client_.buf.empty()) throw Failure(at(s) + "the client got more before the close: " + printable(client_.buf));
          break;
        }
        case Kind::end: {
          const auto deadline = Clock::now() + step_cap_;
          while (!session_done_)
            if (!co_await signal_.wait(deadline)) throw Failure(at(s) + "the session did not end");
          const auto after = session_ends(role_);
          std::string grew;
          for (const auto& [reason, n] : after) {
            const std::int64_t delta = n - (ends_before_.count(reason) ? ends_before_.at(reason) : 0);
            if (delta != 0) grew += (grew.empty() ? "" : ", ") + reason + " +" + std::to_string(delta);
          }
          if (grew != s.text + " +1") throw Failure(at(s) + "session end: " + (grew.empty() ? "none counted" : grew) +
                                                    ", expected " + s.text);
          break;
        }
      }
    }
    co_await check_the_rest();
  }

  // Nothing the script did not read: the client's remaining bytes up to the close, and each
  // next-hop connection's up to its close by the relay.
  awaitable<void> check_the_rest() {
    const auto deadline = Clock::now() + step_cap_;
    while (!client_.eof)
      if (!co_await client_.more(deadline)) {
        fail("the relay did not close the client connection after the session");
        break;
      }
    if (!client_.buf.empty()) fail(d_.file + ": the client got more than the script reads: " + printable(client_.buf));
    for (std::size_t i = 0; i < hops_.size(); ++i) {
      Hop& h = *hops_[i];
      if (h.closed_by_script) continue;
      while (!h.eof)
        if (!co_await h.more(deadline)) {
          fail("the relay did not close next-hop connection " + std::to_string(i + 1));
          break;
        }
      if (!h.buf.empty())
        fail(d_.file + ": next-hop connection " + std::to_string(i + 1) + " got more than the script reads: " +
             printable(h.buf));
    }
  }

  const Dialogue& d_;
  asio::io_context io_{1};
  tcp::acceptor listen_{io_};
  tcp::acceptor hop_acceptor_{io_};
  Conn client_{tcp::socket(io_)};
  std::vector<std::shared_ptr<Hop>> hops_;
  std::shared_ptr<const relay::Runtime> rt_;
  std::shared_ptr<relay::Session> session_;
  bool session_done_ = false;
  Signal signal_;
  std::string greeting_, ehlo_, role_;
  std::map<std::string, std::int64_t> ends_before_;
  std::string failures_;
  std::chrono::seconds step_cap_ = kStepCap;
};

std::string g_only_file;  // --file=NAME

std::vector<std::filesystem::path> dialogue_files() {
  std::vector<std::filesystem::path> out;
  for (const auto& e : std::filesystem::directory_iterator(BATV_DIALOGUE_DIR))
    if (e.path().extension() == ".dlg" && (g_only_file.empty() || e.path().filename() == g_only_file))
      out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_CASE("dialogues") {
  const auto files = dialogue_files();
  REQUIRE_MESSAGE(!files.empty(), "no dialogue file " << g_only_file << " in " << BATV_DIALOGUE_DIR);
  for (const auto& path : files) {
    std::vector<Dialogue> dialogues;
    try {
      dialogues = parse_file(path);
    } catch (const std::exception& e) {
      FAIL(std::string(e.what()));
    }
    for (const Dialogue& d : dialogues) {
      const std::string name = d.file + "/" + d.name;
      SUBCASE(name.c_str()) {
        if (tracing()) std::fprintf(stderr, "=== %s\n", name.c_str());
        std::string failures;
        try {
          Run run(d);
          failures = run.go();
        } catch (const std::exception& e) {
          failures = e.what();
        }
        if (const auto it = d.header.find("expect_failure"); it != d.header.end()) {
          // The runner's own test (runner_selftest.dlg): this dialogue is wrong on purpose.
          CHECK_MESSAGE(failures.find(it->second) != std::string::npos,
                        name << " (" << d.file << ":" << d.line << ") should fail with \"" << it->second
                             << "\", got:\n" << (failures.empty() ? "(no failure)" : failures));
        } else {
          CHECK_MESSAGE(failures.empty(), name << " (" << d.file << ":" << d.line << "):\n" << failures);
        }
      }
    }
  }
}

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.rfind("--file=", 0) == 0) g_only_file = std::string(a.substr(7));
    else rest.push_back(argv[i]);
  }
  relay::configure_logging(conf::Logging{tracing() ? conf::LogLevel::info : conf::LogLevel::error,
                                         conf::LogTarget::stderr_, conf::SyslogFacility::mail});
  doctest::Context ctx;
  ctx.applyCommandLine(static_cast<int>(rest.size()), rest.data());
  return ctx.run();
}
