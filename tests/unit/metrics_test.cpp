// relay/metrics: the registry, each test with its own Metrics instance. Its HTTP endpoint
// (relay/http.hpp) is http_test.cpp.
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

#include "tests/unit/exposition.hpp"
#include "relay/metrics.hpp"

using namespace batv;
using relay::Metrics;
using Role = conf::Role;
using namespace batv::test;


// --- registry ------------------------------------------------------------------------------------

TEST_CASE("metrics: sessions by role, end reasons, SessionEnd::none counts as other") {
  Metrics m;
  m.session_started(Role::outbound);
  m.session_started(Role::outbound);
  m.session_started(Role::inbound);
  m.session_ended(Role::outbound, relay::SessionEnd::quit);
  m.session_ended(Role::inbound, relay::SessionEnd::none);
  m.session_ended(Role::inbound, static_cast<relay::SessionEnd>(relay::session_end_count));  // out of range
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
  // Every reason of the fixed list (in the enum's order after none) is a series of its own.
  const std::vector<std::string> reasons{"quit", "client_closed", "idle_timeout", "data_timeout", "too_many_errors",
                                         "too_many_commands", "too_many_invalid_recipients", "session_timeout",
                                         "tls_failed", "upstream_lost", "upstream_unavailable", "shutdown",
                                         "access_denied", "too_many_sessions", "io_error", "protocol_error",
                                         "request_too_large"};
  REQUIRE(reasons.size() + 1 == relay::session_end_count);
  for (std::size_t i = 0; i < reasons.size(); ++i) {
    const std::string& r = reasons[i];
    const auto e = static_cast<relay::SessionEnd>(i + 1);
    CHECK(to_string(e) == r);
    Metrics one;
    one.session_ended(Role::outbound, e);
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
  m.recipient(Role::outbound, relay::RcptAction::relayed);
  m.recipient(Role::inbound, relay::RcptAction::accepted);
  m.recipient(Role::inbound, relay::RcptAction::refused);
  m.recipient(Role::inbound, relay::RcptAction::refused);
  m.signed_with(3);
  m.signed_with(3);
  m.signed_with(7);
  m.signed_with(10);  // not a key id: ignored
  m.signed_with(-1);
  m.not_signed(crypto::NoSignReason::not_our_domain);
  m.not_signed(crypto::NoSignReason::null_sender);
  m.upstream_error(relay::UpstreamStage::connect);
  m.upstream_error(relay::UpstreamStage::dot);
  m.upstream_error(relay::UpstreamStage::dot);
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
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"other\"} 0"));  // only by enum
  CHECK(has_line(t, "batv_recipients_total{role=\"inbound\",action=\"monitored\"} 0"));
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"3\"} 2"));
  CHECK(has_line(t, "batv_signing_total{decision=\"signed\",key=\"7\"} 1"));
  CHECK_FALSE(value_of(t, "batv_signing_total{decision=\"signed\",key=\"0\"}"));  // no such key, never used
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"not_our_domain\"} 1"));
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"null_sender\"} 1"));
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"other\"} 0"));  // only by enum
  CHECK(has_line(t, "batv_signing_total{decision=\"not_signed\",reason=\"exempt_destination\"} 0"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"connect\"} 1"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"dot\"} 2"));
  CHECK(has_line(t, "batv_upstream_errors_total{stage=\"other\"} 0"));  // only by enum now
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
  using crypto::Verdict;
  m.verdict("example.com", Verdict::valid);  // before set_domains: other
  m.set_domains({"example.com", "Example.ORG", "example.com", ""});
  m.verdict("example.com", Verdict::valid);
  m.verdict("EXAMPLE.com", Verdict::bad_signature);
  m.verdict("example.org", Verdict::untagged);
  m.verdict("elsewhere.net", Verdict::expired);
  std::string t = m.render_prometheus(0);
  check_format(t);
  CHECK(has_line(t, "# TYPE batv_verify_total counter"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"valid\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"bad_signature\"} 1"));
  CHECK(has_line(t, "batv_verify_total{domain=\"example.com\",verdict=\"other\"} 0"));  // only by enum
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
    m.verdict("example.net", Verdict::malformed);
    t = m.render_prometheus(0);
    check_format(t);
    CHECK(has_line(t, "batv_verify_total{domain=\"example.org\",verdict=\"untagged\"} 1"));
    CHECK(has_line(t, "batv_verify_total{domain=\"example.net\",verdict=\"malformed\"} 1"));
    CHECK(t.find("domain=\"example.com\"") == std::string::npos);
    m.verdict("example.com", Verdict::valid);  // no longer configured: other
    CHECK(has_line(m.render_prometheus(0), "batv_verify_total{domain=\"other\",verdict=\"valid\"} 2"));
    m.set_domains({"example.com"});  // back again: counting goes on, no reset
    CHECK(has_line(m.render_prometheus(0), "batv_verify_total{domain=\"example.com\",verdict=\"valid\"} 1"));
  }
  SUBCASE("label values are escaped") {
    m.set_domains({"we\"ird\\dom\nain", "other"});  // "other" is reserved for unknown domains
    m.verdict("we\"ird\\dom\nain", Verdict::valid);
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
        m.verdict("example.com", crypto::Verdict::valid);
        m.latency(0.002);
        m.session_ended(Role::outbound, relay::SessionEnd::quit);
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
  m.verdict("example.com", crypto::Verdict::valid);
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

TEST_CASE("metrics: the no-hop roles show once configured, with their answers") {
  Metrics m;
  std::string t = m.render_prometheus(0);
  CHECK(has_line(t, "batv_sessions_total{role=\"outbound\"} 0"));
  CHECK(t.find("role=\"milter\"") == std::string::npos);  // not configured: no series
  CHECK(t.find("batv_requests_total{") == std::string::npos);
  m.set_roles({Role::outbound, Role::milter, Role::policy});
  m.session_started(Role::milter);
  m.session_ended(Role::milter, relay::SessionEnd::protocol_error);
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
