#include "relay/metrics.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "conf/ascii.hpp"

namespace batv::relay {

namespace {

constexpr auto relaxed = std::memory_order_relaxed;

// --- The families counted by the relay's own enums ---------------------------------------------
// Slot i of a family is the enum value i; the last slot is "other" (kept so that the exposition
// does not change: only SessionEnd::none and out-of-range values reach it, every other value of
// these enums has a slot of its own, so for most families it simply stays 0). The names come from the
// enum's own to_string, so they cannot drift from the log vocabulary; the *_count constants are
// checked against the enums where the enums are defined.

// The label of slot i of a family of N slots over enum E ("other" for the last).
template <class E, std::size_t N>
constexpr std::string_view slot_name(std::size_t i) {
  return i + 1 == N ? std::string_view("other") : to_string(static_cast<E>(i));
}

// The slot of a value of E (count: its number of values); out of range -> "other".
template <class E>
constexpr std::size_t slot_of(E e, std::size_t count) {
  const auto i = static_cast<std::size_t>(e);
  return i < count ? i : count;
}

// SessionEnd::none is no reason: it counts as "other" (and is not rendered as a series of its own).
constexpr std::size_t end_slot(SessionEnd e) {
  return e == SessionEnd::none ? session_end_count : slot_of(e, session_end_count);
}

// The exposition order is the enums' order; these pin what /metrics has always shown (dashboards
// and alerts name these labels: a reordered or renamed value fails here, not in a scrape).
static_assert(to_string(SessionEnd::quit) == "quit" && static_cast<int>(SessionEnd::quit) == 1 &&
              to_string(SessionEnd::request_too_large) == "request_too_large" && session_end_count == 18);
static_assert(to_string(RcptAction::accepted) == "accepted" && to_string(RcptAction::relayed) == "relayed" &&
              static_cast<int>(RcptAction::relayed) == 7 && rcpt_action_count == 8);
static_assert(to_string(crypto::NoSignReason::null_sender) == "null_sender" &&
              static_cast<int>(crypto::NoSignReason::null_sender) == 0 && crypto::no_sign_reason_count == 8);
static_assert(to_string(crypto::Verdict::valid) == "valid" && static_cast<int>(crypto::Verdict::valid) == 0 &&
              crypto::verdict_count == 6);
static_assert(slot_name<crypto::Verdict, Metrics::verdicts>(Metrics::verdicts - 1) == "other");
static_assert(end_slot(SessionEnd::none) == session_end_count && end_slot(SessionEnd::quit) == 1 &&
              end_slot(static_cast<SessionEnd>(session_end_count)) == session_end_count);
static_assert(to_string(UpstreamStage::connect) == "connect" && static_cast<int>(UpstreamStage::connect) == 0 &&
              to_string(UpstreamStage::reply) == "reply" && upstream_stage_count == 10);
static_assert(to_string(ProxyHeaderError::not_proxy) == "not_proxy" &&
              static_cast<int>(ProxyHeaderError::not_proxy) == 0 &&
              to_string(ProxyHeaderError::io_error) == "io_error" && proxy_header_error_count == 14);
static_assert(slot_name<UpstreamStage, Metrics::upstream_stages>(Metrics::upstream_stages - 1) == "other" &&
              slot_name<ProxyHeaderError, Metrics::proxy_header_errors>(Metrics::proxy_header_errors - 1) == "other");
constexpr std::array<std::string_view, Metrics::roles> role_names{"outbound", "inbound", "milter", "policy",
                                                                   "socketmap"};
constexpr std::array<std::string_view, Metrics::answers> answer_names{
    "accept", "reject", "tempfail", "dunno", "prepend", "found", "notfound", "temp", "perm", "other"};
// The `le` label of each bucket, as Prometheus clients write them.
constexpr std::array<std::string_view, Metrics::latency_bounds.size() + 1> bucket_labels{
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf"};

std::size_t role_index(conf::Role r) {
  const auto i = static_cast<std::size_t>(r);
  return i < Metrics::roles ? i : 0;
}

void inc(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) { c.fetch_add(n, relaxed); }

// --- rendering helpers ---

// A label value: backslash, double quote and line feed escaped (exposition format 0.0.4).
void append_label_value(std::string& out, std::string_view v) {
  for (char c : v) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

void append_number(std::string& out, std::uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_number(std::string& out, std::int64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
    return;
  }
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[32];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

void family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out.append("# HELP ").append(name).append(" ").append(help).append("\n");
  out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
}

using Labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

template <class V>
void sample(std::string& out, std::string_view name, Labels labels, V value) {
  out.append(name);
  if (labels.size() > 0) {
    out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) out += ',';
      first = false;
      out.append(k).append("=\"");
      append_label_value(out, v);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  append_number(out, value);
  out += '\n';
}

std::uint64_t get(const std::atomic<std::uint64_t>& c) { return c.load(relaxed); }

}  // namespace

std::string_view Metrics::name(UpstreamStage v) {
  return slot_name<UpstreamStage, upstream_stages>(slot_of(v, upstream_stage_count));
}
std::string_view Metrics::name(ProxyHeaderError v) {
  return slot_name<ProxyHeaderError, proxy_header_errors>(slot_of(v, proxy_header_error_count));
}
std::string_view Metrics::name(Answer v) { return answer_names[static_cast<std::size_t>(v)]; }
std::string_view Metrics::name(Role r) { return role_names[role_index(r)]; }

Metrics::Metrics() {
  tables_.push_back(std::make_unique<const DomainTable>());
  domains_.store(tables_.back().get(), std::memory_order_release);
}

Metrics::~Metrics() = default;

Metrics& metrics() {
  static Metrics m;
  return m;
}

// --- updates -------------------------------------------------------------------------------------

void Metrics::session_started(Role role) {
  const std::size_t r = role_index(role);
  sessions_current_[r].fetch_add(1, relaxed);
  inc(sessions_total_[r]);
}

void Metrics::session_ended(Role role, SessionEnd reason) {
  const std::size_t r = role_index(role);
  sessions_current_[r].fetch_sub(1, relaxed);
  inc(session_end_[r][end_slot(reason)]);
}

void Metrics::message(Role role, bool accepted) { inc(messages_[role_index(role)][accepted ? 0 : 1]); }

void Metrics::recipient(Role role, RcptAction action) {
  inc(recipients_[role_index(role)][slot_of(action, rcpt_action_count)]);
}

void Metrics::signed_with(int key_id) {
  if (key_id >= 0 && static_cast<std::size_t>(key_id) < key_ids) inc(signed_[static_cast<std::size_t>(key_id)]);
}

void Metrics::not_signed(crypto::NoSignReason reason) {
  inc(not_signed_[slot_of(reason, crypto::no_sign_reason_count)]);
}

void Metrics::set_roles(const std::vector<Role>& configured) {
  unsigned bits = 0;
  for (Role r : configured) bits |= 1U << role_index(r);
  roles_shown_.fetch_or(bits, relaxed);
}

void Metrics::answer(Role role, Answer a) {
  inc(answers_[role_index(role)][static_cast<std::size_t>(a)]);
}

void Metrics::verdict(std::string_view domain, crypto::Verdict v) {
  count_verdict(domain, slot_of(v, crypto::verdict_count));
}

void Metrics::count_verdict(std::string_view domain, std::size_t v) {
  for (DomainCounters* d : domains()->domains) {
    if (text::iequals(d->name, domain)) {
      inc(d->by_verdict[v]);
      return;
    }
  }
  inc(verify_other_domain_[v]);
}

void Metrics::set_domains(std::vector<std::string> list) {
  std::lock_guard lock(mu_);
  auto table = std::make_unique<DomainTable>();
  for (std::string& name : list) {
    text::lower_in_place(name);
    if (name.empty() || name == "other") continue;  // "other" is the label of unknown domains
    bool dup = false;
    for (const DomainCounters* d : table->domains) dup = dup || d->name == name;
    if (dup) continue;
    DomainCounters* found = nullptr;
    for (const auto& d : all_domains_)
      if (d->name == name) found = d.get();
    if (!found) {
      all_domains_.push_back(std::make_unique<DomainCounters>());
      all_domains_.back()->name = name;
      found = all_domains_.back().get();
    }
    table->domains.push_back(found);
  }
  tables_.push_back(std::move(table));
  domains_.store(tables_.back().get(), std::memory_order_release);
}

void Metrics::upstream_error(UpstreamStage stage) { inc(upstream_errors_[slot_of(stage, upstream_stage_count)]); }
void Metrics::proxy_header_error(ProxyHeaderError reason) {
  inc(proxy_header_errors_[slot_of(reason, proxy_header_error_count)]);
}
void Metrics::proxy_health_check() { inc(proxy_health_checks_); }

void Metrics::upstream_connection(Role role) { inc(upstream_connections_[role_index(role)]); }

void Metrics::upstream_probe(bool ok) { inc(upstream_probes_[ok ? 0 : 1]); }

void Metrics::bytes(Role role, std::uint64_t n) { inc(bytes_[role_index(role)], n); }

void Metrics::latency(double seconds) {
  if (!(seconds >= 0)) seconds = 0;  // negative or NaN: a clock oddity, counted as zero
  std::size_t i = 0;
  while (i < latency_bounds.size() && seconds > latency_bounds[i]) ++i;
  inc(latency_buckets_[i]);
  constexpr double max_ns = 1e15;  // one sample adds at most ~11.6 days to the sum
  const double ns = std::min(seconds * 1e9, max_ns);
  inc(latency_sum_ns_, static_cast<std::uint64_t>(ns + 0.5));
}

void Metrics::reload(bool ok) { inc(reloads_[ok ? 0 : 1]); }

void Metrics::set_sessions_limit(std::int64_t limit) { sessions_limit_.store(limit, relaxed); }

void Metrics::set_rings(std::vector<RingKeys> rings) {
  std::lock_guard lock(mu_);
  rings_ = std::move(rings);
}

void Metrics::reset_for_tests() {
  std::lock_guard lock(mu_);
  for (auto& g : sessions_current_) g.store(0, relaxed);
  auto zero = [](auto& arr) {
    for (auto& c : arr) c.store(0, relaxed);
  };
  zero(sessions_total_);
  for (auto& a : session_end_) zero(a);
  for (auto& a : messages_) zero(a);
  for (auto& a : recipients_) zero(a);
  zero(signed_);
  zero(not_signed_);
  zero(verify_other_domain_);
  zero(upstream_errors_);
  zero(proxy_header_errors_);
  proxy_health_checks_.store(0, relaxed);
  zero(upstream_connections_);
  zero(upstream_probes_);
  for (auto& a : answers_) zero(a);
  zero(bytes_);
  zero(latency_buckets_);
  latency_sum_ns_.store(0, relaxed);
  zero(reloads_);
  sessions_limit_.store(0, relaxed);
  roles_shown_.store(0b11, relaxed);
  for (auto& d : all_domains_) zero(d->by_verdict);
  tables_.push_back(std::make_unique<const DomainTable>());
  domains_.store(tables_.back().get(), std::memory_order_release);
  rings_.clear();
}

// --- rendering -----------------------------------------------------------------------------------

std::string Metrics::render_prometheus(std::int64_t now_unix) const {
  std::lock_guard lock(mu_);
  std::string out;
  out.reserve(16384);

  family(out, "batv_sessions_current", "gauge", "Client sessions open now, by listener role.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r))
    sample(out, "batv_sessions_current", {{"role", role_names[r]}}, sessions_current_[r].load(relaxed));

  if (const std::int64_t limit = sessions_limit_.load(relaxed); limit > 0) {
    family(out, "batv_sessions_limit", "gauge", "limits.sessions: concurrent sessions over it get 421.");
    sample(out, "batv_sessions_limit", {}, limit);
  }

  family(out, "batv_sessions_total", "counter", "Client sessions started, by listener role.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r))
    sample(out, "batv_sessions_total", {{"role", role_names[r]}}, get(sessions_total_[r]));

  family(out, "batv_session_end_total", "counter", "Client sessions ended, by listener role and end reason.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r))
    for (std::size_t i = 0; i < session_ends; ++i) {
      if (i == static_cast<std::size_t>(SessionEnd::none)) continue;  // counted under "other"
      sample(out, "batv_session_end_total",
             {{"role", role_names[r]}, {"reason", slot_name<SessionEnd, session_ends>(i)}}, get(session_end_[r][i]));
    }

  family(out, "batv_messages_total", "counter",
         "Transactions that reached the end of data, by role and outcome (the next hop's answer).");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r)) {
    sample(out, "batv_messages_total", {{"role", role_names[r]}, {"outcome", "accepted"}}, get(messages_[r][0]));
    sample(out, "batv_messages_total", {{"role", role_names[r]}, {"outcome", "rejected"}}, get(messages_[r][1]));
  }

  family(out, "batv_recipients_total", "counter", "Recipients, by role and action.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r))
    for (std::size_t i = 0; i < rcpt_actions; ++i)
      sample(out, "batv_recipients_total",
             {{"role", role_names[r]}, {"action", slot_name<RcptAction, rcpt_actions>(i)}}, get(recipients_[r][i]));

  family(out, "batv_signing_total", "counter",
         "Outbound signing decisions: signed per key id, or not signed per reason.");
  for (std::size_t k = 0; k < key_ids; ++k) {
    bool known = false;
    for (const auto& ring : rings_)
      for (const auto& key : ring.keys) known = known || key.first == static_cast<int>(k);
    const std::uint64_t n = get(signed_[k]);
    if (!known && n == 0) continue;
    const char digit[2] = {static_cast<char>('0' + k), '\0'};
    sample(out, "batv_signing_total", {{"decision", "signed"}, {"key", digit}}, n);
  }
  for (std::size_t i = 0; i < not_signed_reasons; ++i)
    sample(out, "batv_signing_total",
           {{"decision", "not_signed"}, {"reason", slot_name<crypto::NoSignReason, not_signed_reasons>(i)}},
           get(not_signed_[i]));

  family(out, "batv_verify_total", "counter",
         "Inbound tag verifications, by verify domain (other: outside the configured set) and verdict.");
  for (const DomainCounters* d : domains()->domains)
    for (std::size_t v = 0; v < verdicts; ++v)
      sample(out, "batv_verify_total", {{"domain", d->name}, {"verdict", slot_name<crypto::Verdict, verdicts>(v)}},
             get(d->by_verdict[v]));
  for (std::size_t v = 0; v < verdicts; ++v)
    sample(out, "batv_verify_total", {{"domain", "other"}, {"verdict", slot_name<crypto::Verdict, verdicts>(v)}},
           get(verify_other_domain_[v]));

  family(out, "batv_upstream_errors_total", "counter", "Next-hop failures, by the stage they happened at.");
  for (std::size_t i = 0; i < upstream_stages; ++i)
    sample(out, "batv_upstream_errors_total", {{"stage", slot_name<UpstreamStage, upstream_stages>(i)}},
           get(upstream_errors_[i]));

  family(out, "batv_proxy_header_errors_total", "counter",
         "Connections from listener.accept_proxy_from closed for a bad, slow or missing PROXY header, by reason.");
  for (std::size_t i = 0; i < proxy_header_errors; ++i)
    sample(out, "batv_proxy_header_errors_total", {{"reason", slot_name<ProxyHeaderError, proxy_header_errors>(i)}},
           get(proxy_header_errors_[i]));
  family(out, "batv_proxy_health_checks_total", "counter",
         "Load balancer health checks (PROXY v2 LOCAL, v1 UNKNOWN) answered and closed, no session counted.");
  sample(out, "batv_proxy_health_checks_total", {}, get(proxy_health_checks_));
  family(out, "batv_upstream_connections_total", "counter",
         "Next-hop connections opened by client sessions (not reused ones, not probes), by listener role.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r)) {
    if (!conf::is_proxy(static_cast<conf::Role>(r))) continue;
    sample(out, "batv_upstream_connections_total", {{"role", role_names[r]}}, get(upstream_connections_[r]));
  }

  family(out, "batv_upstream_probes_total", "counter",
         "Capability probes of the next hop (listeners with upstream_connect = \"mail\"), by result.");
  sample(out, "batv_upstream_probes_total", {{"result", "ok"}}, get(upstream_probes_[0]));
  sample(out, "batv_upstream_probes_total", {{"result", "failed"}}, get(upstream_probes_[1]));

  family(out, "batv_requests_total", "counter",
         "Requests answered by the no-hop roles (milter, policy, socketmap), by role and answer.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r)) {
    if (conf::is_proxy(static_cast<conf::Role>(r))) continue;
    for (std::size_t i = 0; i < answers; ++i)
      sample(out, "batv_requests_total", {{"role", role_names[r]}, {"answer", answer_names[i]}}, get(answers_[r][i]));
  }

  family(out, "batv_bytes_total", "counter", "Message bytes relayed to the next hop, by role.");
  for (std::size_t r = 0; r < roles; ++r) if (role_shown(r))
    sample(out, "batv_bytes_total", {{"role", role_names[r]}}, get(bytes_[r]));

  family(out, "batv_added_latency_seconds", "histogram",
         "Latency the relay added to a transaction, in seconds.");
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < latency_buckets_.size(); ++i) {
    cumulative += get(latency_buckets_[i]);
    sample(out, "batv_added_latency_seconds_bucket", {{"le", bucket_labels[i]}}, cumulative);
  }
  sample(out, "batv_added_latency_seconds_sum", {}, static_cast<double>(get(latency_sum_ns_)) / 1e9);
  sample(out, "batv_added_latency_seconds_count", {}, cumulative);

  family(out, "batv_reloads_total", "counter", "Configuration reloads, by result.");
  sample(out, "batv_reloads_total", {{"result", "ok"}}, get(reloads_[0]));
  sample(out, "batv_reloads_total", {{"result", "failed"}}, get(reloads_[1]));

  // Per ring (label ring): a fleet alert compares relays ring by ring.
  bool any_signer = false;
  for (const auto& r : rings_) any_signer = any_signer || r.active_key_id >= 0;
  if (any_signer) {
    family(out, "batv_active_key_id", "gauge", "The id of the key that signs, per keyring.");
    for (const auto& r : rings_)
      if (r.active_key_id >= 0)
        sample(out, "batv_active_key_id", {{"ring", r.ring}}, static_cast<std::int64_t>(r.active_key_id));
    family(out, "batv_next_key_switch_timestamp_seconds", "gauge",
           "When a staged key starts signing (unix seconds), per keyring; 0 when no key is staged.");
    for (const auto& r : rings_)
      if (r.active_key_id >= 0) sample(out, "batv_next_key_switch_timestamp_seconds", {{"ring", r.ring}}, r.next_switch);
  }
  bool any_age = false;
  for (const auto& r : rings_)
    for (const auto& [id, created] : r.keys) {
      if (created <= 0 || id < 0 || id > 9) continue;
      if (!any_age) family(out, "batv_key_age_seconds", "gauge", "Seconds since each key was created, per keyring.");
      any_age = true;
      const char digit[2] = {static_cast<char>('0' + id), '\0'};
      sample(out, "batv_key_age_seconds", {{"ring", r.ring}, {"key", digit}},
             now_unix > created ? now_unix - created : std::int64_t{0});
    }
  return out;
}

}  // namespace batv::relay
