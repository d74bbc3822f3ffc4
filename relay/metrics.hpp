// metrics: the process-wide registry of counters behind GET /metrics (relay/http.hpp), rendered in
// the Prometheus text exposition format 0.0.4, every name prefixed batv_.
//
// Hot path: every update is one relaxed std::atomic<uint64_t> increment on a fixed slot. Label
// sets are known at compile time (roles, reasons, actions, stages, key ids 0-9, verdicts): slots
// live in arrays indexed by enums. The session end reasons, verdicts, not-signed reasons,
// recipient actions, next-hop failure stages and PROXY header errors are the relay's own enums
// (SessionEnd, crypto::Verdict, crypto::NoSignReason, RcptAction, UpstreamStage,
// ProxyHeaderError), counted by value in arrays sized by their *_count and labelled with their own
// to_string: a value added to one of them is a series of its own, never "other". They are counted
// by value only (no text overloads: nothing mirrors the enums by string). Each of these families
// still ends with an "other" series so that /metrics shows what it always showed (dashboards and
// alerts may name it): no enum value reaches it, so it stays 0, except SessionEnd::none (a
// session that ended with no reason set) and a value outside the enum's range (a cast), which
// land there rather than out of bounds. The one runtime-defined label, the verification domain, is a small configured set
// published by set_domains() with a copy-on-write pointer swap: readers load one atomic pointer
// and never lock; tables are never freed while the registry lives, and a domain keeps its
// counters across reloads. Keys (set_rings) and rendering take a mutex: neither is on the hot path.
//
// Thread-safe throughout. Counters are monotonic for the life of the process (reset_for_tests
// aside); sessions_current is a gauge.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "conf/config.hpp"
#include "crypto/prvs.hpp"
#include "relay/policy.hpp"
#include "relay/proxy_header.hpp"
#include "relay/session_end.hpp"

namespace batv::relay {

// Where a next-hop failure happened: the label stage of batv_upstream_errors_total. The steps of
// opening a connection (relay/upstream.hpp: connect, greeting, ehlo, tls), then the command the
// next hop failed at in a session (reply: a reply to anything else, or none).
enum class UpstreamStage { connect, greeting, ehlo, tls, mail, rcpt, data, dot, bdat, reply };
// One more than the last value (checked below; -Wswitch makes to_string name a new one).
inline constexpr std::size_t upstream_stage_count = static_cast<std::size_t>(UpstreamStage::reply) + 1;

constexpr std::string_view to_string(UpstreamStage s) {
  switch (s) {
    case UpstreamStage::connect: return "connect";
    case UpstreamStage::greeting: return "greeting";
    case UpstreamStage::ehlo: return "ehlo";
    case UpstreamStage::tls: return "tls";
    case UpstreamStage::mail: return "mail";
    case UpstreamStage::rcpt: return "rcpt";
    case UpstreamStage::data: return "data";
    case UpstreamStage::dot: return "dot";
    case UpstreamStage::bdat: return "bdat";
    case UpstreamStage::reply: return "reply";
  }
  return "?";
}
static_assert(to_string(static_cast<UpstreamStage>(upstream_stage_count)) == "?" &&
                  to_string(static_cast<UpstreamStage>(upstream_stage_count - 1)) != "?",
              "upstream_stage_count must be one more than the last UpstreamStage");

class Metrics {
 public:
  using Role = conf::Role;

  using UpstreamStage = relay::UpstreamStage;
  using ProxyHeaderError = relay::ProxyHeaderError;  // relay/proxy_header.hpp
  // Fixed label set of the metrics' own; it ends with `other`.
  // What a no-hop role answered one request with (milter: accept/reject/tempfail per RCPT and
  // end of message; policy: dunno/reject/prepend/tempfail; socketmap: found/notfound/temp/perm).
  enum class Answer { accept, reject, tempfail, dunno, prepend, found, notfound, temp, perm, other };

  static constexpr std::size_t roles = 5;  // conf::Role: outbound, inbound, milter, policy, socketmap
  // Series per family: one per enum value, then "other" (its slot is the last).
  static constexpr std::size_t session_ends = session_end_count + 1;  // SessionEnd::none's slot is unused
  static constexpr std::size_t rcpt_actions = rcpt_action_count + 1;
  static constexpr std::size_t not_signed_reasons = crypto::no_sign_reason_count + 1;
  static constexpr std::size_t verdicts = crypto::verdict_count + 1;
  static constexpr std::size_t upstream_stages = upstream_stage_count + 1;
  static constexpr std::size_t answers = static_cast<std::size_t>(Answer::other) + 1;
  static constexpr std::size_t proxy_header_errors = proxy_header_error_count + 1;
  static constexpr std::size_t key_ids = 10;  // the K digit of a prvs tag
  // Upper bounds (seconds, inclusive) of the latency histogram; +Inf follows.
  static constexpr std::array<double, 12> latency_bounds{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                         0.05,   0.1,   0.25,   0.5,   1,    2.5};

  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  // --- sessions ---
  void session_started(Role role);
  // SessionEnd::none counts as "other".
  void session_ended(Role role, SessionEnd reason);

  // --- transactions and recipients ---
  void message(Role role, bool accepted);
  void recipient(Role role, RcptAction action);

  // --- signing (outbound) ---
  void signed_with(int key_id);                     // 0-9; anything else is ignored
  void not_signed(crypto::NoSignReason reason);

  // --- verification (inbound) ---
  // `domain` is matched case-insensitively against set_domains(); unknown -> domain="other".
  void verdict(std::string_view domain, crypto::Verdict verdict);
  // The verify domains (lowercase); call at start-up and on every reload.
  void set_domains(std::vector<std::string> domains);

  // --- no-hop roles (milter, policy, socketmap) ---
  void answer(Role role, Answer a);

  // --- PROXY protocol from a load balancer (listener.accept_proxy_from) ---
  void proxy_header_error(ProxyHeaderError reason);
  void proxy_health_check();  // a v2 LOCAL or v1 UNKNOWN header answered

  // --- next hop, volume, latency ---
  void upstream_error(UpstreamStage stage);
  // A session's new next-hop connection (TCP established; a reused idle one is not counted).
  void upstream_connection(Role role);
  // A capability probe of a listener that connects at MAIL (relay/nexthop_caps.hpp).
  void upstream_probe(bool ok);
  void bytes(Role role, std::uint64_t n);
  void latency(double seconds);                 // added latency of one transaction

  // --- configuration ---
  // The roles of the configured listeners; call at start-up and on every reload. Per-role series
  // are rendered for every role configured since start (a role removed by a reload keeps its
  // counters visible); before any call, for the two proxy roles.
  void set_roles(const std::vector<Role>& configured);
  void reload(bool ok);
  // limits.sessions of the configuration in force (start-up and every reload), exported as the
  // gauge batv_sessions_limit so that alerts can compare batv_sessions_current with it; 0 = unset.
  void set_sessions_limit(std::int64_t limit);
  // One keyring's key state: its name (the label ring="default", or a [[domain_keys]] entry's
  // first domain), the signing key id (-1: none), every key with its creation time (unix
  // seconds, 0 = unknown: no age is exported for it; ages are computed when rendering) and when
  // a staged key takes over signing (unix seconds, 0 when none is staged).
  struct RingKeys {
    std::string ring;
    int active_key_id = -1;
    std::vector<std::pair<int, std::int64_t>> keys;
    std::int64_t next_switch = 0;
  };
  // Every ring of the runtime in force (start-up, every reload and every key switch); replaces
  // the previous set, so a ring removed by a reload disappears from the key gauges.
  void set_rings(std::vector<RingKeys> rings);

  // The whole registry in the text exposition format 0.0.4 (# HELP and # TYPE per family).
  [[nodiscard]] std::string render_prometheus(std::int64_t now_unix) const;

  // Zeroes every counter and forgets domains and keys. Tests only: not atomic as a whole.
  void reset_for_tests();

  // Label text of the metrics' own fixed sets (for tests and the renderer).
  static std::string_view name(UpstreamStage v);
  static std::string_view name(Answer v);
  static std::string_view name(ProxyHeaderError v);
  static std::string_view name(Role r);

 private:
  using Counter = std::atomic<std::uint64_t>;
  struct DomainCounters {
    std::string name;
    std::array<Counter, verdicts> by_verdict{};
  };
  struct DomainTable {
    std::vector<DomainCounters*> domains;  // the configured set, in configuration order
  };

  const DomainTable* domains() const { return domains_.load(std::memory_order_acquire); }
  void count_verdict(std::string_view domain, std::size_t slot);

  std::array<std::atomic<std::int64_t>, roles> sessions_current_{};
  std::array<Counter, roles> sessions_total_{};
  std::array<std::array<Counter, session_ends>, roles> session_end_{};
  std::array<std::array<Counter, 2>, roles> messages_{};  // [role][0 = accepted, 1 = rejected]
  std::array<std::array<Counter, rcpt_actions>, roles> recipients_{};
  std::array<Counter, key_ids> signed_{};
  std::array<Counter, not_signed_reasons> not_signed_{};
  std::array<Counter, verdicts> verify_other_domain_{};
  std::array<Counter, upstream_stages> upstream_errors_{};
  std::array<Counter, roles> upstream_connections_{};
  std::array<Counter, 2> upstream_probes_{};  // [0 = ok, 1 = failed]
  std::array<std::array<Counter, answers>, roles> answers_{};
  std::array<Counter, roles> bytes_{};
  std::array<Counter, proxy_header_errors> proxy_header_errors_{};
  Counter proxy_health_checks_{0};
  std::array<Counter, latency_bounds.size() + 1> latency_buckets_{};  // not cumulative; last: +Inf
  Counter latency_sum_ns_{0};
  std::array<Counter, 2> reloads_{};  // [0 = ok, 1 = failed]
  std::atomic<std::int64_t> sessions_limit_{0};

  std::atomic<unsigned> roles_shown_{0b11};  // bit per conf::Role
  bool role_shown(std::size_t r) const { return (roles_shown_.load(std::memory_order_relaxed) >> r) & 1U; }
  std::atomic<const DomainTable*> domains_;
  mutable std::mutex mu_;  // writers of domains_; keys; rendering
  std::vector<std::unique_ptr<DomainCounters>> all_domains_;   // every domain ever configured
  std::vector<std::unique_ptr<const DomainTable>> tables_;     // every table ever published
  std::vector<RingKeys> rings_;
};

// The process-wide registry.
Metrics& metrics();

}  // namespace batv::relay
