// The metrics registry (relay/metrics.hpp) and its HTTP endpoint (relay/http.hpp).
//
// Registry tests use their own Metrics instance; the server tests use the process-wide one
// (reset first). The server runs on 127.0.0.1:0 with its io_context on a thread; the client is a
// plain blocking socket with a receive timeout, so every wait is bounded.
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

using namespace batv;
using relay::Metrics;
using Role = conf::Role;

namespace {

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    const std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) {
      out.push_back(text.substr(pos));
      break;
    }
    out.push_back(text.substr(pos, nl - pos));
    pos = nl + 1;
  }
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines_of(text))
    if (l == line) return true;
  return false;
}

// The value of the sample whose name-and-labels part is exactly `series`; nullopt when absent.
std::optional<std::string> value_of(const std::string& text, const std::string& series) {
  for (const auto& l : lines_of(text))
    if (l.size() > series.size() && l.compare(0, series.size(), series) == 0 && l[series.size()] == ' ')
      return l.substr(series.size() + 1);
  return std::nullopt;
}

// A metric or label name: [a-z_]+ at `pos`; advances `pos`.
std::string name_at(const std::string& l, std::size_t& pos) {
  const std::size_t b = pos;
  while (pos < l.size() && ((l[pos] >= 'a' && l[pos] <= 'z') || l[pos] == '_')) ++pos;
  return l.substr(b, pos - b);
}

// A sample line `name{k="v",...} value`: its metric name, or "" when the line is not one.
std::string sample_name(const std::string& l) {
  std::size_t pos = 0;
  const std::string name = name_at(l, pos);
  if (!name.starts_with("batv_")) return {};
  if (pos < l.size() && l[pos] == '{') {
    ++pos;
    for (;;) {
      if (name_at(l, pos).empty() || l.compare(pos, 2, "=\"") != 0) return {};
      pos += 2;
      for (;; ++pos) {  // the value: escapes \\ \" \n only, no raw line feed
        if (pos >= l.size()) return {};
        if (l[pos] == '"') break;
        if (l[pos] == '\\') {
          if (pos + 1 >= l.size() || (l[pos + 1] != '\\' && l[pos + 1] != '"' && l[pos + 1] != 'n')) return {};
          ++pos;
        }
      }
      ++pos;
      if (pos < l.size() && l[pos] == ',') {
        ++pos;
        continue;
      }
      if (pos < l.size() && l[pos] == '}') {
        ++pos;
        break;
      }
      return {};
    }
  }
  if (pos >= l.size() || l[pos] != ' ') return {};
  const std::string value = l.substr(pos + 1);
  if (value == "+Inf" || value == "NaN") return name;
  if (value.empty()) return {};
  char* end = nullptr;
  (void)std::strtod(value.c_str(), &end);
  return end == value.c_str() + value.size() ? name : std::string();
}

// Checks the exposition format: every line is a HELP, a TYPE or a sample; samples follow the
// TYPE of their family; each family is declared once; the text ends with a newline.
void check_format(const std::string& text) {
  REQUIRE(!text.empty());
  CHECK(text.back() == '\n');
  std::vector<std::string> families;
  std::string current, current_type, pending_help;
  for (const auto& l : lines_of(text)) {
    if (l.starts_with("# HELP ")) {
      std::size_t pos = 7;
      pending_help = name_at(l, pos);
      CHECK_MESSAGE((pending_help.starts_with("batv_") && pos + 1 < l.size() && l[pos] == ' '), l);
    } else if (l.starts_with("# TYPE ")) {
      std::size_t pos = 7;
      current = name_at(l, pos);
      current_type = pos < l.size() ? l.substr(pos + 1) : "";
      CHECK_MESSAGE((current_type == "counter" || current_type == "gauge" || current_type == "histogram"), l);
      CHECK_MESSAGE(pending_help == current, "TYPE without its HELP: " << l);
      for (const auto& f : families) CHECK_MESSAGE(f != current, "family declared twice: " << current);
      families.push_back(current);
    } else if (std::string name = sample_name(l); !name.empty()) {
      if (current_type == "histogram")
        for (const std::string suffix : {"_bucket", "_sum", "_count"})
          if (name.size() > suffix.size() && name.ends_with(suffix)) {
            name.resize(name.size() - suffix.size());
            break;
          }
      CHECK_MESSAGE(name == current, "sample outside its family: " << l);
    } else {
      FAIL_CHECK("not exposition format: " << l);
    }
  }
}

}  // namespace

// --- registry ------------------------------------------------------------------------------------

TEST_CASE("metrics: sessions by role, end reasons, unknown reason counts as other") {
  Metrics m;
  m.session_started(Role::outbound);
  m.session_started(Role::outbound);
  m.session_started(Role::inbound);
  m.session_ended(Role::outbound, "quit");
  m.session_ended(Role::inbound, "not a reason");
  m.session_ended(Role::inbound, "none");
  m.session_started(Role::inbound);
  const std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# HELP batv_sessions_current Client sessions open now, by listener role."));
  CHECK(has_line(t, "# TYPE batv_sessions_current gauge"));
  CHECK(has_line(t, "batv_sessions_current{role=\"outbound\"} 1"));
  CHECK(has_line(t, "batv_sessions_current{role=\"inbound\"} 0"));
  CHECK(has_line(t, "# TYPE batv_sessions_total counter"));
  CHECK(has_line(t, "batv_sessions_total{role=\"outbound\"} 2"));
  CHECK(has_line(t, "batv_sessions_total{role=\"inbound\"} 2"));
  CHECK(has_line(t, "batv_session_end_total{role=\"outbound\",reason=\"quit\"} 1"));
  CHECK(has_line(t, "batv_session_end_total{role=\"inbound\",reason=\"other\"} 2"));
  CHECK(has_line(t, "batv_session_end_total{role=\"inbound\",reason=\"quit\"} 0"));
  // Every reason of the fixed list is a series of its own.
  for (const char* r : {"quit", "client_closed", "idle_timeout", "data_timeout", "too_many_errors",
                        "too_many_commands", "too_many_invalid_recipients", "session_timeout", "tls_failed",
                        "upstream_lost", "upstream_unavailable", "shutdown", "access_denied",
                        "too_many_sessions", "io_error", "protocol_error", "request_too_large"}) {
    Metrics one;
    one.session_ended(Role::outbound, r);
    CHECK_MESSAGE(has_line(one.render_prometheus(0),
                           std::string("batv_session_end_total{role=\"outbound\",reason=\"") + r + "\"} 1"),
                  r);
    CHECK(has_line(one.render_prometheus(0), "batv_session_end_total{role=\"outbound\",reason=\"other\"} 0"));
  }
}

TEST_CASE("metrics: messages, recipients, signing, upstream errors, bytes, reloads") {
  Metrics m;
  m.message(Role::outbound, true);
  m.message(Role::outbound, true);
  m.message(Role::outbound, false);
  m.message(Role::inbound, true);
  m.recipient(Role::outbound, "relayed");
  m.recipient(Role::inbound, "accepted");
  m.recipient(Role::inbound, "refused");
  m.recipient(Role::inbound, "refused");
  m.recipient(Role::inbound, "bogus");
  m.signed_with(3);
  m.signed_with(3);
  m.signed_with(7);
  m.signed_with(10);  // not a key id: ignored
  m.signed_with(-1);
  m.not_signed("not_our_domain");
  m.not_signed("null_sender");
  m.not_signed("whatever");
  m.upstream_error("connect");
  m.upstream_error("dot");
  m.upstream_error("dot");
  m.upstream_error("teleport");
  m.bytes(Role::outbound, 1000);
  m.bytes(Role::outbound, 234);
  m.bytes(Role::inbound, 5);
  m.reload(true);
  m.reload(false);
  m.reload(false);
  const std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "batv_messages_total{role=\"outbound\",outcome=\"accepted\"} 2"));
  CHECK(has_line(t, "batv_messages_total{role=\"outbound\",outcome=\"rejected\"} 1"));
  CHECK(has_line(t, "batv_messages_total{role=\"inbound\",outcome=\"accepted\"} 1"));
  CHECK(has_line(t, "batv_messages_total{role=\"inbound\",outcome=\"rejected\"} 0"));
  CHECK(has_line(t, "batv_recipients_total{role=\"outbound\",action=\"relayed\"} 1"));
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"accepted\"} 1"));
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"refused\"} 2"));
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"other\"} 1"));
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"monitored\"} 0"));
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"3\"} 2"));
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"7\"} 1"));
  CHECK_FALSE(value_of(t, "batv_signing_total{decision=\"signed\",key=\"0\"}"));  // no such key, never used
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"not_our_domain\"} 1"));
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"null_sender\"} 1"));
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"other\"} 1"));
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"exempt_destination\"} 0"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"connect\"} 1"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"dot\"} 2"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"other\"} 1"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"bdat\"} 0"));
  CHECK(has_line(t, "batv_bytes_total{role=\"outbound\"} 1234"));
  CHECK(has_line(t, "batv_bytes_total{role=\"inbound\"} 5"));
  CHECK(has_line(t, "# TYPE batv_reloads_total counter"));
  CHECK(has_line(t, "batv_reloads_total{result=\"ok\"} 1"));
  CHECK(has_line(t, "batv_reloads_total{result=\"failed\"} 2"));
  // No keys configured: no key gauges.
  CHECK(t.find("batv_active_key_id") == std::string::npos);
  CHECK(t.find("batv_next_key_switch_timestamp_seconds") == std::string::npos);
  CHECK(t.find("batv_key_age_seconds") == std::string::npos);
}

TEST_CASE("metrics: verification by configured domain; unknown domains count as other") {
  Metrics m;
  m.verdict("example.com", "valid");  // before set_domains: other
  m.set_domains({"example.com", "Example.ORG", "example.com", ""});
  m.verdict("example.com", "valid");
  m.verdict("EXAMPLE.com", "bad_signature");
  m.verdict("example.org", "untagged");
  m.verdict("elsewhere.net", "expired");
  m.verdict("example.com", "strange");
  std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_verify_total counter"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"valid\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"bad_signature\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"other\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.org\",verdict=\"untagged\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.org\",verdict=\"valid\"} 0"));
  CHECK(has_line(t, "batv_verify_total{domain=\"other\",verdict=\"valid\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"other\",verdict=\"expired\"} 1"));
  // Listed once, lowercased, empty names dropped: 2 domains + other, 7 verdicts each.
  std::size_t rows = 0;
  for (const auto& l : lines_of(t)) rows += l.starts_with("batv_verify_total{") ? 1 : 0;
  CHECK(rows == 3 * Metrics::verdicts);

  SUBCASE("a reload keeps the counters of the domains it keeps") {
    m.set_domains({"example.org", "example.net"});
    m.verdict("example.net", "malformed");
    t = m.render_prometheus(0);
    check_format(t);
    CHECK(has_line(t, "batv_verify_total{domain=\"example.org\",verdict=\"untagged\"} 1"));
    CHECK(has_line(t, "batv_verify_total{domain=\"example.net\",verdict=\"malformed\"} 1"));
    CHECK(t.find("domain=\"example.com\"") == std::string::npos);
    m.verdict("example.com", "valid");  // no longer configured: other
    CHECK(has_line(m.render_prometheus(0), "batv_verify_total{domain=\"other\",verdict=\"valid\"} 2"));
    m.set_domains({"example.com"});  // back again: counting goes on, no reset
    CHECK(has_line(m.render_prometheus(0), "batv_verify_total{domain=\"example.com\",verdict=\"valid\"} 1"));
  }
  SUBCASE("label values are escaped") {
    m.set_domains({"we\"ird\\dom\nain", "other"});  // "other" is reserved for unknown domains
    m.verdict("we\"ird\\dom\nain", "valid");
    t = m.render_prometheus(0);
    check_format(t);
    CHECK(has_line(t, R"(batv_verify_total{domain="we\"ird\\dom\nain",verdict="valid"} 1)"));
    std::size_t other_rows = 0;
    for (const auto& l : lines_of(t)) other_rows += l.starts_with("batv_verify_total{domain=\"other\"") ? 1 : 0;
    CHECK(other_rows == Metrics::verdicts);
  }
}

TEST_CASE("metrics: latency histogram buckets are cumulative, with _sum and _count") {
  Metrics m;
  std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_added_latency_seconds histogram"));
  CHECK(has_line(t, "batv_added_latency_seconds_bucket{le=\"+Inf\"} 0"));
  CHECK(has_line(t, "batv_added_latency_seconds_sum 0"));
  CHECK(has_line(t, "batv_added_latency_seconds_count 0"));

  m.latency(0.0005);  // bounds are inclusive (le)
  m.latency(0.003);
  m.latency(3.0);     // above every finite bound
  m.latency(-1.0);    // a clock oddity: counted as 0
  t = m.render_prometheus(0);
  check_format(t);
  const std::vector<std::pair<std::string, int>> expect{
      {"0.0005", 2}, {"0.001", 2}, {"0.0025", 2}, {"0.005", 3}, {"0.01", 3}, {"0.025", 3}, {"0.05", 3},
      {"0.1", 3},    {"0.25", 3},  {"0.5", 3},    {"1", 3},     {"2.5", 3},  {"+Inf", 4}};
  std::vector<std::string> buckets;
  for (const auto& l : lines_of(t))
    if (l.starts_with("batv_added_latency_seconds_bucket")) buckets.push_back(l);
  REQUIRE(buckets.size() == expect.size());
  for (std::size_t i = 0; i < expect.size(); ++i)
    CHECK(buckets[i] == "batv_added_latency_seconds_bucket{le=\"" + expect[i].first + "\"} " +
                            std::to_string(expect[i].second));
  CHECK(has_line(t, "batv_added_latency_seconds_sum 3.0035"));
  CHECK(has_line(t, "batv_added_latency_seconds_count 4"));
}

TEST_CASE("metrics: active key and key ages computed at render time") {
  Metrics m;
  const std::int64_t now = 1'800'000'000;
  m.set_rings({{"default", 3, {{2, now - 86400}, {3, now - 100}, {5, 0}, {6, now + 50}}, 0}});
  std::string t = m.render_prometheus(now);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_active_key_id gauge"));
  CHECK(has_line(t, "batv_active_key_id{ring=\"default\"} 3"));
  CHECK(has_line(t, "# TYPE batv_key_age_seconds gauge"));
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"default\",key=\"2\"} 86400"));
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"default\",key=\"3\"} 100"));
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"default\",key=\"6\"} 0"));  // created in the future: clamped
  CHECK_FALSE(value_of(t, "batv_key_age_seconds{ring=\"default\",key=\"5\"}"));  // creation time unknown
  // Every configured key has a signed series, even before it signs.
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"2\"} 0"));
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"5\"} 0"));
  CHECK_FALSE(value_of(t, "batv_signing_total{decision=\"signed\",key=\"4\"}"));
  t = m.render_prometheus(now + 10);
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"default\",key=\"3\"} 110"));
  // The next staged-key switch: 0 until one is staged.
  CHECK(has_line(t, "# TYPE batv_next_key_switch_timestamp_seconds gauge"));
  CHECK(has_line(t, "batv_next_key_switch_timestamp_seconds{ring=\"default\"} 0"));
  m.set_rings({{"default", 3, {{3, now - 100}}, now + 3600}});
  t = m.render_prometheus(now);
  CHECK(has_line(t, "batv_next_key_switch_timestamp_seconds{ring=\"default\"} 1800003600"));

  m.set_rings({{"default", -1, {}, 0}});
  t = m.render_prometheus(now);
  CHECK(t.find("batv_active_key_id") == std::string::npos);
  CHECK(t.find("batv_key_age_seconds") == std::string::npos);
}

TEST_CASE("metrics: one series per keyring, each with its own signer, ages and next switch") {
  Metrics m;
  const std::int64_t now = 1'800'000'000;
  m.set_rings({{"default", 3, {{3, now - 100}}, 0},
               {"a.example", 1, {{1, now - 50}, {2, now - 10}}, now + 600},
               {"b.example", 7, {{7, now - 5}}, 0}});
  std::string t = m.render_prometheus(now);
  check_format(t);
  CHECK(has_line(t, "batv_active_key_id{ring=\"default\"} 3"));
  CHECK(has_line(t, "batv_active_key_id{ring=\"a.example\"} 1"));
  CHECK(has_line(t, "batv_active_key_id{ring=\"b.example\"} 7"));
  CHECK(has_line(t, "batv_next_key_switch_timestamp_seconds{ring=\"default\"} 0"));
  CHECK(has_line(t, "batv_next_key_switch_timestamp_seconds{ring=\"a.example\"} 1800000600"));
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"a.example\",key=\"2\"} 10"));
  CHECK(has_line(t, "batv_key_age_seconds{ring=\"b.example\",key=\"7\"} 5"));
  // Key ids of every ring have a signed series.
  for (const char* k : {"1", "2", "3", "7"})
    CHECK(has_line(t, std::string("batv_signing_total{decision=\"signed\",key=\"") + k + "\"} 0"));
  // A reload that drops a ring drops its series.
  m.set_rings({{"default", 3, {{3, now - 100}}, 0}});
  t = m.render_prometheus(now);
  CHECK(t.find("a.example") == std::string::npos);
  CHECK(t.find("b.example") == std::string::npos);
}

TEST_CASE("metrics: the sessions limit is a gauge once set, and follows reloads") {
  Metrics m;
  std::string t = m.render_prometheus(0);
  CHECK(t.find("batv_sessions_limit") == std::string::npos);  // not configured yet: no series
  m.set_sessions_limit(500);
  t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_sessions_limit gauge"));
  CHECK(has_line(t, "batv_sessions_limit 500"));
  m.set_sessions_limit(20);
  CHECK(has_line(m.render_prometheus(0), "batv_sessions_limit 20"));
  m.reset_for_tests();
  CHECK(m.render_prometheus(0).find("batv_sessions_limit") == std::string::npos);
}

TEST_CASE("metrics: next-hop connections by proxy role, probes by result") {
  Metrics m;
  m.upstream_connection(conf::Role::inbound);
  m.upstream_connection(conf::Role::inbound);
  m.upstream_connection(conf::Role::outbound);
  m.upstream_probe(true);
  m.upstream_probe(false);
  m.upstream_probe(false);
  const std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_upstream_connections_total counter"));
  CHECK(has_line(t, "batv_upstream_connections_total{role=\"inbound\"} 2"));
  CHECK(has_line(t, "batv_upstream_connections_total{role=\"outbound\"} 1"));
  CHECK(t.find("batv_upstream_connections_total{role=\"milter\"}") == std::string::npos);  // no next hop
  CHECK(has_line(t, "batv_upstream_probes_total{result=\"ok\"} 1"));
  CHECK(has_line(t, "batv_upstream_probes_total{result=\"failed\"} 2"));
  m.reset_for_tests();
  CHECK(has_line(m.render_prometheus(0), "batv_upstream_connections_total{role=\"inbound\"} 0"));
}

TEST_CASE("metrics: concurrent updates and domain swaps lose nothing") {
  Metrics m;
  m.set_domains({"example.com"});
  constexpr int threads = 4, per_thread = 20000;
  std::vector<std::thread> pool;
  std::atomic<bool> go{false};
  for (int i = 0; i < threads; ++i)
    pool.emplace_back([&] {
      while (!go.load()) std::this_thread::yield();
      for (int k = 0; k < per_thread; ++k) {
        m.session_started(Role::outbound);
        m.verdict("example.com", "valid");
        m.latency(0.002);
        m.session_ended(Role::outbound, "quit");
      }
    });
  std::thread swapper([&] {
    while (!go.load()) std::this_thread::yield();
    for (int k = 0; k < 200; ++k) {
      m.set_domains({"example.com", "example.org"});
      m.set_domains({"example.org", "example.com"});
      (void)m.render_prometheus(0);
    }
  });
  go = true;
  for (auto& t : pool) t.join();
  swapper.join();
  const std::string t = m.render_prometheus(0);
  const std::string total = std::to_string(threads * per_thread);
  CHECK(has_line(t, "batv_sessions_total{role=\"outbound\"} " + total));
  CHECK(has_line(t, "batv_sessions_current{role=\"outbound\"} 0"));
  CHECK(has_line(t, "batv_session_end_total{role=\"outbound\",reason=\"quit\"} " + total));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"valid\"} " + total));
  CHECK(has_line(t, "batv_added_latency_seconds_count " + total));
  CHECK(has_line(t, "batv_added_latency_seconds_bucket{le=\"0.0025\"} " + total));
}

TEST_CASE("metrics: reset_for_tests zeroes everything and forgets domains and keys") {
  Metrics m;
  m.set_domains({"example.com"});
  m.set_rings({{"default", 1, {{1, 100}}, 0}});
  m.session_started(Role::inbound);
  m.verdict("example.com", "valid");
  m.latency(1);
  m.reset_for_tests();
  const std::string t = m.render_prometheus(200);
  check_format(t);
  CHECK(has_line(t, "batv_sessions_total{role=\"inbound\"} 0"));
  CHECK(has_line(t, "batv_sessions_current{role=\"inbound\"} 0"));
  CHECK(has_line(t, "batv_added_latency_seconds_count 0"));
  CHECK(t.find("example.com") == std::string::npos);
  CHECK(t.find("batv_active_key_id") == std::string::npos);
  for (const auto& l : lines_of(t))
    if (!l.starts_with("#")) CHECK_MESSAGE(l.ends_with(" 0"), l);
}

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
  relay::metrics().not_signed("not_our_domain");

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

TEST_CASE("metrics: the no-hop roles show once configured, with their answers") {
  Metrics m;
  std::string t = m.render_prometheus(0);
  CHECK(has_line(t, "batv_sessions_total{role=\"outbound\"} 0"));
  CHECK(t.find("role=\"milter\"") == std::string::npos);  // not configured: no series
  CHECK(t.find("batv_requests_total{") == std::string::npos);
  m.set_roles({Role::outbound, Role::milter, Role::policy});
  m.session_started(Role::milter);
  m.session_ended(Role::milter, "protocol_error");
  m.answer(Role::milter, Metrics::Answer::accept);
  m.answer(Role::milter, Metrics::Answer::accept);
  m.answer(Role::policy, Metrics::Answer::reject);
  m.answer(Role::socketmap, Metrics::Answer::found);  // counted, shown once configured
  t = m.render_prometheus(0);
  CHECK(has_line(t, "batv_sessions_total{role=\"milter\"} 1"));
  CHECK(has_line(t, "batv_sessions_current{role=\"milter\"} 0"));
  CHECK(has_line(t, "batv_session_end_total{role=\"milter\",reason=\"protocol_error\"} 1"));
  CHECK(has_line(t, "batv_requests_total{role=\"milter\",answer=\"accept\"} 2"));
  CHECK(has_line(t, "batv_requests_total{role=\"policy\",answer=\"reject\"} 1"));
  CHECK(has_line(t, "batv_requests_total{role=\"policy\",answer=\"dunno\"} 0"));
  CHECK(t.find("batv_requests_total{role=\"outbound\"") == std::string::npos);  // proxy roles answer SMTP
  CHECK(t.find("role=\"socketmap\"") == std::string::npos);
  // A reload that drops a role keeps its series; a new one adds its own.
  m.set_roles({Role::socketmap});
  t = m.render_prometheus(0);
  CHECK(has_line(t, "batv_requests_total{role=\"milter\",answer=\"accept\"} 2"));
  CHECK(has_line(t, "batv_requests_total{role=\"socketmap\",answer=\"found\"} 1"));
  for (std::size_t i = 0; i < Metrics::answers; ++i)
    CHECK_FALSE(Metrics::name(static_cast<Metrics::Answer>(i)).empty());
  CHECK(Metrics::name(Metrics::Answer::notfound) == "notfound");
}
