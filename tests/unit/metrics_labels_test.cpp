// The metrics families counted by the relay's own enums (relay/metrics.hpp): every value of
// SessionEnd, RcptAction, crypto::NoSignReason, crypto::Verdict, UpstreamStage and ProxyHeaderError
// is a series of its own named by the enum's to_string, never "other" (they are counted by value
// only: there are no text overloads); the families have exactly one series per value plus "other",
// in the enums' order, and "other" stays 0 (SessionEnd::none aside).
#include <doctest/doctest.h>

#include <cstddef>
#include <string>
#include <vector>

#include "relay/metrics.hpp"

using namespace batv;
using relay::Metrics;
using Role = conf::Role;

namespace {

std::vector<std::string> lines_starting(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string l = text.substr(pos, nl - pos);
    if (l.rfind(prefix, 0) == 0) out.push_back(l);
    pos = nl + 1;
  }
  return out;
}

// The series of one family, in exposition order, as "label=value count" texts.
std::vector<std::string> family(const Metrics& m, const std::string& prefix) {
  return lines_starting(m.render_prometheus(0), prefix);
}

}  // namespace

TEST_CASE("metrics labels: every SessionEnd is its own series; none is other") {
  for (std::size_t i = 0; i < relay::session_end_count; ++i) {
    const auto e = static_cast<relay::SessionEnd>(i);
    const std::string name(to_string(e));
    CAPTURE(name);
    Metrics m;
    m.session_started(Role::outbound);
    m.session_ended(Role::outbound, e);
    const auto rows = family(m, "batv_session_end_total{role=\"outbound\",");
    REQUIRE(rows.size() == relay::session_end_count);  // none is no series: 17 reasons and other
    const std::string counted = e == relay::SessionEnd::none ? "other" : name;
    std::size_t hits = 0;
    for (const std::string& r : rows) {
      const bool hit = r == "batv_session_end_total{role=\"outbound\",reason=\"" + counted + "\"} 1";
      hits += hit ? 1 : 0;
      CHECK((hit || r.ends_with("} 0")));
    }
    CHECK(hits == 1);
    CHECK(rows.back() == "batv_session_end_total{role=\"outbound\",reason=\"other\"} " +
                             std::string(e == relay::SessionEnd::none ? "1" : "0"));
  }
  // Exposition order is the enum's order (none left out).
  Metrics m;
  const auto rows = family(m, "batv_session_end_total{role=\"inbound\",");
  for (std::size_t i = 1; i < relay::session_end_count; ++i)
    CHECK(rows[i - 1] == "batv_session_end_total{role=\"inbound\",reason=\"" +
                             std::string(to_string(static_cast<relay::SessionEnd>(i))) + "\"} 0");
}

TEST_CASE("metrics labels: every RcptAction is its own series") {
  for (std::size_t i = 0; i < relay::rcpt_action_count; ++i) {
    const auto a = static_cast<relay::RcptAction>(i);
    const std::string name(to_string(a));
    CAPTURE(name);
    Metrics m;
    m.recipient(Role::inbound, a);
    m.recipient(Role::inbound, a);
    const auto rows = family(m, "batv_recipients_total{role=\"inbound\",");
    REQUIRE(rows.size() == relay::rcpt_action_count + 1);
    CHECK(rows[i] == "batv_recipients_total{role=\"inbound\",action=\"" + name + "\"} 2");
    CHECK(rows.back() == "batv_recipients_total{role=\"inbound\",action=\"other\"} 0");
  }
}

TEST_CASE("metrics labels: every NoSignReason is its own series") {
  for (std::size_t i = 0; i < crypto::no_sign_reason_count; ++i) {
    const auto r = static_cast<crypto::NoSignReason>(i);
    const std::string name(to_string(r));
    CAPTURE(name);
    Metrics m;
    m.not_signed(r);
    m.not_signed(r);
    const auto rows = family(m, "batv_signing_total{decision=\"not_signed\",");
    REQUIRE(rows.size() == crypto::no_sign_reason_count + 1);
    CHECK(rows[i] == "batv_signing_total{decision=\"not_signed\",reason=\"" + name + "\"} 2");
    CHECK(rows.back() == "batv_signing_total{decision=\"not_signed\",reason=\"other\"} 0");
  }
}

TEST_CASE("metrics labels: every Verdict is its own series, for a configured domain and for other") {
  for (std::size_t i = 0; i < crypto::verdict_count; ++i) {
    const auto v = static_cast<crypto::Verdict>(i);
    const std::string name(to_string(v));
    CAPTURE(name);
    Metrics m;
    m.set_domains({"example.com"});
    m.verdict("Example.COM", v);
    m.verdict("example.com", v);
    m.verdict("elsewhere.example", v);
    const auto ours = family(m, "batv_verify_total{domain=\"example.com\",");
    REQUIRE(ours.size() == Metrics::verdicts);
    CHECK(ours[i] == "batv_verify_total{domain=\"example.com\",verdict=\"" + name + "\"} 2");
    CHECK(ours.back() == "batv_verify_total{domain=\"example.com\",verdict=\"other\"} 0");
    const auto other = family(m, "batv_verify_total{domain=\"other\",");
    REQUIRE(other.size() == Metrics::verdicts);
    CHECK(other[i] == "batv_verify_total{domain=\"other\",verdict=\"" + name + "\"} 1");
  }
}

TEST_CASE("metrics labels: every UpstreamStage is its own series, in the order /metrics always had") {
  for (std::size_t i = 0; i < relay::upstream_stage_count; ++i) {
    const auto s = static_cast<relay::UpstreamStage>(i);
    const std::string name(to_string(s));
    CAPTURE(name);
    Metrics m;
    m.upstream_error(s);
    m.upstream_error(s);
    const auto rows = family(m, "batv_upstream_errors_total{");
    REQUIRE(rows.size() == relay::upstream_stage_count + 1);
    CHECK(rows[i] == "batv_upstream_errors_total{stage=\"" + name + "\"} 2");
    CHECK(rows.back() == "batv_upstream_errors_total{stage=\"other\"} 0");
    CHECK(Metrics::name(s) == name);
  }
  Metrics m;  // the series "other" stays in the output (always 0 since stages are enum values)
  const std::vector<std::string> want{"connect", "greeting", "ehlo", "tls", "mail", "rcpt",
                                      "data",    "dot",      "bdat", "reply", "other"};
  const auto rows = family(m, "batv_upstream_errors_total{");
  REQUIRE(rows.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i)
    CHECK(rows[i] == "batv_upstream_errors_total{stage=\"" + want[i] + "\"} 0");
}

TEST_CASE("metrics labels: every ProxyHeaderError is its own series, in the order /metrics always had") {
  for (std::size_t i = 0; i < relay::proxy_header_error_count; ++i) {
    const auto e = static_cast<relay::ProxyHeaderError>(i);
    const std::string name(to_string(e));
    CAPTURE(name);
    Metrics m;
    m.proxy_header_error(e);
    m.proxy_header_error(e);
    const auto rows = family(m, "batv_proxy_header_errors_total{");
    REQUIRE(rows.size() == relay::proxy_header_error_count + 1);
    CHECK(rows[i] == "batv_proxy_header_errors_total{reason=\"" + name + "\"} 2");
    CHECK(rows.back() == "batv_proxy_header_errors_total{reason=\"other\"} 0");
  }
  // A parse error counts under its own name; "other" stays in the output, at 0.
  Metrics m;
  m.proxy_header_error(relay::from_parse(relay::ProxyError::short_addresses));
  const std::vector<std::string> want{"not_proxy",    "line_too_long", "bad_line",           "bad_address",
                                      "bad_port",     "bad_version",   "bad_command",        "bad_family",
                                      "unsupported_family", "short_addresses", "too_large", "timeout",
                                      "closed",       "io_error",      "other"};
  const auto rows = family(m, "batv_proxy_header_errors_total{");
  REQUIRE(rows.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i)
    CHECK(rows[i] == "batv_proxy_header_errors_total{reason=\"" + want[i] + "\"} " +
                         (want[i] == "short_addresses" ? "1" : "0"));
}
