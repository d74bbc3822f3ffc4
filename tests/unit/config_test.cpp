// Unit tests for conf/: the limits table, the network parsers and the config loader's values and
// error reports (file, line, column, key, message). Documents are built in the test so that
// every expected line:column can be read off the text.
#include <doctest/doctest.h>

#include <stdlib.h>  // mkdtemp

#include <filesystem>
#include <fstream>
#include <string>
#include <toml++/toml.h>
#include <vector>

#include "conf/config.hpp"
#include "conf/limits.hpp"
#include "conf/net.hpp"

#ifndef BATV_SOURCE_DIR
#error "BATV_SOURCE_DIR must name the source tree (the example config is loaded from it)"
#endif

using namespace batv::conf;
namespace fs = std::filesystem;

namespace {

// Lines 1-7 of most documents below (shifted down by whatever `top` adds):
//   1 key_file = "keys.toml"
//   2 [domains]
//   3 sign = ["example.com"]
//   4 [[listener]]
//   5 role = "outbound"
//   6 listen = "127.0.0.1:10025"
//   7 upstream = "127.0.0.1:10026"
// `tail` starts at line 8 (+ top's lines) and, without a table header, continues [[listener]].
std::string doc(std::string_view top = "", std::string_view tail = "") {
  return std::string(top) +
         "key_file = \"keys.toml\"\n"
         "[domains]\n"
         "sign = [\"example.com\"]\n"
         "[[listener]]\n"
         "role = \"outbound\"\n"
         "listen = \"127.0.0.1:10025\"\n"
         "upstream = \"127.0.0.1:10026\"\n" +
         std::string(tail);
}

// Same, with listener 0's listen/upstream replaced (lines 6 and 7; values start at columns 10, 12).
std::string doc_hp(std::string_view listen, std::string_view upstream) {
  return "key_file = \"keys.toml\"\n"
         "[domains]\n"
         "sign = [\"example.com\"]\n"
         "[[listener]]\n"
         "role = \"outbound\"\n"
         "listen = \"" + std::string(listen) + "\"\n"
         "upstream = \"" + std::string(upstream) + "\"\n";
}

LoadResult load(const std::string& text) { return load_config_string(text, "t.toml", "/etc/batv"); }

std::string all_errors(const LoadResult& r) {
  std::string s;
  for (const auto& e : r.errors) s += format(e) + "\n";
  return s;
}

struct Expect {
  int line;
  int column;
  std::string key;
  std::string message_part;  // substring of the message
  std::string exact = {};    // when set: the whole format() output
};

void check_errors(const LoadResult& r, const std::vector<Expect>& want) {
  INFO("errors:\n" << all_errors(r));
  CHECK_FALSE(r.config.has_value());
  REQUIRE(r.errors.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    const ConfigError& e = r.errors[i];
    const Expect& w = want[i];
    INFO("error #" << i << ": " << format(e));
    CHECK(e.file == "t.toml");
    CHECK(e.line == w.line);
    CHECK(e.column == w.column);
    CHECK(e.key == w.key);
    CHECK(e.message.find(w.message_part) != std::string::npos);
    if (!w.exact.empty()) CHECK(format(e) == w.exact);
  }
}

// By value: callers pass temporaries.
Config require_ok(const LoadResult& r) {
  INFO("errors:\n" << all_errors(r));
  REQUIRE(r.errors.empty());
  REQUIRE(r.config.has_value());
  return *r.config;
}

// Test-side map from a kLimits row to the Config member it must land in (independent of the
// loader's own binding table, so a mis-wired binding is caught).
std::int64_t value_of(const Config& c, std::string_view section, std::string_view key) {
  const std::pair<std::string_view, std::int64_t> values[] = {
      {".lifetime_days", c.lifetime_days},
      {".threads", c.threads},
      {"limits.line_length", c.limits.line_length},
      {"limits.reply_line_length", c.limits.reply_line_length},
      {"limits.reply_lines", c.limits.reply_lines},
      {"limits.recipients_per_message", c.limits.recipients_per_message},
      {"limits.message_size", c.limits.message_size},
      {"limits.errors_per_session", c.limits.errors_per_session},
      {"limits.sessions", c.limits.sessions},
      {"limits.sessions_per_client", c.limits.sessions_per_client},
      {"limits.commands_before_mail", c.limits.commands_before_mail},
      {"limits.invalid_recipients_per_session", c.limits.invalid_recipients_per_session},
      {"limits.client_names_cached", c.limits.client_names_cached},
      {"limits.upstream_idle_connections", c.limits.upstream_idle_connections},
      {"limits.policy_request_size", c.limits.policy_request_size},
      {"limits.policy_attributes", c.limits.policy_attributes},
      {"limits.policy_attribute_length", c.limits.policy_attribute_length},
      {"limits.milter_packet", c.limits.milter_packet},
      {"limits.proxy_header_size", c.limits.proxy_header_size},
      {"timeouts.idle", c.timeouts.idle.count()},
      {"timeouts.command", c.timeouts.command.count()},
      {"timeouts.session", c.timeouts.session.count()},
      {"timeouts.data", c.timeouts.data.count()},
      {"timeouts.upstream_connect", c.timeouts.upstream_connect.count()},
      {"timeouts.upstream_reply", c.timeouts.upstream_reply.count()},
      {"timeouts.upstream_data_reply", c.timeouts.upstream_data_reply.count()},
      {"timeouts.shutdown_grace", c.timeouts.shutdown_grace.count()},
      {"timeouts.upstream_idle", c.timeouts.upstream_idle.count()},
      {"timeouts.client_name_ttl", c.timeouts.client_name_ttl.count()},
      {"timeouts.policy_idle", c.timeouts.policy_idle.count()},
      {"timeouts.policy_request", c.timeouts.policy_request.count()},
      {"timeouts.socketmap_idle", c.timeouts.socketmap_idle.count()},
      {"timeouts.socketmap_request", c.timeouts.socketmap_request.count()},
      {"timeouts.milter_idle", c.timeouts.milter_idle.count()},
      {"timeouts.milter_command", c.timeouts.milter_command.count()},
      {"timeouts.proxy_header", c.timeouts.proxy_header.count()},
  };
  const std::string name = std::string(section) + "." + std::string(key);
  for (const auto& [n, v] : values)
    if (n == name) return v;
  FAIL("test has no accessor for " << name);
  return -1;
}

// A document setting one kLimits row to `v`; *line/*col receive where the value sits.
std::string doc_with_limit(const Limit& l, std::int64_t v, int* line, int* col) {
  const std::string assignment = std::string(l.key) + " = " + std::to_string(v) + "\n";
  *col = static_cast<int>(l.key.size()) + 4;
  if (l.section.empty()) {
    *line = 1;
    return doc(assignment);
  }
  *line = 9;
  std::string tail = "[" + std::string(l.section) + "]\n" + assignment;
  // The sessions cross-check would fire when sessions drops below the default per-client limit.
  // sessions_per_client must not exceed sessions: keep the other one out of the way.
  if (l.section == "limits" && l.key == "sessions") tail += "sessions_per_client = 1\n";
  if (l.section == "limits" && l.key == "sessions_per_client") tail += "sessions = 100000\n";
  return doc("", tail);
}

std::string dotted(const Limit& l) {
  return l.section.empty() ? std::string(l.key) : std::string(l.section) + "." + std::string(l.key);
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "batv-conf-test-XXXXXX").string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  fs::path write(const std::string& rel, const std::string& text) const {
    const fs::path p = path / rel;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
};

}  // namespace

// --- limits.hpp --------------------------------------------------------------------------------

TEST_CASE("limits: table rows are sane and reachable by name") {
  for (const Limit& l : kLimits) {
    INFO(dotted(l));
    CHECK(l.min <= l.def);
    CHECK(l.def <= l.max);
    CHECK(find_limit(l.section, l.key) == &l);
  }
  CHECK(find_limit("limits", "no_such_limit") == nullptr);
  CHECK_FALSE(has_limit("", "line_length"));  // sections are part of the name
  // RFC 5321 floors the table must not undercut.
  CHECK(limit("limits", "line_length").min >= 512);        // 4.5.3.1.4
  CHECK(limit("limits", "reply_line_length").min >= 512);  // 4.5.3.1.5
  CHECK(limit("limits", "recipients_per_message").min >= 100);  // 4.5.3.1.8
  CHECK(limit("limits", "message_size").min >= 65536);     // 4.5.3.1.7
}

TEST_CASE("limits: defaults of a minimal config equal the table's defaults") {
  const Config c = require_ok(load(doc()));
  for (const Limit& l : kLimits) {
    INFO(dotted(l));
    CHECK(value_of(c, l.section, l.key) == l.def);
  }
  CHECK(c.limits == Limits{});
  CHECK(c.timeouts == Timeouts{});
}

TEST_CASE("limits: min and max are accepted and land in the right member") {
  for (const Limit& l : kLimits) {
    for (std::int64_t v : {l.min, l.max}) {
      INFO(dotted(l) << " = " << v);
      int line = 0, col = 0;
      const Config c = require_ok(load(doc_with_limit(l, v, &line, &col)));
      CHECK(value_of(c, l.section, l.key) == v);
    }
  }
}

TEST_CASE("limits: min-1 and max+1 are errors naming key, value and range") {
  for (const Limit& l : kLimits) {
    for (std::int64_t v : {l.min - 1, l.max + 1}) {
      INFO(dotted(l) << " = " << v);
      int line = 0, col = 0;
      const std::string text = doc_with_limit(l, v, &line, &col);
      const std::string msg = std::to_string(v) + " is out of range (allowed " + std::to_string(l.min) +
                              " to " + std::to_string(l.max) + " " + std::string(l.unit) + ")";
      check_errors(load(text), {{line, col, dotted(l), msg,
                                 "t.toml:" + std::to_string(line) + ":" + std::to_string(col) + ": " +
                                     dotted(l) + ": " + msg}});
    }
  }
}

TEST_CASE("limits: sessions_per_client must not exceed sessions") {
  check_errors(load(doc("", "[limits]\nsessions = 10\nsessions_per_client = 11\n")),
               {{10, 23, "limits.sessions_per_client", "sessions_per_client (11) must not exceed sessions (10)"}});
  check_errors(load(doc("", "[limits]\nsessions = 10\n")),
               {{9, 12, "limits.sessions", "sessions_per_client (50) must not exceed sessions (10)"}});
}

// --- net.hpp -----------------------------------------------------------------------------------

TEST_CASE("net: parse_cidr") {
  auto c = parse_cidr("10.1.2.3/8");
  REQUIRE(c);
  CHECK(c->to_string() == "10.0.0.0/8");  // host bits masked, documented
  CHECK_FALSE(c->v6);
  CHECK(c->prefix == 8);

  auto bare4 = parse_cidr("192.0.2.7");
  REQUIRE(bare4);
  CHECK(bare4->prefix == 32);
  auto bare6 = parse_cidr("2001:db8::1");
  REQUIRE(bare6);
  CHECK(bare6->prefix == 128);
  CHECK(bare6->v6);
  CHECK(parse_cidr("2001:DB8:0:0::/32")->to_string() == "2001:db8::/32");

  std::string why;
  for (const char* bad : {"10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8/8",
                          "10.0.0.256", "10.0.0", "", "/8", "example.com/8", "fe80::1%eth0/64",
                          "10.0.0.0/1000", " 10.0.0.0/8"}) {
    INFO(bad);
    why.clear();
    CHECK_FALSE(parse_cidr(bad, &why));
    CHECK_FALSE(why.empty());
  }
}

TEST_CASE("net: Cidr::contains at the edges") {
  const Cidr ten = *parse_cidr("10.0.0.0/8");
  CHECK(ten.contains("10.0.0.0"));
  CHECK(ten.contains("10.255.255.255"));
  CHECK_FALSE(ten.contains("11.0.0.0"));
  CHECK_FALSE(ten.contains("9.255.255.255"));
  CHECK_FALSE(ten.contains("::ffff:11.0.0.0"));
  CHECK(ten.contains("::ffff:10.1.2.3"));  // IPv4-mapped peer on a dual-stack socket
  CHECK_FALSE(ten.contains("not an ip"));

  const Cidr odd = *parse_cidr("192.168.0.0/23");  // prefix not a multiple of 8
  CHECK(odd.contains("192.168.1.255"));
  CHECK_FALSE(odd.contains("192.168.2.0"));
  CHECK_FALSE(odd.contains("192.167.255.255"));

  const Cidr host = *parse_cidr("192.0.2.1/32");
  CHECK(host.contains("192.0.2.1"));
  CHECK_FALSE(host.contains("192.0.2.0"));
  CHECK_FALSE(host.contains("192.0.2.2"));

  const Cidr all4 = *parse_cidr("0.0.0.0/0");
  CHECK(all4.contains("0.0.0.0"));
  CHECK(all4.contains("255.255.255.255"));
  CHECK_FALSE(all4.contains("::1"));  // families never mix

  const Cidr all6 = *parse_cidr("::/0");
  CHECK(all6.contains("::1"));
  CHECK(all6.contains("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
  CHECK_FALSE(all6.contains("127.0.0.1"));

  const Cidr doc6 = *parse_cidr("2001:db8::/32");
  CHECK(doc6.contains("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"));
  CHECK_FALSE(doc6.contains("2001:db9::"));
  CHECK_FALSE(doc6.contains("2001:db7:ffff::"));

  const Cidr p127 = *parse_cidr("2001:db8::/127");
  CHECK(p127.contains("2001:db8::1"));
  CHECK_FALSE(p127.contains("2001:db8::2"));

  const Cidr lo6 = *parse_cidr("::1/128");
  CHECK(lo6.contains("::1"));
  CHECK_FALSE(lo6.contains("::"));
  CHECK_FALSE(lo6.contains("::2"));

  // Raw bytes as a socket layer would give them.
  const std::uint8_t v4[4] = {10, 9, 8, 7};
  const std::uint8_t v4_other[4] = {172, 16, 0, 1};
  CHECK(ten.contains(std::span<const std::uint8_t>(v4)));
  CHECK_FALSE(ten.contains(std::span<const std::uint8_t>(v4_other)));
  const std::uint8_t wrong_len[5] = {10, 0, 0, 0, 0};
  CHECK_FALSE(ten.contains(std::span<const std::uint8_t>(wrong_len)));
}

TEST_CASE("net: parse_host_port") {
  struct Good {
    const char* text;
    bool allow_hostname;
    const char* host;
    int port;
    bool v6;
    bool ip;
  };
  const Good good[] = {
      {"127.0.0.1:10025", false, "127.0.0.1", 10025, false, true},
      {"0.0.0.0:0", false, "0.0.0.0", 0, false, true},
      {"[::1]:25", false, "::1", 25, true, true},
      {"[0:0::1]:65535", false, "::1", 65535, true, true},  // canonical form
      {"[::ffff:127.0.0.1]:25", false, "::ffff:127.0.0.1", 25, true, true},
      {"MX.Example.COM:25", true, "mx.example.com", 25, false, false},
      {"localhost:10026", true, "localhost", 10026, false, false},
      {"127.0.0.1:25", true, "127.0.0.1", 25, false, true},
  };
  for (const Good& g : good) {
    INFO(g.text);
    auto hp = parse_host_port(g.text, g.allow_hostname);
    REQUIRE(hp);
    CHECK(hp->host == g.host);
    CHECK(hp->port == g.port);
    CHECK(hp->is_ipv6_literal == g.v6);
    CHECK(hp->is_ip_literal == g.ip);
  }
  CHECK(parse_host_port("[::1]:25", false)->to_string() == "[::1]:25");

  struct Bad {
    const char* text;
    bool allow_hostname;
    const char* why_part;
  };
  const Bad bad[] = {
      {"127.0.0.1", false, "missing port"},
      {"127.0.0.1:", false, "missing port"},
      {"127.0.0.1:70000", false, "0 to 65535"},
      {"127.0.0.1:123456", false, "0 to 65535"},
      {"127.0.0.1:-1", false, "0 to 65535"},
      {"127.0.0.1:2 5", false, "0 to 65535"},
      {"::1:25", false, "brackets"},
      {"::1", false, "brackets"},
      {"[::1]", false, "missing port"},
      {"[::1:25", false, "missing ']'"},
      {"[127.0.0.1]:25", false, "IPv6"},
      {"[fe80::1%eth0]:25", false, "IPv6"},
      {"localhost:25", false, "IP address"},
      {":25", true, "missing host"},
      {"256.1.1.1:25", true, "not a valid IPv4 address or hostname"},
      {"bad_name.example:25", true, "bad hostname"},
      {"-lead.example:25", true, "bad hostname"},
      {"a..b:25", true, "bad hostname"},
  };
  for (const Bad& b : bad) {
    INFO(b.text);
    std::string why;
    CHECK_FALSE(parse_host_port(b.text, b.allow_hostname, &why));
    CHECK(why.find(b.why_part) != std::string::npos);
  }
}

TEST_CASE("net: normalize_domain") {
  CHECK(normalize_domain("Example.COM") == "example.com");
  CHECK(normalize_domain("xn--bcher-kva.example") == "xn--bcher-kva.example");
  CHECK(normalize_domain("a-b.c0") == "a-b.c0");
  CHECK(normalize_domain(std::string(63, 'a') + ".com"));
  CHECK_FALSE(normalize_domain(std::string(64, 'a') + ".com"));
  std::string long_ok;  // 4 * 63 + 3 dots = 255 > 253
  for (int i = 0; i < 3; ++i) long_ok += std::string(63, 'a') + ".";
  long_ok += std::string(61, 'a');  // 3*64 + 61 = 253
  CHECK(long_ok.size() == 253);
  CHECK(normalize_domain(long_ok));
  CHECK_FALSE(normalize_domain(long_ok + "a"));
  for (const char* bad : {"", ".", "example.com.", ".example.com", "a..b", "-a.com", "a-.com",
                          "under_score.com", "sp ace.com", "b\xc3\xbc" "cher.example", "a@b.com"}) {
    INFO(bad);
    CHECK_FALSE(normalize_domain(bad));
  }
  std::string why;
  CHECK_FALSE(normalize_domain("b\xc3\xbc" "cher.example", &why));
  CHECK(why.find("A-label") != std::string::npos);
}

// --- format ------------------------------------------------------------------------------------

TEST_CASE("format: with and without line, with and without key") {
  CHECK(format({"f.toml", 3, 7, "listener[1].listen", "boom"}) == "f.toml:3:7: listener[1].listen: boom");
  CHECK(format({"f.toml", 0, 0, "key_file", "boom"}) == "f.toml: key_file: boom");
  CHECK(format({"f.toml", 2, 5, "", "syntax"}) == "f.toml:2:5: syntax");
  CHECK(format({"f.toml", 0, 0, "", "cannot open"}) == "f.toml: cannot open");
}

// --- Loader: values ------------------------------------------------------------------------------

TEST_CASE("config: minimal document gets the documented defaults") {
  const Config c = require_ok(load(doc()));
  CHECK(c.source == "t.toml");
  CHECK(c.key_file == "/etc/batv/keys.toml");
  CHECK(c.lifetime_days == 7);
  CHECK(c.hash == HashSetting::exact);
  CHECK(c.threads == 0);
  CHECK(c.domains.sign == std::vector<std::string>{"example.com"});
  REQUIRE(c.listeners.size() == 1);
  CHECK(c.listeners[0].role == Role::outbound);
  CHECK(c.listeners[0].listen.to_string() == "127.0.0.1:10025");
  CHECK(c.listeners[0].upstream.to_string() == "127.0.0.1:10026");
  CHECK(c.signing.exempt_senders.empty());
  CHECK(c.inbound.mode == InboundMode::enforce);
  CHECK(c.inbound.exempt_local_parts == std::vector<std::string>{"postmaster", "abuse"});
  CHECK(c.inbound.accept_untagged_from.empty());
  CHECK_FALSE(c.inbound.mailer_daemon_is_bounce);
  CHECK(c.logging.level == LogLevel::info);
  CHECK(c.logging.target == LogTarget::stderr_);
  CHECK(c.logging.syslog_facility == SyslogFacility::mail);
  CHECK_FALSE(c.metrics.listen.has_value());
}

TEST_CASE("config: domains are lowercased; verify defaults to sign") {
  const std::string text =
      "key_file = \"k\"\n[domains]\nsign = [\"Example.COM\", \"xn--bcher-kva.example\"]\n"
      "[[listener]]\nrole = \"outbound\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n";
  const Config c = require_ok(load(text));
  const std::vector<std::string> want{"example.com", "xn--bcher-kva.example"};
  CHECK(c.domains.sign == want);
  CHECK(c.domains.verify == want);

  const std::string text2 =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\nverify = [\"Example.NET\"]\n"
      "[[listener]]\nrole = \"outbound\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n";
  const Config c2 = require_ok(load(text2));
  CHECK(c2.domains.verify == std::vector<std::string>{"example.net"});
}

TEST_CASE("config: allow_clients defaults depend on the role") {
  const std::string text = doc("",
                               "[[listener]]\nrole = \"inbound\"\nlisten = \"[::]:2525\"\nupstream = \"mx.example.com:25\"\n"
                               "[[listener]]\nrole = \"inbound\"\nlisten = \"0.0.0.0:2526\"\nupstream = \"127.0.0.1:25\"\n"
                               "allow_clients = [\"192.0.2.0/24\"]\n");
  const Config c = require_ok(load(text));
  REQUIRE(c.listeners.size() == 3);
  const auto& out = c.listeners[0].allow_clients;
  REQUIRE(out.size() == 2);
  CHECK(out[0].to_string() == "127.0.0.0/8");
  CHECK(out[1].to_string() == "::1/128");
  const auto& in = c.listeners[1].allow_clients;
  REQUIRE(in.size() == 2);
  CHECK(in[0].to_string() == "0.0.0.0/0");
  CHECK(in[1].to_string() == "::/0");
  CHECK(c.listeners[1].listen.is_ipv6_literal);
  CHECK(c.listeners[1].upstream.host == "mx.example.com");
  REQUIRE(c.listeners[2].allow_clients.size() == 1);
  CHECK(c.listeners[2].allow_clients[0].to_string() == "192.0.2.0/24");
}

TEST_CASE("config: an outbound listener open to everyone needs allow_authenticated") {
  const std::string head = "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n"
                           "[[listener]]\nrole = \"outbound\"\nlisten = \"0.0.0.0:587\"\nupstream = \"127.0.0.1:25\"\n";
  for (const char* nets : {"[\"0.0.0.0/0\"]", "[\"10.0.0.0/8\", \"::/0\"]"}) {
    const LoadResult r = load(head + "allow_clients = " + nets + "\n");
    REQUIRE(r.errors.size() == 1);
    CHECK(r.errors[0].key == "listener[0].allow_clients");
    CHECK(r.errors[0].line == 8);
    CHECK(r.errors[0].message.find("open relay") != std::string::npos);
  }
  require_ok(load(head + "allow_clients = [\"0.0.0.0/0\"]\nallow_authenticated = true\n"));
  require_ok(load(head + "allow_clients = [\"10.0.0.0/8\"]\n"));
}

TEST_CASE("config: listen port 0 may repeat; other sections parse") {
  const std::string text = doc(
      "lifetime_days = 10\nhash = \"lowercase-local\"\nthreads = 4\n",
      "[[listener]]\nrole = \"inbound\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n"
      "[[listener]]\nrole = \"inbound\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:25\"\n"
      "[signing]\nexempt_senders = [\"List-Owner@Lists.Example.COM\", \"@Example.ORG\"]\n"
      "exempt_destinations = [\"@lists.example.net\"]\n"
      "[inbound]\nmode = \"monitor\"\nexempt_local_parts = [\"Abuse\", \"NoReply\"]\n"
      "accept_untagged_from = [\"192.0.2.0/24\", \"2001:db8::/32\"]\nmailer_daemon_is_bounce = true\n"
      "[logging]\nlevel = \"debug\"\ntarget = \"syslog\"\nsyslog_facility = \"local3\"\n"
      "[metrics]\nlisten = \"[::1]:9464\"\n");
  const Config c = require_ok(load(text));
  CHECK(c.lifetime_days == 10);
  CHECK(c.hash == HashSetting::lowercase_local);
  CHECK(c.threads == 4);
  CHECK(c.listeners.size() == 3);
  REQUIRE(c.signing.exempt_senders.size() == 2);
  CHECK(c.signing.exempt_senders[0].local_part == "List-Owner");  // local part kept as written
  CHECK(c.signing.exempt_senders[0].domain == "lists.example.com");
  CHECK(c.signing.exempt_senders[0].matches("List-Owner@LISTS.example.com"));
  CHECK_FALSE(c.signing.exempt_senders[0].matches("list-owner@lists.example.com"));
  CHECK(c.signing.exempt_senders[1].local_part.empty());
  CHECK(c.signing.exempt_senders[1].matches("anyone@example.org"));
  CHECK_FALSE(c.signing.exempt_senders[1].matches("anyone@sub.example.org"));
  CHECK_FALSE(c.signing.exempt_senders[1].matches("example.org"));
  CHECK(c.signing.exempt_destinations[0].to_string() == "@lists.example.net");
  CHECK(c.inbound.mode == InboundMode::monitor);
  // Lowercased, and postmaster always present.
  CHECK(c.inbound.exempt_local_parts == std::vector<std::string>{"postmaster", "abuse", "noreply"});
  REQUIRE(c.inbound.accept_untagged_from.size() == 2);
  CHECK(c.inbound.accept_untagged_from[1].contains("2001:db8::25"));
  CHECK(c.inbound.mailer_daemon_is_bounce);
  CHECK(c.logging.level == LogLevel::debug);
  CHECK(c.logging.target == LogTarget::syslog);
  CHECK(c.logging.syslog_facility == SyslogFacility::local3);
  REQUIRE(c.metrics.listen);
  CHECK(c.metrics.listen->to_string() == "[::1]:9464");
}

TEST_CASE("config: to_string uses the config file spelling") {
  CHECK(to_string(Role::inbound) == "inbound");
  CHECK(to_string(InboundMode::monitor) == "monitor");
  CHECK(to_string(LogLevel::warning) == "warning");
  CHECK(to_string(LogTarget::stderr_) == "stderr");
  CHECK(to_string(SyslogFacility::local7) == "local7");
  CHECK(to_string(HashSetting::lowercase_local) == "lowercase-local");
}

TEST_CASE("config: key_file resolution") {
  CHECK(require_ok(load_config_string(doc(), "t.toml", "/etc/batv/")).key_file == "/etc/batv/keys.toml");
  CHECK(require_ok(load_config_string(doc(), "t.toml", "")).key_file == "keys.toml");
  const std::string abs = "key_file = \"/var/lib/batv/keys.toml\"\n" + doc().substr(doc().find('\n') + 1);
  CHECK(require_ok(load_config_string(abs, "t.toml", "/etc/batv")).key_file == "/var/lib/batv/keys.toml");
  const std::string up = "key_file = \"../secret/keys.toml\"\n" + doc().substr(doc().find('\n') + 1);
  CHECK(require_ok(load_config_string(up, "t.toml", "/etc/batv")).key_file == "/etc/secret/keys.toml");

  // From a file: relative to the config file's directory, not the working directory.
  TempDir dir;
  const fs::path cfg = dir.write("sub/relay.toml", doc());
  const LoadResult r = load_config_file(cfg.string());
  const Config c = require_ok(r);
  CHECK(c.key_file == (dir.path / "sub" / "keys.toml").string());
  CHECK(c.source == cfg.string());
}

TEST_CASE("config: load_config_file failures") {
  TempDir dir;
  const std::string missing = (dir.path / "nope.toml").string();
  LoadResult r = load_config_file(missing);
  REQUIRE(r.errors.size() == 1);
  CHECK_FALSE(r.config);
  CHECK(format(r.errors[0]) == missing + ": cannot open: No such file or directory");

  r = load_config_file(dir.path.string());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].message == "is a directory");

  const fs::path big = dir.write("big.toml", std::string(static_cast<std::size_t>(fixed::max_config_file_bytes) + 1, '#'));
  r = load_config_file(big.string());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].message.find("larger than") != std::string::npos);

  // Syntax errors from a file carry the file name given by the caller.
  const fs::path bad = dir.write("bad.toml", "key_file = \"k\"\n[domains\n");
  r = load_config_file(bad.string());
  REQUIRE(r.errors.size() == 1);
  CHECK(r.errors[0].file == bad.string());
  CHECK(r.errors[0].line == 2);
}

TEST_CASE("config: the example file loads with zero errors and shows every limit's default") {
  const std::string path = std::string(BATV_SOURCE_DIR) + "/conf/batv-relay.example.toml";
  const LoadResult r = load_config_file(path);
  const Config c = require_ok(r);
  CHECK(c.key_file == (fs::path(path).parent_path() / "keys.toml").lexically_normal().string());
  REQUIRE(c.listeners.size() == 2);
  CHECK(c.listeners[0].role == Role::outbound);
  CHECK(c.listeners[1].role == Role::inbound);
  REQUIRE(c.metrics.listen);

  // Every kLimits row appears explicitly, set to its default (keeps the docs in step).
  const toml::table root = toml::parse_file(path);
  for (const Limit& l : kLimits) {
    INFO(dotted(l));
    const toml::node* n = l.section.empty() ? root.get(l.key) : root[l.section][l.key].node();
    REQUIRE(n != nullptr);
    REQUIRE(n->as_integer() != nullptr);
    CHECK(n->as_integer()->get() == l.def);
  }
}

// --- Loader: errors ------------------------------------------------------------------------------

TEST_CASE("errors: TOML syntax error carries file:line:col from toml++") {
  // Line 3 lacks the closing bracket; toml++ reports where it noticed.
  const std::string text = "key_file = \"k\"\n[domains]\nsign = [\"example.com\"\n[[listener]]\n";
  const LoadResult r = load(text);
  REQUIRE(r.errors.size() == 1);
  CHECK_FALSE(r.config);
  const ConfigError& e = r.errors[0];
  CHECK(e.file == "t.toml");
  CHECK(e.key.empty());
  CHECK(e.line >= 3);
  CHECK(e.column >= 1);
  CHECK(format(e).rfind("t.toml:" + std::to_string(e.line) + ":" + std::to_string(e.column) + ": ", 0) == 0);

  check_errors(load("key_file = \n"), {{1, 12, "", "expected value"}});
}

TEST_CASE("errors: unknown keys everywhere, with suggestions") {
  struct Case {
    const char* name;
    std::string text;
    Expect want;
  };
  const Case cases[] = {
      {"top level, typo", doc("lifetme_days = 7\n"),
       {1, 1, "lifetme_days", "unknown key 'lifetme_days'; did you mean 'lifetime_days'?",
        "t.toml:1:1: lifetme_days: unknown key 'lifetme_days'; did you mean 'lifetime_days'?"}},
      {"top level, distance 2", doc("liftime_day = 7\n"),
       {1, 1, "liftime_day", "unknown key 'liftime_day'; did you mean 'lifetime_days'?"}},
      {"top level, distance 3: no suggestion", doc("lftme_days = 7\n"),
       {1, 1, "lftme_days", "", "t.toml:1:1: lftme_days: unknown key 'lftme_days'"}},
      {"abbreviation", doc("", "[inbound]\nexempt_local = []\n"),
       {9, 1, "inbound.exempt_local", "did you mean 'exempt_local_parts'?"}},
      {"top level, transposition", doc("hsah = \"exact\"\n"),
       {1, 1, "hsah", "unknown key 'hsah'; did you mean 'hash'?"}},
      {"top level, plural table", doc("", "[[listeners]]\nrole = \"inbound\"\n"),
       {8, 3, "listeners", "unknown key 'listeners'; did you mean 'listener'?"}},
      {"top level, table typo", doc("", "[limit]\nline_length = 600\n"),
       {8, 2, "limit", "did you mean 'limits'?"}},
      {"nested table", doc("", "[inbound]\nmod = \"enforce\"\n"),
       {9, 1, "inbound.mod", "unknown key 'mod'; did you mean 'mode'?",
        "t.toml:9:1: inbound.mod: unknown key 'mod'; did you mean 'mode'?"}},
      {"limits", doc("", "[limits]\nline_lenght = 600\n"),
       {9, 1, "limits.line_lenght", "did you mean 'line_length'?"}},
      {"timeouts", doc("", "[timeouts]\n  idel = 600\n"), {9, 3, "timeouts.idel", "did you mean 'idle'?"}},
      {"in listener", doc("", "  uptream = \"127.0.0.1:1\"\n"),
       {8, 3, "listener[0].uptream", "unknown key 'uptream'; did you mean 'upstream'?",
        "t.toml:8:3: listener[0].uptream: unknown key 'uptream'; did you mean 'upstream'?"}},
      {"no suggestion when far", doc("colour = 1\n"), {1, 1, "colour", "unknown key 'colour'", "t.toml:1:1: colour: unknown key 'colour'"}},
      {"dotted key inside section", doc("", "[logging]\nsyslog.facility = \"mail\"\n"),
       {9, 1, "logging.syslog", "unknown key 'syslog'"}},
      {"metrics", doc("", "[metrics]\nlisten = \"127.0.0.1:9464\"\nport = 1\n"), {10, 1, "metrics.port", "unknown key 'port'"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    check_errors(load(c.text), {c.want});
  }
}

TEST_CASE("errors: wrong types name what was expected and what was found") {
  struct Case {
    const char* name;
    std::string text;
    Expect want;
  };
  const Case cases[] = {
      {"string for integer", doc("lifetime_days = \"7\"\n"),
       {1, 17, "lifetime_days", "expected an integer, got a string",
        "t.toml:1:17: lifetime_days: expected an integer, got a string"}},
      {"float for integer", doc("", "[limits]\nline_length = 2048.0\n"),
       {9, 15, "limits.line_length", "expected an integer, got a floating-point number"}},
      {"integer for string", doc("hash = 1\n"), {1, 8, "hash", "expected a string, got an integer"}},
      {"string for array", doc("", "[signing]\nexempt_senders = \"a@b.c\"\n"),
       {9, 18, "signing.exempt_senders", "expected an array of strings, got a string"}},
      {"integer in string array", doc("", "allow_clients = [\"::1\", 7]\n"),
       {8, 25, "listener[0].allow_clients[1]", "expected a string, got an integer"}},
      {"string for boolean", doc("", "[inbound]\nmailer_daemon_is_bounce = \"yes\"\n"),
       {9, 27, "inbound.mailer_daemon_is_bounce", "expected a boolean, got a string"}},
      {"integer for table", doc("logging = 3\n"), {1, 11, "logging", "expected a table, got an integer"}},
      {"date for string", doc("", "[logging]\nlevel = 2024-01-01\n"), {9, 9, "logging.level", "expected a string, got a date"}},
  };
  for (const Case& c : cases) {
    INFO(c.name);
    check_errors(load(c.text), {c.want});
  }
  // [listener] instead of [[listener]]: a table where an array of tables belongs.
  const std::string single =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n[listener]\nrole = \"outbound\"\n"
      "listen = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n";
  check_errors(load(single),
               {{4, 1, "listener", "expected an array of tables ([[listener]]), got a table"}});
}

TEST_CASE("errors: bad enum values list the allowed ones") {
  check_errors(load(doc("hash = \"lowercase_local\"\n")),
               {{1, 8, "hash", "",
                 "t.toml:1:8: hash: unknown value 'lowercase_local' (allowed: exact, lowercase-local); "
                 "did you mean 'lowercase-local'?"}});
  check_errors(load(doc("", "[inbound]\nmode = \"reject\"\n")),
               {{9, 8, "inbound.mode", "unknown value 'reject' (allowed: enforce, monitor, off)"}});
  const std::string role =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n[[listener]]\nrole = \"outgoing\"\n"
      "listen = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n";
  check_errors(load(role), {{5, 8, "listener[0].role", "unknown value 'outgoing' (allowed: outbound, inbound, milter, policy, socketmap)"}});
  check_errors(load(doc("", "[logging]\nlevel = \"warn\"\ntarget = \"file\"\nsyslog_facility = \"local8\"\n")),
               {{9, 9, "logging.level", "(allowed: debug, info, warning, error); did you mean 'warning'?"},
                {10, 10, "logging.target", "unknown value 'file' (allowed: stderr, syslog)"},
                {11, 19, "logging.syslog_facility", "(allowed: mail, daemon, local0, local1"}});
}

TEST_CASE("errors: bad CIDR entries, each with its index") {
  check_errors(load(doc("", "allow_clients = [\"10.0.0.0/33\", \"::1/129\", \"10.0.0.300\", \"fe80::/abc\", \"::1/128\"]\n")),
               {{8, 18, "listener[0].allow_clients[0]", "bad network '10.0.0.0/33': prefix length exceeds 32"},
                {8, 33, "listener[0].allow_clients[1]", "bad network '::1/129': prefix length exceeds 128"},
                {8, 44, "listener[0].allow_clients[2]", "bad network '10.0.0.300': not an IPv4 or IPv6 address"},
                {8, 58, "listener[0].allow_clients[3]", "bad network 'fe80::/abc': prefix length must be a number"}});
  check_errors(load(doc("", "[inbound]\naccept_untagged_from = [\"192.0.2.0/24\", \"192.0.2\"]\n")),
               {{9, 41, "inbound.accept_untagged_from[1]", "bad network '192.0.2'"}});
  check_errors(load(doc("", "allow_clients = []\n")),
               {{8, 17, "listener[0].allow_clients", "must list at least one network"}});
}

TEST_CASE("errors: bad host:port values") {
  struct Case {
    const char* listen;
    const char* upstream;
    Expect want;
  };
  const Case cases[] = {
      {"127.0.0.1", "127.0.0.1:10026",
       {6, 10, "listener[0].listen", "bad address '127.0.0.1': missing port",
        "t.toml:6:10: listener[0].listen: bad address '127.0.0.1': missing port: write host:port"}},
      {"127.0.0.1:70000", "127.0.0.1:10026",
       {6, 10, "listener[0].listen", "bad address '127.0.0.1:70000': port must be a number from 0 to 65535"}},
      {"::1:10025", "127.0.0.1:10026",
       {6, 10, "listener[0].listen", "bad address '::1:10025': IPv6 address must be in brackets"}},
      {"localhost:10025", "127.0.0.1:10026",
       {6, 10, "listener[0].listen", "host must be an IP address"}},
      {"127.0.0.1:10025", "mx.example.com",
       {7, 12, "listener[0].upstream", "bad address 'mx.example.com': missing port"}},
      {"127.0.0.1:10025", "mx.example.com:0",
       {7, 12, "listener[0].upstream", "bad address 'mx.example.com:0': port must be 1 to 65535"}},
      {"127.0.0.1:10025", "[::1]",
       {7, 12, "listener[0].upstream", "bad address '[::1]': missing port"}},
      {"127.0.0.1:10025", "2001:db8::1:25",
       {7, 12, "listener[0].upstream", "IPv6 address must be in brackets"}},
      {"127.0.0.1:10025", "127.0.0.1:10025",
       {7, 12, "listener[0].upstream", "upstream 127.0.0.1:10025 is this listener's own address (mail loop)"}},
      {"0.0.0.0:10025", "127.0.0.1:10025",
       {7, 12, "listener[0].upstream", "own address (mail loop)"}},
  };
  for (const Case& c : cases) {
    INFO(c.listen << " -> " << c.upstream);
    check_errors(load(doc_hp(c.listen, c.upstream)), {c.want});
  }
  check_errors(load(doc("", "[metrics]\nlisten = \"metrics.example.com:9464\"\n")),
               {{9, 10, "metrics.listen", "host must be an IP address"}});
}

TEST_CASE("errors: bad domains and exemption entries") {
  const std::string text =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\", \"bad_domain.com\", \"Example.com\", \"b\xc3\xbc" "cher.de\"]\n"
      "verify = [\"example.com.\"]\n"
      "[[listener]]\nrole = \"outbound\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n"
      "[signing]\nexempt_senders = [\"nobody\", \"a b@example.com\", \"x@\"]\n"
      "[inbound]\nexempt_local_parts = [\"post@master\", \"\"]\n";
  check_errors(load(text),
               {{3, 24, "domains.sign[1]", "bad domain 'bad_domain.com': only letters, digits, '-' and '.'"},
                {3, 42, "domains.sign[2]", "duplicate domain 'example.com'"},
                {3, 57, "domains.sign[3]", "bad domain 'b\\xc3\\xbccher.de': non-ASCII character"},
                {4, 11, "domains.verify[0]", "empty label"},
                {10, 19, "signing.exempt_senders[0]", "bad address 'nobody': write user@domain or @domain"},
                {10, 29, "signing.exempt_senders[1]", "space, control character"},
                {10, 48, "signing.exempt_senders[2]", "bad address 'x@': empty domain"},
                {12, 23, "inbound.exempt_local_parts[0]", "bad local part 'post@master'"},
                {12, 38, "inbound.exempt_local_parts[1]", "bad local part ''"}});
}

TEST_CASE("errors: missing required keys point at the enclosing table") {
  // No key_file: top level, 1:1.
  check_errors(load(doc().substr(doc().find('\n') + 1)),
               {{1, 1, "key_file", "required key is missing", "t.toml:1:1: key_file: required key is missing"}});
  // No listener at all.
  check_errors(load("key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n"),
               {{1, 1, "listener", "at least one [[listener]] table is required"}});
  // Listener without role, listen, upstream: reported at its [[listener]] header.
  check_errors(load("key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n\n[[listener]]\n"),
               {{5, 1, "listener[0].role", "required key is missing"},
                {5, 1, "listener[0].listen", "required key is missing"},
                {5, 1, "listener[0].upstream", "required key is missing"}});
  // No [domains] table: top level; empty [domains]: at its header; empty sign: at the array.
  check_errors(load("key_file = \"k\"\n[[listener]]\nrole = \"inbound\"\nlisten = \"127.0.0.1:1\"\nupstream = \"h:2\"\n"),
               {{1, 1, "domains.sign", "required key is missing"}});
  check_errors(load("key_file = \"k\"\n[domains]\nverify = [\"example.com\"]\n[[listener]]\nrole = \"inbound\"\n"
                    "listen = \"127.0.0.1:1\"\nupstream = \"h:2\"\n"),
               {{2, 1, "domains.sign", "required key is missing"}});
  check_errors(load("key_file = \"k\"\n[domains]\nsign = []\n[[listener]]\nrole = \"inbound\"\n"
                    "listen = \"127.0.0.1:1\"\nupstream = \"h:2\"\n"),
               {{3, 8, "domains.sign", "must list at least one domain"}});
  check_errors(load(doc("", "").replace(0, std::string("key_file = \"keys.toml\"").size(), "key_file = \"\"")),
               {{1, 12, "key_file", "must not be empty"}});
}

TEST_CASE("errors: duplicate and overlapping listen addresses") {
  auto two = [](std::string_view a, std::string_view b) {
    return "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\n"
           "[[listener]]\nrole = \"outbound\"\nlisten = \"" + std::string(a) + "\"\nupstream = \"127.0.0.1:10026\"\n"
           "[[listener]]\nrole = \"inbound\"\nlisten = \"" + std::string(b) + "\"\nupstream = \"127.0.0.1:10026\"\n";
  };
  check_errors(load(two("127.0.0.1:10025", "127.0.0.1:10025")),
               {{10, 10, "listener[1].listen", "",
                 "t.toml:10:10: listener[1].listen: address 127.0.0.1:10025 is already used by listener[0].listen (line 6)"}});
  check_errors(load(two("[::1]:25", "[0::1]:25")),
               {{10, 10, "listener[1].listen", "address [::1]:25 is already used by listener[0].listen"}});
  check_errors(load(two("0.0.0.0:2525", "127.0.0.1:2525")),
               {{10, 10, "listener[1].listen", "already used by listener[0].listen"}});
  // Same port, different families or hosts, or port 0: fine.
  require_ok(load(two("127.0.0.1:2525", "[::1]:2525")));
  require_ok(load(two("127.0.0.1:2525", "127.0.0.2:2525")));
  require_ok(load(two("127.0.0.1:2525", "127.0.0.1:2526")));
  require_ok(load(two("127.0.0.1:0", "127.0.0.1:0")));
  // The metrics endpoint must not collide with a listener either.
  check_errors(load(doc("", "[metrics]\nlisten = \"127.0.0.1:10025\"\n")),
               {{9, 10, "metrics.listen", "already used by listener[0].listen"}});
}

TEST_CASE("errors: every error in a file is reported, in file order") {
  const std::string text =
      "key_file = 42\n"                   // 1
      "lifetime_days = 0\n"               // 2
      "hash = \"sha1\"\n"                 // 3
      "[domains]\n"                       // 4
      "sign = [\"bad_domain.com\"]\n"     // 5
      "[[listener]]\n"                    // 6
      "role = \"sideways\"\n"             // 7
      "listen = \"127.0.0.1\"\n"          // 8
      "[limits]\n"                        // 9
      "line_length = 100\n"               // 10
      "colour = 3\n";                     // 11
  check_errors(load(text), {
                               {1, 12, "key_file", "expected a string, got an integer"},
                               {2, 17, "lifetime_days", "0 is out of range (allowed 1 to 30 days)"},
                               {3, 8, "hash", "unknown value 'sha1' (allowed: exact, lowercase-local)"},
                               {5, 9, "domains.sign[0]", "bad domain 'bad_domain.com'"},
                               {6, 1, "listener[0].upstream", "required key is missing"},
                               {7, 8, "listener[0].role", "unknown value 'sideways'"},
                               {8, 10, "listener[0].listen", "missing port"},
                               {10, 15, "limits.line_length", "100 is out of range (allowed 512 to 65536 octets)"},
                               {11, 1, "limits.colour", "unknown key 'colour'"},
                           });
}

TEST_CASE("errors: echoed values are truncated and sanitized") {
  const std::string long_value(300, 'x');
  const LoadResult r = load(doc("hash = \"" + long_value + "\"\n"));
  REQUIRE(r.errors.size() == 1);
  const std::string& m = r.errors[0].message;
  CHECK(m.find(std::string(100, 'x') + "...'") != std::string::npos);
  CHECK(m.find(std::string(101, 'x')) == std::string::npos);

  const LoadResult r2 = load(doc("hash = \"ex\\u0007act\\n\"\n"));
  REQUIRE(r2.errors.size() == 1);
  CHECK(r2.errors[0].message.find("'ex\\x07act\\x0a'") != std::string::npos);
  for (char ch : format(r2.errors[0])) CHECK(static_cast<unsigned char>(ch) >= 0x20);

  const LoadResult r3 = load(doc("\"we\\u001bird\" = 1\n"));
  REQUIRE(r3.errors.size() == 1);
  CHECK(r3.errors[0].key == "we\\x1bird");

  // The TOML parser quotes the character it stumbled on: a C1 control (U+009B, CSI) must not
  // reach the terminal raw either (found by fuzz_config).
  const LoadResult r4 = load(doc("\xc2\x9b" "2J = 1\n"));
  REQUIRE(r4.errors.size() == 1);
  CHECK(r4.errors[0].message.find("\\xc2\\x9b") != std::string::npos);
  for (char ch : format(r4.errors[0])) CHECK((ch >= 0x20 && ch <= 0x7e));
}

// --- the no-hop roles (milter, policy, socketmap) -------------------------------------------------

TEST_CASE("config: no-hop listeners on TCP and unix sockets, with their defaults") {
  const std::string text = doc("",
                               "[[listener]]\nrole = \"milter\"\nlisten = \"unix:/run/batv//milter.sock\"\n"
                               "socket_mode = \"0640\"\nsocket_owner = \"batv\"\nsocket_group = \"postfix\"\n"
                               "originating_daemons = [\"ORIGINATING\", \"submission\"]\nverify = true\n"
                               "allow_clients = [\"192.0.2.0/24\"]\n"
                               "[[listener]]\nrole = \"policy\"\nlisten = \"127.0.0.1:10040\"\n"
                               "[[listener]]\nrole = \"socketmap\"\nlisten = \"[::1]:10041\"\nallow_peers = [\"::1/128\"]\n");
  const Config c = require_ok(load(text));
  REQUIRE(c.listeners.size() == 4);
  const Listener& m = c.listeners[1];
  CHECK(m.role == Role::milter);
  CHECK(m.unix_path == "/run/batv/milter.sock");
  CHECK(m.listen_text() == "unix:/run/batv/milter.sock");
  CHECK(m.socket_mode == 0640);
  CHECK(m.socket_owner == "batv");
  CHECK(m.socket_group == "postfix");
  CHECK(m.originating_daemons == std::vector<std::string>{"ORIGINATING", "submission"});
  CHECK(m.milter_verify);
  REQUIRE(m.allow_clients.size() == 1);
  CHECK(m.allow_peers.empty());  // a unix socket: its mode decides
  const Listener& p = c.listeners[2];
  CHECK(p.role == Role::policy);
  CHECK(p.unix_path.empty());
  CHECK(p.listen_text() == "127.0.0.1:10040");
  CHECK(p.upstream.host.empty());
  CHECK(p.allow_clients.empty());
  REQUIRE(p.allow_peers.size() == 2);  // loopback by default
  CHECK(p.allow_peers[0].to_string() == "127.0.0.0/8");
  CHECK(p.allow_peers[1].to_string() == "::1/128");
  CHECK(p.originating_daemons == std::vector<std::string>{"ORIGINATING"});
  CHECK_FALSE(p.milter_verify);
  CHECK(c.listeners[3].allow_peers.size() == 1);
  CHECK(to_string(Role::socketmap) == "socketmap");
  CHECK(is_proxy(Role::inbound));
  CHECK_FALSE(is_proxy(Role::policy));
}

TEST_CASE("errors: keys of another role, unix sockets and socket attributes") {
  // Lines 8+: the second listener.
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n"
                            "verify = true\n")),
               {{11, 12, "listener[1].upstream", "not used by role = \"policy\""},
                {12, 10, "listener[1].verify", "not used by role = \"policy\""}});
  check_errors(load(doc("", "allow_peers = [\"10.0.0.0/8\"]\n")),
               {{8, 15, "listener[0].allow_peers", "not used by role = \"outbound\""}});
  check_errors(load(doc("", "[[listener]]\nrole = \"inbound\"\nlisten = \"unix:/run/x.sock\"\nupstream = \"127.0.0.1:2\"\n")),
               {{10, 10, "listener[1].listen", "unix sockets are for the milter, policy and socketmap roles"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"milter\"\nlisten = \"unix:run/x.sock\"\n")),
               {{10, 10, "listener[1].listen", "write unix:/absolute/path"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"milter\"\nlisten = \"unix:/" + std::string(120, 'a') + "\"\n")),
               {{10, 10, "listener[1].listen", "at most 107 bytes"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"milter\"\nlisten = \"unix:/run/a.sock\"\n"
                            "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/./a.sock\"\n")),
               {{13, 10, "listener[2].listen", "socket /run/a.sock is already used by listener[1].listen (line 10)"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"127.0.0.1:7\"\nsocket_mode = \"0600\"\n")),
               {{11, 15, "listener[1].socket_mode", "only for listen = \"unix:/path\""}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/p\"\nsocket_mode = \"rw\"\n"
                            "socket_owner = \"a b\"\n")),
               {{11, 15, "listener[1].socket_mode", "write octal permission bits"},
                {12, 16, "listener[1].socket_owner", "bad name 'a b'"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/p\"\nsocket_mode = \"0666\"\n")),
               {{11, 15, "listener[1].socket_mode", "world-writable"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/p\"\nsocket_mode = \"4660\"\n")),
               {{11, 15, "listener[1].socket_mode", "setuid"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/p\"\nsocket_mode = \"0060\"\n")),
               {{11, 15, "listener[1].socket_mode", "owner must be able to write"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"unix:/run/p\"\nallow_peers = [\"::1/128\"]\n")),
               {{11, 15, "listener[1].allow_peers", "not for a unix socket"}});
  check_errors(load(doc("", "[[listener]]\nrole = \"milter\"\nlisten = \"127.0.0.1:9\"\noriginating_daemons = [\"a b\", \"\"]\n")),
               {{11, 24, "listener[1].originating_daemons[0]", "bad daemon name"},
                {11, 31, "listener[1].originating_daemons[1]", "bad daemon name"}});
}

TEST_CASE("listener.accept_proxy_from: proxy roles only, CIDRs, empty by default") {
  const Config none = require_ok(load(doc()));
  CHECK(none.listeners[0].accept_proxy_from.empty());
  const Config c = require_ok(load(doc("", "accept_proxy_from = [\"10.0.0.0/8\", \"2001:db8::7\"]\n")));
  REQUIRE(c.listeners[0].accept_proxy_from.size() == 2);
  CHECK(c.listeners[0].accept_proxy_from[0].contains(std::string_view("10.1.2.3")));
  CHECK(c.listeners[0].accept_proxy_from[1].to_string() == "2001:db8::7/128");
  CHECK_FALSE(c.listeners[0].accept_proxy_from[0].contains(std::string_view("192.0.2.1")));
  check_errors(load(doc("", "[[listener]]\nrole = \"policy\"\nlisten = \"127.0.0.1:1\"\naccept_proxy_from = [\"10.0.0.1\"]\n")),
               {{11, 21, "listener[1].accept_proxy_from", "not used by role = \"policy\""}});
  check_errors(load(doc("", "accept_proxy_from = [\"10.0.0.300\"]\n")),
               {{8, 22, "listener[0].accept_proxy_from[0]", "10.0.0.300"}});
}

TEST_CASE("config: upstream_connect: inbound default mail, connect on request, not for outbound") {
  const std::string inbound = "[[listener]]\nrole = \"inbound\"\nlisten = \"0.0.0.0:2525\"\nupstream = \"127.0.0.1:25\"\n";
  const std::string eager = "[[listener]]\nrole = \"inbound\"\nlisten = \"0.0.0.0:2526\"\nupstream = \"127.0.0.1:25\"\n"
                            "upstream_connect = \"connect\"\n";
  const Config c = require_ok(load(doc("", inbound + eager)));
  REQUIRE(c.listeners.size() == 3);
  CHECK(c.listeners[0].upstream_connect == UpstreamConnect::connect);  // outbound
  CHECK(c.listeners[1].upstream_connect == UpstreamConnect::mail);
  CHECK(c.listeners[2].upstream_connect == UpstreamConnect::connect);
  CHECK(to_string(UpstreamConnect::mail) == "mail");
  // Outbound offers AUTH from the live connection at EHLO: the key is refused there.
  check_errors(load(doc("", "upstream_connect = \"mail\"\n")),
               {{8, 20, "listener[0].upstream_connect", "not used by role = \"outbound\""}});
  check_errors(load(doc("", inbound + "upstream_connect = \"helo\"\n")),
               {{12, 20, "listener[1].upstream_connect", "unknown value 'helo' (allowed: mail, connect)"}});
}
