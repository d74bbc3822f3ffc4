// config: see config.hpp. One Loader walks the parsed TOML tree once, records every error with
// its position and dotted key, and fills a Config; the Config is returned only if nothing failed.
#include "conf/config.hpp"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <span>
#include <toml++/toml.h>
#include <utility>

#include "conf/ascii.hpp"

namespace batv::conf {
namespace {

// --- Names of enum values: one table per enum serves parsing and to_string. -------------------

template <class E>
using NameTable = std::span<const std::pair<std::string_view, E>>;

constexpr std::pair<std::string_view, Role> kRoleNames[] = {
    {"outbound", Role::outbound}, {"inbound", Role::inbound}, {"milter", Role::milter},
    {"policy", Role::policy},     {"socketmap", Role::socketmap}};
constexpr std::pair<std::string_view, InboundMode> kModeNames[] = {
    {"enforce", InboundMode::enforce}, {"monitor", InboundMode::monitor}, {"off", InboundMode::off}};
constexpr std::pair<std::string_view, LogLevel> kLevelNames[] = {{"debug", LogLevel::debug},
                                                                 {"info", LogLevel::info},
                                                                 {"warning", LogLevel::warning},
                                                                 {"error", LogLevel::error}};
constexpr std::pair<std::string_view, LogTarget> kTargetNames[] = {{"stderr", LogTarget::stderr_},
                                                                   {"syslog", LogTarget::syslog}};
constexpr std::pair<std::string_view, SyslogFacility> kFacilityNames[] = {
    {"mail", SyslogFacility::mail},     {"daemon", SyslogFacility::daemon},
    {"local0", SyslogFacility::local0}, {"local1", SyslogFacility::local1},
    {"local2", SyslogFacility::local2}, {"local3", SyslogFacility::local3},
    {"local4", SyslogFacility::local4}, {"local5", SyslogFacility::local5},
    {"local6", SyslogFacility::local6}, {"local7", SyslogFacility::local7}};
constexpr std::pair<std::string_view, ForwardClient> kForwardNames[] = {
    {"none", ForwardClient::none}, {"xclient", ForwardClient::xclient},
    {"proxy-v1", ForwardClient::proxy_v1}, {"proxy-v2", ForwardClient::proxy_v2}};
constexpr std::pair<std::string_view, BadSignatureAction> kBadSigNames[] = {
    {"strip", BadSignatureAction::strip}, {"keep", BadSignatureAction::keep}, {"reject", BadSignatureAction::reject}};
constexpr std::pair<std::string_view, UpstreamTls> kUpstreamTlsNames[] = {
    {"none", UpstreamTls::none}, {"opportunistic", UpstreamTls::opportunistic},
    {"required", UpstreamTls::required}, {"verify", UpstreamTls::verify}};
constexpr std::pair<std::string_view, UpstreamConnect> kUpstreamConnectNames[] = {
    {"mail", UpstreamConnect::mail}, {"connect", UpstreamConnect::connect}};
constexpr std::pair<std::string_view, TlsVersion> kTlsVersionNames[] = {
    {"1.2", TlsVersion::tls1_2}, {"1.3", TlsVersion::tls1_3}};
constexpr std::pair<std::string_view, VrfyReply> kVrfyNames[] = {
    {"252", VrfyReply::cannot_verify}, {"502", VrfyReply::disabled}};
constexpr std::pair<std::string_view, HashSetting> kHashNames[] = {
    {"exact", HashSetting::exact}, {"lowercase-local", HashSetting::lowercase_local}};

template <class E>
std::string_view name_of(NameTable<E> table, E v) {
  for (const auto& [name, value] : table)
    if (value == v) return name;
  return "?";
}

// --- Small text helpers --------------------------------------------------------------------------

using text::iequals;
using text::lower;

// Printable ASCII kept, everything else as \xNN; cut at fixed::max_echoed_value_chars input bytes.
std::string printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  const bool cut = s.size() > fixed::max_echoed_value_chars;
  if (cut) s = s.substr(0, fixed::max_echoed_value_chars);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  if (cut) out += "...";
  return out;
}

std::string echo_value(std::string_view s) { return "'" + printable(s) + "'"; }

bool domain_in_list(const std::vector<std::string>& list, const std::string& d) {
  return std::find(list.begin(), list.end(), d) != list.end();
}

// Optimal string alignment distance (Levenshtein plus adjacent transposition), ASCII-case-blind.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  const std::size_t n = a.size(), m = b.size();
  std::vector<std::vector<std::size_t>> d(n + 1, std::vector<std::size_t>(m + 1));
  for (std::size_t i = 0; i <= n; ++i) d[i][0] = i;
  for (std::size_t j = 0; j <= m; ++j) d[0][j] = j;
  for (std::size_t i = 1; i <= n; ++i) {
    for (std::size_t j = 1; j <= m; ++j) {
      const std::size_t cost = lower(a[i - 1]) == lower(b[j - 1]) ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && lower(a[i - 1]) == lower(b[j - 2]) &&
          lower(a[i - 2]) == lower(b[j - 1]))
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[n][m];
}

constexpr std::size_t kMaxSuggestDistance = 2;

// "; did you mean 'x'?" for a candidate that `got` abbreviates (3+ characters), else the closest
// candidate within kMaxSuggestDistance, else "".
std::string suggestion(std::string_view got, std::span<const std::string_view> candidates) {
  if (got.size() > 64) return {};  // no point, and keeps the O(n*m) table small
  std::string_view best;
  std::size_t best_d = kMaxSuggestDistance + 1;
  // An abbreviation ("warn" for "warning") is as likely a slip as a typo.
  if (got.size() >= 3)
    for (std::string_view c : candidates)
      if (c.size() > got.size() && text::istarts_with(c, got)) return "; did you mean '" + std::string(c) + "'?";
  for (std::string_view c : candidates) {
    const std::size_t dist = edit_distance(got, c);
    if (dist < best_d) best_d = dist, best = c;
  }
  if (best.empty()) return {};
  return "; did you mean '" + std::string(best) + "'?";
}

std::string_view type_phrase(toml::node_type t) {
  switch (t) {
    case toml::node_type::none: return "nothing";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a floating-point number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
  }
  return "an unknown type";
}

std::string join(std::string_view prefix, std::string_view key) {
  std::string k = printable(key);
  return prefix.empty() ? k : std::string(prefix) + "." + k;
}
std::string indexed(std::string_view path, std::size_t i) {
  return std::string(path) + "[" + std::to_string(i) + "]";
}

// Wildcard-aware: two listen addresses conflict on bind() when the ports are equal (and non-zero)
// and the hosts are equal or either is the wildcard of the same family.
bool listen_overlaps(const HostPort& a, const HostPort& b) {
  if (a.port == 0 || b.port == 0 || a.port != b.port) return false;
  if (a.is_ipv6_literal != b.is_ipv6_literal) return false;
  if (a.host == b.host) return true;
  const std::string_view any = a.is_ipv6_literal ? "::" : "0.0.0.0";
  return a.host == any || b.host == any;
}

// --- The loader ----------------------------------------------------------------------------------

struct Pos {
  int line = 0;
  int column = 0;
};
Pos pos_of(const toml::source_region& r) {
  return {static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
}
constexpr Pos kTop{1, 1};  // missing top-level keys are reported here

class Loader {
 public:
  Loader(std::string file, std::string base_dir) : file_(std::move(file)), base_dir_(std::move(base_dir)) {}

  std::vector<ConfigError> errors;

  void error(Pos p, std::string key, std::string message) {
    errors.push_back({file_, p.line, p.column, std::move(key), std::move(message)});
  }
  void error(const toml::node& n, std::string key, std::string message) {
    error(pos_of(n.source()), std::move(key), std::move(message));
  }

  Config load(const toml::table& root);

 private:
  std::string file_;
  std::string base_dir_;

  // Each table's allowed keys; unknown ones are reported with a suggestion.
  void check_keys(const toml::table& t, std::string_view path, std::span<const std::string_view> known) {
    for (auto&& [k, v] : t) {
      if (std::find(known.begin(), known.end(), k.str()) != known.end()) continue;
      Pos p = pos_of(k.source());
      if (p.line == 0) p = pos_of(v.source());
      error(p, join(path, k.str()), "unknown key " + echo_value(k.str()) + suggestion(k.str(), known));
    }
  }

  void type_error(const toml::node& n, const std::string& path, std::string_view expected) {
    error(n, path, "expected " + std::string(expected) + ", got " + std::string(type_phrase(n.type())));
  }

  // A sub-table: nullptr when absent (silently) or of the wrong type (with an error).
  const toml::table* sub_table(const toml::table& t, std::string_view key, const std::string& path) {
    const toml::node* n = t.get(key);
    if (!n) return nullptr;
    if (const toml::table* tt = n->as_table()) return tt;
    type_error(*n, path, "a table");
    return nullptr;
  }

  std::optional<std::string> string_value(const toml::node& n, const std::string& path) {
    if (const auto* s = n.as_string()) return s->get();
    type_error(n, path, "a string");
    return std::nullopt;
  }

  // Required string: error at `where` (the enclosing table) when missing.
  std::optional<std::string> required_string(const toml::table& t, std::string_view key,
                                             const std::string& path, Pos where) {
    const toml::node* n = t.get(key);
    if (!n) {
      error(where, path, "required key is missing");
      return std::nullopt;
    }
    return string_value(*n, path);
  }

  template <class E>
  std::optional<E> enum_value(const toml::node& n, const std::string& path, NameTable<E> names) {
    auto s = string_value(n, path);
    if (!s) return std::nullopt;
    std::vector<std::string_view> allowed;
    for (const auto& [name, value] : names) {
      if (name == *s) return value;
      allowed.push_back(name);
    }
    std::string list;
    for (std::string_view a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
    error(n, path, "unknown value " + echo_value(*s) + " (allowed: " + list + ")" + suggestion(*s, allowed));
    return std::nullopt;
  }

  template <class E>
  void optional_enum(const toml::table& t, std::string_view key, const std::string& path,
                     NameTable<E> names, E& out) {
    if (const toml::node* n = t.get(key))
      if (auto v = enum_value(*n, path, names)) out = *v;
  }

  // Integer checked against its kLimits row; the default when absent.
  std::int64_t limited(const toml::table& t, const Limit& l, const std::string& path) {
    const toml::node* n = t.get(l.key);
    if (!n) return l.def;
    const auto* i = n->as_integer();
    if (!i) {
      type_error(*n, path, "an integer");
      return l.def;
    }
    const std::int64_t v = i->get();
    if (v < l.min || v > l.max) {
      error(*n, path, std::to_string(v) + " is out of range (allowed " + std::to_string(l.min) + " to " +
                          std::to_string(l.max) + " " + std::string(l.unit) + ")");
      return l.def;
    }
    return v;
  }

  void optional_bool(const toml::table& t, std::string_view key, const std::string& path, bool& out) {
    const toml::node* n = t.get(key);
    if (!n) return;
    if (const auto* b = n->as_boolean())
      out = b->get();
    else
      type_error(*n, path, "a boolean");
  }

  // Calls f(text, node, element_path) for each string element. Returns the array, or nullptr when
  // absent or not an array (the latter with an error).
  template <class F>
  const toml::array* for_each_string(const toml::table& t, std::string_view key, const std::string& path,
                                     F&& f) {
    const toml::node* n = t.get(key);
    if (!n) return nullptr;
    const toml::array* arr = n->as_array();
    if (!arr) {
      type_error(*n, path, "an array of strings");
      return nullptr;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::node& el = *arr->get(i);
      const std::string el_path = indexed(path, i);
      if (auto s = string_value(el, el_path)) f(std::string_view(*s), el, el_path);
    }
    return arr;
  }

  // Domain list; duplicates are errors (probably a typo for another domain).
  std::optional<std::vector<std::string>> domain_list(const toml::table& t, std::string_view key,
                                                      const std::string& path) {
    std::vector<std::string> out;
    const toml::array* arr = for_each_string(t, key, path, [&](std::string_view s, const toml::node& el,
                                                               const std::string& el_path) {
      std::string why;
      auto d = normalize_domain(s, &why);
      if (!d) {
        error(el, el_path, "bad domain " + echo_value(s) + ": " + why);
        return;
      }
      if (std::find(out.begin(), out.end(), *d) != out.end()) {
        error(el, el_path, "duplicate domain " + echo_value(*d));
        return;
      }
      out.push_back(std::move(*d));
    });
    if (!arr) return std::nullopt;
    return out;
  }

  std::optional<std::vector<Cidr>> cidr_list(const toml::table& t, std::string_view key, const std::string& path) {
    std::vector<Cidr> out;
    const toml::array* arr = for_each_string(t, key, path, [&](std::string_view s, const toml::node& el,
                                                               const std::string& el_path) {
      std::string why;
      if (auto c = parse_cidr(s, &why))
        out.push_back(*c);
      else
        error(el, el_path, "bad network " + echo_value(s) + ": " + why);
    });
    if (!arr) return std::nullopt;
    return out;
  }

  std::vector<AddressPattern> pattern_list(const toml::table& t, std::string_view key, const std::string& path) {
    std::vector<AddressPattern> out;
    for_each_string(t, key, path, [&](std::string_view s, const toml::node& el, const std::string& el_path) {
      const auto at = s.rfind('@');
      if (at == std::string_view::npos) {
        error(el, el_path, "bad address " + echo_value(s) + ": write user@domain or @domain");
        return;
      }
      AddressPattern p;
      const std::string_view local = s.substr(0, at);
      if (local.size() > fixed::max_local_part_length) {
        error(el, el_path, "bad address " + echo_value(s) + ": local part longer than " +
                               std::to_string(fixed::max_local_part_length) + " octets");
        return;
      }
      for (char c : local) {
        const auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '<' || c == '>') {
          error(el, el_path, "bad address " + echo_value(s) + ": space, control character or angle bracket in local part");
          return;
        }
      }
      std::string why;
      auto d = normalize_domain(s.substr(at + 1), &why);
      if (!d) {
        error(el, el_path, "bad address " + echo_value(s) + ": " + why);
        return;
      }
      p.local_part = std::string(local);
      p.domain = std::move(*d);
      out.push_back(std::move(p));
    });
    return out;
  }

  void load_listeners(const toml::table& root, Config& cfg);
  void load_domain_keys(const toml::table& root, Config& cfg);
  // A file name of the config (key_file, domain_keys[i].key_file): non-empty, no NUL, a relative
  // name joined to the config file's directory. Empty (after an error) when it is not usable.
  std::string path_value(const toml::node& n, const std::string& path, const std::string& text);
  void load_listener_tls(const toml::table& t, const std::string& path, Listener& l);
  void load_limits(const toml::table& root, Config& cfg, std::string_view section);
};

// --- [limits] / [timeouts] / top-level numbers: table-driven -------------------------------------

struct Binding {
  std::string_view section, key;
  void (*set)(Config&, std::int64_t);
};
constexpr Binding kBindings[] = {
    {"", "lifetime_days", [](Config& c, std::int64_t v) { c.lifetime_days = static_cast<int>(v); }},
    {"", "threads", [](Config& c, std::int64_t v) { c.threads = static_cast<int>(v); }},
    {"limits", "line_length", [](Config& c, std::int64_t v) { c.limits.line_length = v; }},
    {"limits", "reply_line_length", [](Config& c, std::int64_t v) { c.limits.reply_line_length = v; }},
    {"limits", "reply_lines", [](Config& c, std::int64_t v) { c.limits.reply_lines = v; }},
    {"limits", "recipients_per_message", [](Config& c, std::int64_t v) { c.limits.recipients_per_message = v; }},
    {"limits", "message_size", [](Config& c, std::int64_t v) { c.limits.message_size = v; }},
    {"limits", "errors_per_session", [](Config& c, std::int64_t v) { c.limits.errors_per_session = v; }},
    {"limits", "sessions", [](Config& c, std::int64_t v) { c.limits.sessions = v; }},
    {"limits", "sessions_per_client", [](Config& c, std::int64_t v) { c.limits.sessions_per_client = v; }},
    {"limits", "commands_before_mail", [](Config& c, std::int64_t v) { c.limits.commands_before_mail = v; }},
    {"limits", "invalid_recipients_per_session",
     [](Config& c, std::int64_t v) { c.limits.invalid_recipients_per_session = v; }},
    {"limits", "client_names_cached", [](Config& c, std::int64_t v) { c.limits.client_names_cached = v; }},
    {"limits", "upstream_idle_connections",
     [](Config& c, std::int64_t v) { c.limits.upstream_idle_connections = v; }},
    {"limits", "policy_request_size", [](Config& c, std::int64_t v) { c.limits.policy_request_size = v; }},
    {"limits", "policy_attributes", [](Config& c, std::int64_t v) { c.limits.policy_attributes = v; }},
    {"limits", "policy_attribute_length",
     [](Config& c, std::int64_t v) { c.limits.policy_attribute_length = v; }},
    {"limits", "milter_packet", [](Config& c, std::int64_t v) { c.limits.milter_packet = v; }},
    {"limits", "proxy_header_size", [](Config& c, std::int64_t v) { c.limits.proxy_header_size = v; }},
    {"timeouts", "idle", [](Config& c, std::int64_t v) { c.timeouts.idle = std::chrono::seconds(v); }},
    {"timeouts", "command", [](Config& c, std::int64_t v) { c.timeouts.command = std::chrono::seconds(v); }},
    {"timeouts", "session", [](Config& c, std::int64_t v) { c.timeouts.session = std::chrono::seconds(v); }},
    {"timeouts", "data", [](Config& c, std::int64_t v) { c.timeouts.data = std::chrono::seconds(v); }},
    {"timeouts", "upstream_connect",
     [](Config& c, std::int64_t v) { c.timeouts.upstream_connect = std::chrono::seconds(v); }},
    {"timeouts", "upstream_reply",
     [](Config& c, std::int64_t v) { c.timeouts.upstream_reply = std::chrono::seconds(v); }},
    {"timeouts", "upstream_data_reply",
     [](Config& c, std::int64_t v) { c.timeouts.upstream_data_reply = std::chrono::seconds(v); }},
    {"timeouts", "shutdown_grace",
     [](Config& c, std::int64_t v) { c.timeouts.shutdown_grace = std::chrono::seconds(v); }},
    {"timeouts", "upstream_idle",
     [](Config& c, std::int64_t v) { c.timeouts.upstream_idle = std::chrono::seconds(v); }},
    {"timeouts", "client_name_ttl",
     [](Config& c, std::int64_t v) { c.timeouts.client_name_ttl = std::chrono::seconds(v); }},
    {"timeouts", "policy_idle", [](Config& c, std::int64_t v) { c.timeouts.policy_idle = std::chrono::seconds(v); }},
    {"timeouts", "policy_request",
     [](Config& c, std::int64_t v) { c.timeouts.policy_request = std::chrono::seconds(v); }},
    {"timeouts", "socketmap_idle",
     [](Config& c, std::int64_t v) { c.timeouts.socketmap_idle = std::chrono::seconds(v); }},
    {"timeouts", "socketmap_request",
     [](Config& c, std::int64_t v) { c.timeouts.socketmap_request = std::chrono::seconds(v); }},
    {"timeouts", "milter_idle", [](Config& c, std::int64_t v) { c.timeouts.milter_idle = std::chrono::seconds(v); }},
    {"timeouts", "milter_command",
     [](Config& c, std::int64_t v) { c.timeouts.milter_command = std::chrono::seconds(v); }},
    {"timeouts", "proxy_header", [](Config& c, std::int64_t v) { c.timeouts.proxy_header = std::chrono::seconds(v); }},
};

// Every kLimits row has exactly one binding and vice versa (a new limit cannot be forgotten).
constexpr bool bindings_match_table() {
  if (std::size(kBindings) != kLimits.size()) return false;
  for (const Binding& b : kBindings)
    if (!has_limit(b.section, b.key)) return false;
  for (std::size_t i = 0; i < std::size(kBindings); ++i)
    for (std::size_t j = i + 1; j < std::size(kBindings); ++j)
      if (kBindings[i].section == kBindings[j].section && kBindings[i].key == kBindings[j].key) return false;
  return true;
}
static_assert(bindings_match_table(), "kBindings and kLimits disagree");

void Loader::load_limits(const toml::table& tbl, Config& cfg, std::string_view section) {
  for (const Binding& b : kBindings) {
    if (b.section != section) continue;
    const Limit* l = find_limit(b.section, b.key);
    b.set(cfg, limited(tbl, *l, join(section, b.key)));
  }
}

// --- [[listener]] ----------------------------------------------------------------------------------

// allow_clients when the key is left out: loopback (outbound, milter), everyone (inbound).
constexpr std::array<std::string_view, 2> kLoopback = {"127.0.0.0/8", "::1/128"};
constexpr std::array<std::string_view, 2> kEveryone = {"0.0.0.0/0", "::/0"};

constexpr std::string_view kListenerKeys[] = {
    "role",        "listen",          "upstream",    "allow_clients", "forward_client",
    "tls_cert",    "tls_key",         "require_tls", "implicit_tls",  "tls_min_version",
    "tls_ciphers", "upstream_tls",    "upstream_ca", "upstream_tls_name", "allow_authenticated",
    "plaintext_auth_loopback", "socket_mode", "socket_owner", "socket_group", "allow_peers",
    "originating_daemons", "verify", "accept_proxy_from", "upstream_connect"};

// Keys that only some roles take: a key set on a listener of another role is an error (it would
// be silently ignored otherwise). Keys not listed here apply to every role.
struct RoleKeys {
  std::string_view key;
  bool outbound, inbound, milter, policy, socketmap;
};
constexpr RoleKeys kRoleKeys[] = {
    {"upstream", true, true, false, false, false},
    {"accept_proxy_from", true, true, false, false, false},
    {"allow_clients", true, true, true, false, false},
    {"forward_client", true, true, false, false, false},
    {"tls_cert", true, true, false, false, false},
    {"tls_key", true, true, false, false, false},
    {"require_tls", true, true, false, false, false},
    {"implicit_tls", true, true, false, false, false},
    {"tls_min_version", true, true, false, false, false},
    {"tls_ciphers", true, true, false, false, false},
    {"upstream_tls", true, true, false, false, false},
    {"upstream_ca", true, true, false, false, false},
    {"upstream_tls_name", true, true, false, false, false},
    {"allow_authenticated", true, false, false, false, false},
    {"plaintext_auth_loopback", true, false, false, false, false},
    {"allow_peers", false, false, true, true, true},
    {"originating_daemons", false, false, true, false, false},
    {"verify", false, false, true, false, false},
    // Outbound offers AUTH from the live next-hop connection at EHLO: it connects at connect.
    {"upstream_connect", false, true, false, false, false},
};
bool role_takes(Role r, const RoleKeys& k) {
  switch (r) {
    case Role::outbound: return k.outbound;
    case Role::inbound: return k.inbound;
    case Role::milter: return k.milter;
    case Role::policy: return k.policy;
    case Role::socketmap: return k.socketmap;
  }
  return false;
}
constexpr std::string_view kUnixPrefix = "unix:";
// sockaddr_un.sun_path holds 108 bytes on Linux, NUL included.
constexpr std::size_t kMaxUnixPath = 107;

void Loader::load_listener_tls(const toml::table& t, const std::string& path, Listener& l) {
  auto file_key = [&](std::string_view key, std::string& out) {
    const toml::node* n = t.get(key);
    if (!n) return;
    if (auto v = string_value(*n, path + "." + std::string(key))) {
      if (v->empty()) {
        // upstream_ca = "" is the documented default (the system store); a certificate or key
        // path cannot be empty.
        if (key != "upstream_ca") error(*n, path + "." + std::string(key), "must not be empty (leave the key out)");
        return;
      }
      std::filesystem::path p(*v);
      if (p.is_relative() && !base_dir_.empty()) p = std::filesystem::path(base_dir_) / p;
      out = p.lexically_normal().string();
    }
  };
  file_key("tls_cert", l.tls_cert);
  file_key("tls_key", l.tls_key);
  file_key("upstream_ca", l.upstream_ca);
  if (const toml::node* n = t.get("tls_cert")) {
    const Pos p = pos_of(n->source());
    l.tls_where = file_ + ":" + std::to_string(p.line) + ":" + std::to_string(p.column);
  }
  optional_bool(t, "require_tls", path + ".require_tls", l.require_tls);
  optional_bool(t, "implicit_tls", path + ".implicit_tls", l.implicit_tls);
  optional_bool(t, "allow_authenticated", path + ".allow_authenticated", l.allow_authenticated);
  optional_bool(t, "plaintext_auth_loopback", path + ".plaintext_auth_loopback", l.plaintext_auth_loopback);
  optional_enum<TlsVersion>(t, "tls_min_version", path + ".tls_min_version", kTlsVersionNames, l.tls_min_version);
  optional_enum<UpstreamTls>(t, "upstream_tls", path + ".upstream_tls", kUpstreamTlsNames, l.upstream_tls);
  if (const toml::node* n = t.get("tls_ciphers"))
    if (auto v = string_value(*n, path + ".tls_ciphers")) l.tls_ciphers = *v;
  if (const toml::node* n = t.get("upstream_tls_name")) {
    if (auto v = string_value(*n, path + ".upstream_tls_name"); v && !v->empty()) {
      std::string why;
      if (auto d = normalize_domain(*v, &why)) l.upstream_tls_name = *d;
      else error(*n, path + ".upstream_tls_name", "bad host name " + echo_value(*v) + ": " + why);
    }
  }
  const Pos here = pos_of(t.source());
  if (l.tls_cert.empty() != l.tls_key.empty())
    error(here, path + (l.tls_cert.empty() ? ".tls_cert" : ".tls_key"),
          "tls_cert and tls_key go together: set both or neither");
  if (l.tls_cert.empty() && (l.require_tls || l.implicit_tls))
    error(here, path + (l.implicit_tls ? ".implicit_tls" : ".require_tls"), "needs tls_cert and tls_key");
}

void Loader::load_listeners(const toml::table& root, Config& cfg) {
  const toml::node* n = root.get("listener");
  if (!n) {
    error(kTop, "listener", "at least one [[listener]] table is required");
    return;
  }
  const toml::array* arr = n->as_array();
  if (!arr) {
    error(*n, "listener", "expected an array of tables ([[listener]]), got " + std::string(type_phrase(n->type())));
    return;
  }
  if (arr->empty()) {
    error(*n, "listener", "at least one [[listener]] table is required");
    return;
  }
  struct Seen {
    HostPort addr;          // TCP listeners
    std::string unix_path;  // unix listeners
    std::string path;
    int line;
  };
  std::vector<Seen> seen;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& el = *arr->get(i);
    const std::string path = indexed("listener", i);
    const toml::table* t = el.as_table();
    if (!t) {
      type_error(el, path, "a table");
      continue;
    }
    const Pos here = pos_of(t->source());
    check_keys(*t, path, kListenerKeys);
    Listener l;
    bool ok = true;

    std::optional<Role> role;
    if (const toml::node* rn = t->get("role"))
      role = enum_value<Role>(*rn, path + ".role", kRoleNames);
    else
      error(here, path + ".role", "required key is missing");
    if (role)
      l.role = *role;
    else
      ok = false;

    for (const RoleKeys& rk : kRoleKeys)
      if (role && !role_takes(*role, rk))
        if (const toml::node* kn = t->get(rk.key)) {
          error(*kn, path + "." + std::string(rk.key),
                "not used by role = \"" + std::string(to_string(*role)) + "\" (leave it out)");
          ok = false;
        }
    // An unknown role is checked as an SMTP role (the common case), so its other errors show too.
    const bool proxy = !role || is_proxy(*role);

    if (auto s = required_string(*t, "listen", path + ".listen", here)) {
      const toml::node& ln = *t->get("listen");
      std::string why;
      if (std::string_view(*s).starts_with(kUnixPrefix)) {
        const std::string sock = s->substr(kUnixPrefix.size());
        if (role && proxy) {
          error(ln, path + ".listen", "unix sockets are for the milter, policy and socketmap roles; "
                "an SMTP listener takes host:port");
          ok = false;
        } else if (sock.empty() || sock[0] != '/') {
          error(ln, path + ".listen", "bad address " + echo_value(*s) + ": write unix:/absolute/path");
          ok = false;
        } else if (sock.size() > kMaxUnixPath || sock.find('\0') != std::string::npos) {
          error(ln, path + ".listen", "bad address " + echo_value(*s) + ": the path must be at most " +
                std::to_string(kMaxUnixPath) + " bytes with no NUL");
          ok = false;
        } else {
          const std::string norm = std::filesystem::path(sock).lexically_normal().string();
          for (const Seen& other : seen) {
            if (other.unix_path == norm) {
              error(ln, path + ".listen", "socket " + norm + " is already used by " + other.path + ".listen (line " +
                    std::to_string(other.line) + ")");
              break;
            }
          }
          seen.push_back({{}, norm, path, pos_of(ln.source()).line});
          l.unix_path = norm;
        }
      } else if (auto hp = parse_host_port(*s, /*allow_hostname=*/false, &why)) {
        for (const Seen& other : seen) {
          if (other.unix_path.empty() && listen_overlaps(*hp, other.addr)) {
            error(ln, path + ".listen",
                  "address " + hp->to_string() + " is already used by " + other.path + ".listen (line " +
                      std::to_string(other.line) + ")");
            break;
          }
        }
        seen.push_back({*hp, {}, path, pos_of(ln.source()).line});
        l.listen = std::move(*hp);
      } else {
        error(ln, path + ".listen", "bad address " + echo_value(*s) + ": " + why);
        ok = false;
      }
    } else {
      ok = false;
    }

    // Unix socket file attributes.
    for (std::string_view key : {std::string_view("socket_mode"), std::string_view("socket_owner"),
                                 std::string_view("socket_group")}) {
      const toml::node* kn = t->get(key);
      if (!kn) continue;
      const std::string kpath = path + "." + std::string(key);
      if (l.unix_path.empty()) {
        error(*kn, kpath, "only for listen = \"unix:/path\" (a TCP listener has no socket file)");
        ok = false;
        continue;
      }
      auto v = string_value(*kn, kpath);
      if (!v) continue;
      if (key == "socket_mode") {
        // An octal string ("0660"): TOML has no octal integers that read naturally to admins.
        const bool digits = !v->empty() && v->size() <= 4 &&
                            std::all_of(v->begin(), v->end(), [](char c) { return c >= '0' && c <= '7'; });
        if (!digits) {
          error(*kn, kpath, "bad mode " + echo_value(*v) + ": write octal permission bits such as \"0660\"");
          continue;
        }
        const auto mode = static_cast<std::uint32_t>(std::stoul(*v, nullptr, 8));
        if (mode & 07000) error(*kn, kpath, "bad mode " + echo_value(*v) + ": setuid, setgid and sticky bits make no sense on a socket");
        else if ((mode & 0200) == 0) error(*kn, kpath, "bad mode " + echo_value(*v) + ": the owner must be able to write (connect)");
        else if (mode & 0002) error(*kn, kpath, "bad mode " + echo_value(*v) + ": world-writable lets any local user ask the relay; use a group");
        else l.socket_mode = mode;
      } else {
        const bool name_ok = !v->empty() && v->size() <= 32 && std::all_of(v->begin(), v->end(), [](char c) {
          return text::is_alnum(c) || c == '_' || c == '-' || c == '.';
        });
        if (!name_ok) error(*kn, kpath, "bad name " + echo_value(*v) + ": 1-32 of letters, digits, '_', '-', '.'");
        else (key == "socket_owner" ? l.socket_owner : l.socket_group) = *v;
      }
    }

    if (proxy) {
      if (auto s = required_string(*t, "upstream", path + ".upstream", here)) {
        std::string why;
        const toml::node& un = *t->get("upstream");
        if (auto hp = parse_host_port(*s, /*allow_hostname=*/true, &why)) {
          if (hp->port == 0) {
            error(un, path + ".upstream", "bad address " + echo_value(*s) + ": port must be 1 to 65535");
          } else if (!l.listen.host.empty() && hp->is_ip_literal && listen_overlaps(l.listen, *hp)) {
            error(un, path + ".upstream", "upstream " + hp->to_string() + " is this listener's own address (mail loop)");
          }
          l.upstream = std::move(*hp);
        } else {
          error(un, path + ".upstream", "bad address " + echo_value(*s) + ": " + why);
          ok = false;
        }
      } else {
        ok = false;
      }
    }

    // Outbound relays sign mail as us: only local submitters by default (and the milter signs
    // mail of local clients by default). Inbound faces the Internet (it is the MX's front), so
    // everyone may connect.
    if (auto nets = cidr_list(*t, "allow_clients", path + ".allow_clients")) {
      if (nets->empty() && t->get("allow_clients")->as_array()->empty())
        error(*t->get("allow_clients"), path + ".allow_clients",
              "must list at least one network (leave the key out for the default)");
      l.allow_clients = std::move(*nets);
    } else if (role && !t->get("allow_clients") && (proxy || *role == Role::milter)) {
      for (std::string_view net : *role == Role::inbound ? kEveryone : kLoopback)
        l.allow_clients.push_back(*parse_cidr(net));
    }
    // Load balancers whose connections start with a PROXY protocol header (relay/proxy_header.hpp).
    // An empty list is the default: no peer is trusted to say who the client is.
    if (auto nets = cidr_list(*t, "accept_proxy_from", path + ".accept_proxy_from")) l.accept_proxy_from = std::move(*nets);
    if (auto nets = cidr_list(*t, "allow_peers", path + ".allow_peers")) {
      if (!l.unix_path.empty()) {
        error(*t->get("allow_peers"), path + ".allow_peers",
              "not for a unix socket (its socket_mode, socket_owner and socket_group decide who connects)");
        ok = false;
      } else if (nets->empty() && t->get("allow_peers")->as_array()->empty()) {
        error(*t->get("allow_peers"), path + ".allow_peers",
              "must list at least one network (leave the key out for the default)");
      }
      l.allow_peers = std::move(*nets);
    } else if (role && !proxy && !t->get("allow_peers") && l.unix_path.empty()) {
      for (std::string_view net : kLoopback) l.allow_peers.push_back(*parse_cidr(net));
    }
    if (const toml::node* dn = t->get("originating_daemons")) {
      std::vector<std::string> names;
      for_each_string(*t, "originating_daemons", path + ".originating_daemons",
                      [&](std::string_view v, const toml::node& item, const std::string& item_path) {
        const bool printable = !v.empty() && v.size() <= 64 && std::all_of(v.begin(), v.end(), [](char c) {
          return c > 0x20 && c < 0x7f;
        });
        if (!printable) error(item, item_path, "bad daemon name " + echo_value(v) + ": 1-64 printable characters, no space");
        else names.emplace_back(v);
      });
      if (dn->is_array()) l.originating_daemons = std::move(names);
    }
    optional_bool(*t, "verify", path + ".verify", l.milter_verify);
    // How the next hop learns the real client: inbound fronts an MX that runs SPF and RBL checks
    // on it, so XCLIENT by default (used only when offered); outbound hands mail to our own MTA.
    l.forward_client = role && *role == Role::inbound ? ForwardClient::xclient : ForwardClient::none;
    optional_enum<ForwardClient>(*t, "forward_client", path + ".forward_client", kForwardNames, l.forward_client);
    // Inbound faces Internet clients, many of which never send mail: they should not hold an MX
    // connection each (Postfix smtpd_proxy connects at MAIL too).
    l.upstream_connect = role && *role == Role::inbound ? UpstreamConnect::mail : UpstreamConnect::connect;
    optional_enum<UpstreamConnect>(*t, "upstream_connect", path + ".upstream_connect", kUpstreamConnectNames,
                                   l.upstream_connect);
    load_listener_tls(*t, path, l);
    // An outbound listener open to the whole Internet signs for anyone and relays anywhere: an
    // open relay and a tag oracle. Only with AUTH in front of MAIL may it take everyone.
    if (role && *role == Role::outbound && !l.allow_authenticated && t->get("allow_clients")) {
      for (const Cidr& net : l.allow_clients)
        if (net.prefix == 0) {
          error(*t->get("allow_clients"), path + ".allow_clients",
                net.to_string() + " on an outbound listener makes an open relay that signs for anyone: list "
                "your MTAs' networks, or set allow_authenticated = true");
          ok = false;
          break;
        }
    }
    if (ok) cfg.listeners.push_back(std::move(l));
  }
}

// --- Top level -------------------------------------------------------------------------------------

constexpr std::string_view kTopKeys[] = {"key_file", "lifetime_days", "hash",     "threads",
                                         "domains",  "domain_keys",   "listener", "signing",
                                         "inbound",  "limits",        "timeouts", "logging",
                                         "metrics",  "smtp",          "process"};
constexpr std::string_view kDomainKeysKeys[] = {"domains", "key_file"};
constexpr std::string_view kProcessKeys[] = {"user", "group", "run_as_root"};
constexpr std::string_view kSmtpKeys[] = {"hostname", "vrfy"};
constexpr std::string_view kDomainsKeys[] = {"sign", "verify"};
constexpr std::string_view kSigningKeys[] = {"exempt_senders", "exempt_destinations"};
constexpr std::string_view kInboundKeys[] = {"mode", "exempt_local_parts", "accept_untagged_from",
                                             "mailer_daemon_is_bounce", "bad_signature", "domain_mode"};
constexpr std::string_view kLoggingKeys[] = {"level", "target", "syslog_facility"};
constexpr std::string_view kMetricsKeys[] = {"listen"};

// --- The documented key list (config_keys) ---------------------------------------------------------

std::string toml_quote(std::string_view v) { return "\"" + std::string(v) + "\""; }
std::string_view text_of(std::string_view v) { return v; }
std::string text_of(const AddressPattern& p) { return p.to_string(); }
template <class List>
std::string toml_list(const List& items) {
  std::string out = "[";
  for (const auto& item : items) out += (out.size() > 1 ? ", " : "") + toml_quote(text_of(item));
  return out + "]";
}
std::string toml_bool(bool b) { return b ? "true" : "false"; }
std::string octal_mode(std::uint32_t mode) {
  std::string out(4, '0');
  for (int i = 3; i >= 0; --i, mode >>= 3) out[static_cast<std::size_t>(i)] = static_cast<char>('0' + (mode & 7));
  return out;
}

// Defaults of the keys that have no kLimits row, computed from the default-constructed structs
// where the default is a value (so a changed member default changes the documentation check).
struct DefaultText {
  std::string_view key;
  std::string (*text)();
};
const Listener kListener{};
const Config kConfig{};
constexpr DefaultText kDefaultTexts[] = {
    {"key_file", [] { return std::string("(required)"); }},
    {"hash", [] { return toml_quote(to_string(kConfig.hash)); }},
    {"domains.sign", [] { return std::string("(required)"); }},
    {"domains.verify", [] { return std::string("(domains.sign)"); }},
    {"domain_keys.domains", [] { return std::string("(required)"); }},
    {"domain_keys.key_file", [] { return std::string("(required)"); }},
    {"listener.role", [] { return std::string("(required)"); }},
    {"listener.listen", [] { return std::string("(required)"); }},
    {"listener.upstream", [] { return std::string("(required for outbound and inbound)"); }},
    {"listener.allow_clients",
     [] { return toml_list(kLoopback) + " (outbound, milter), " + toml_list(kEveryone) + " (inbound)"; }},
    {"listener.socket_mode", [] { return toml_quote(octal_mode(kListener.socket_mode)); }},
    {"listener.socket_owner", [] { return std::string("(the relay's user)"); }},
    {"listener.socket_group", [] { return std::string("(the relay's group)"); }},
    {"listener.allow_peers", [] { return toml_list(kLoopback); }},
    {"listener.originating_daemons", [] { return toml_list(kListener.originating_daemons); }},
    {"listener.verify", [] { return toml_bool(kListener.milter_verify); }},
    {"listener.forward_client",
     [] { return toml_quote(to_string(ForwardClient::none)) + " (outbound), " + toml_quote(to_string(ForwardClient::xclient)) +
                 " (inbound)"; }},
    {"listener.upstream_connect",
     [] { return toml_quote(to_string(UpstreamConnect::mail)) + " (inbound)"; }},
    {"listener.tls_cert", [] { return std::string("(none)"); }},
    {"listener.tls_key", [] { return std::string("(none)"); }},
    {"listener.require_tls", [] { return toml_bool(kListener.require_tls); }},
    {"listener.implicit_tls", [] { return toml_bool(kListener.implicit_tls); }},
    {"listener.tls_min_version", [] { return toml_quote(to_string(kListener.tls_min_version)); }},
    {"listener.tls_ciphers", [] { return toml_quote(kListener.tls_ciphers); }},
    {"listener.upstream_tls", [] { return toml_quote(to_string(kListener.upstream_tls)); }},
    {"listener.upstream_ca", [] { return toml_quote(kListener.upstream_ca); }},
    {"listener.upstream_tls_name", [] { return std::string("(the upstream host)"); }},
    {"listener.allow_authenticated", [] { return toml_bool(kListener.allow_authenticated); }},
    {"listener.plaintext_auth_loopback", [] { return toml_bool(kListener.plaintext_auth_loopback); }},
    {"listener.accept_proxy_from", [] { return toml_list(std::vector<std::string>{}); }},
    {"signing.exempt_senders", [] { return toml_list(kConfig.signing.exempt_senders); }},
    {"signing.exempt_destinations", [] { return toml_list(kConfig.signing.exempt_destinations); }},
    {"inbound.mode", [] { return toml_quote(to_string(kConfig.inbound.mode)); }},
    {"inbound.exempt_local_parts", [] { return toml_list(kConfig.inbound.exempt_local_parts); }},
    {"inbound.accept_untagged_from", [] { return toml_list(std::vector<std::string>{}); }},
    {"inbound.mailer_daemon_is_bounce", [] { return toml_bool(kConfig.inbound.mailer_daemon_is_bounce); }},
    {"inbound.bad_signature", [] { return toml_quote(to_string(kConfig.inbound.bad_signature)); }},
    {"inbound.domain_mode", [] { return std::string("(none)"); }},
    {"logging.level", [] { return toml_quote(to_string(kConfig.logging.level)); }},
    {"logging.target", [] { return toml_quote(to_string(kConfig.logging.target)); }},
    {"logging.syslog_facility", [] { return toml_quote(to_string(kConfig.logging.syslog_facility)); }},
    {"metrics.listen", [] { return std::string("(none)"); }},
    {"smtp.hostname", [] { return std::string("(the system host name)"); }},
    {"smtp.vrfy", [] { return toml_quote(to_string(kConfig.smtp.vrfy)); }},
    {"process.user", [] { return std::string("(none)"); }},
    {"process.group", [] { return std::string("(the user's primary group)"); }},
    {"process.run_as_root", [] { return toml_bool(kConfig.process.run_as_root); }},
};

std::vector<std::string_view> keys_of_section(std::string_view section);

// The tables of the file and the key list the loader checks each against, in documentation order.
struct Section {
  std::string_view name;  // "" = top level
  std::span<const std::string_view> keys;
};

std::vector<KeyInfo> build_config_keys() {
  const std::vector<std::string_view> limit_keys = keys_of_section("limits");
  const std::vector<std::string_view> timeout_keys = keys_of_section("timeouts");
  const Section sections[] = {
      {"", kTopKeys},           {"domains", kDomainsKeys}, {"domain_keys", kDomainKeysKeys},
      {"listener", kListenerKeys},
      {"signing", kSigningKeys}, {"inbound", kInboundKeys}, {"limits", limit_keys},
      {"timeouts", timeout_keys}, {"smtp", kSmtpKeys},     {"process", kProcessKeys},
      {"logging", kLoggingKeys}, {"metrics", kMetricsKeys},
  };
  auto is_table = [&](std::string_view key) {
    for (const Section& s : sections)
      if (s.name == key) return true;
    return false;
  };
  std::vector<KeyInfo> out;
  for (const Section& s : sections) {
    for (std::string_view key : s.keys) {
      if (s.name.empty() && is_table(key)) continue;
      KeyInfo info;
      info.key = s.name.empty() ? std::string(key) : std::string(s.name) + "." + std::string(key);
      if (const Limit* l = find_limit(s.name, key)) {
        info.limit = l;
        info.default_value = std::to_string(l->def);
      } else {
        for (const DefaultText& d : kDefaultTexts)
          if (d.key == info.key) info.default_value = d.text();
      }
      out.push_back(std::move(info));
    }
  }
  return out;
}

std::vector<std::string_view> keys_of_section(std::string_view section) {
  std::vector<std::string_view> out;
  for (const Limit& l : kLimits)
    if (l.section == section) out.push_back(l.key);
  return out;
}

std::string Loader::path_value(const toml::node& n, const std::string& path, const std::string& text) {
  if (text.empty()) {
    error(n, path, "must not be empty");
    return {};
  }
  if (text.find('\0') != std::string::npos) {
    error(n, path, "must not contain a NUL character");
    return {};
  }
  std::filesystem::path p(text);
  if (p.is_relative() && !base_dir_.empty()) p = std::filesystem::path(base_dir_) / p;
  return p.lexically_normal().string();
}

// [[domain_keys]]: after [domains] (each domain must be one we sign or verify) and key_file (no
// ring may share the default ring's file: rotating one would rotate the other).
void Loader::load_domain_keys(const toml::table& root, Config& cfg) {
  const toml::node* n = root.get("domain_keys");
  if (!n) return;
  const toml::array* arr = n->as_array();
  if (!arr) {
    error(*n, "domain_keys",
          "expected an array of tables ([[domain_keys]]), got " + std::string(type_phrase(n->type())));
    return;
  }
  if (arr->size() > fixed::max_domain_keys) {
    error(*n, "domain_keys",
          std::to_string(arr->size()) + " entries: at most " + std::to_string(fixed::max_domain_keys) +
              " (list a customer's domains in one entry)");
    return;
  }
  struct Seen {
    std::string what;  // a domain or a key file
    std::string entry;
    int line;
  };
  std::vector<Seen> domains_seen, files_seen;
  auto where_text = [&](Pos p) { return file_ + ":" + std::to_string(p.line) + ":" + std::to_string(p.column); };
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& el = *arr->get(i);
    const std::string path = indexed("domain_keys", i);
    const toml::table* t = el.as_table();
    if (!t) {
      type_error(el, path, "a table");
      continue;
    }
    const Pos here = pos_of(t->source());
    check_keys(*t, path, kDomainKeysKeys);
    DomainKeys dk;
    dk.where = where_text(here);
    bool ok = true;
    if (const toml::node* dn = t->get("domains")) {
      if (auto list = domain_list(*t, "domains", path + ".domains")) {
        if (dn->as_array()->empty()) {
          error(*dn, path + ".domains", "must list at least one domain");
          ok = false;
        }
        for (std::size_t j = 0; j < list->size(); ++j) {
          const std::string& d = (*list)[j];
          const toml::node& dnode = *dn->as_array()->get(j);
          const std::string el_path = indexed(path + ".domains", j);
          if (!domain_in_list(cfg.domains.sign, d) && !domain_in_list(cfg.domains.verify, d)) {
            error(dnode, el_path,
                  "domain " + d + " is in neither domains.sign nor domains.verify: its keys would never be used");
            ok = false;
          }
          for (const Seen& s : domains_seen)
            if (s.what == d) {
              error(dnode, el_path,
                    "domain " + d + " already has a keyring: " + s.entry + " (" + file_ + ":" +
                        std::to_string(s.line) + ")");
              ok = false;
            }
          domains_seen.push_back({d, path, pos_of(dnode.source()).line});
        }
        dk.domains = std::move(*list);
      } else {
        ok = false;
      }
    } else {
      error(here, path + ".domains", "required key is missing");
      ok = false;
    }
    if (auto kf = required_string(*t, "key_file", path + ".key_file", here)) {
      const toml::node& kn = *t->get("key_file");
      dk.key_file = path_value(kn, path + ".key_file", *kf);
      if (dk.key_file.empty()) {
        ok = false;
      } else if (dk.key_file == cfg.key_file) {
        error(kn, path + ".key_file",
              dk.key_file + " is the default key_file: a domain ring needs a key file of its own");
        ok = false;
      } else {
        for (const Seen& s : files_seen)
          if (s.what == dk.key_file) {
            error(kn, path + ".key_file",
                  dk.key_file + " is already the key file of " + s.entry + " (" + file_ + ":" +
                      std::to_string(s.line) + "): list both entries' domains in one entry");
            ok = false;
          }
        files_seen.push_back({dk.key_file, path, pos_of(kn.source()).line});
      }
    } else {
      ok = false;
    }
    if (ok) cfg.domain_keys.push_back(std::move(dk));
  }
}

Config Loader::load(const toml::table& root) {
  Config cfg;
  cfg.source = file_;
  check_keys(root, "", kTopKeys);

  // key_file: stored, never opened here.
  if (auto kf = required_string(root, "key_file", "key_file", kTop))
    cfg.key_file = path_value(*root.get("key_file"), "key_file", *kf);

  load_limits(root, cfg, "");
  optional_enum<HashSetting>(root, "hash", "hash", kHashNames, cfg.hash);

  // [domains]
  {
    const toml::table* d = sub_table(root, "domains", "domains");
    if (d) check_keys(*d, "domains", kDomainsKeys);
    const toml::node* sign_node = d ? d->get("sign") : nullptr;
    if (!sign_node) {
      error(d ? pos_of(d->source()) : kTop, "domains.sign", "required key is missing");
    } else if (auto sign = domain_list(*d, "sign", "domains.sign")) {
      if (sign_node->as_array()->empty()) error(*sign_node, "domains.sign", "must list at least one domain");
      cfg.domains.sign = std::move(*sign);
    }
    if (d && d->get("verify")) {
      if (auto verify = domain_list(*d, "verify", "domains.verify")) cfg.domains.verify = std::move(*verify);
    } else {
      cfg.domains.verify = cfg.domains.sign;
    }
  }

  load_domain_keys(root, cfg);
  load_listeners(root, cfg);

  // [signing]
  if (const toml::table* s = sub_table(root, "signing", "signing")) {
    check_keys(*s, "signing", kSigningKeys);
    cfg.signing.exempt_senders = pattern_list(*s, "exempt_senders", "signing.exempt_senders");
    cfg.signing.exempt_destinations = pattern_list(*s, "exempt_destinations", "signing.exempt_destinations");
  }

  // [inbound]
  if (const toml::table* in = sub_table(root, "inbound", "inbound")) {
    check_keys(*in, "inbound", kInboundKeys);
    optional_enum<InboundMode>(*in, "mode", "inbound.mode", kModeNames, cfg.inbound.mode);
    if (in->get("exempt_local_parts")) {
      std::vector<std::string> parts;
      for_each_string(*in, "exempt_local_parts", "inbound.exempt_local_parts",
                      [&](std::string_view s, const toml::node& el, const std::string& el_path) {
                        const bool bad_char = std::any_of(s.begin(), s.end(), [](char c) {
                          const auto u = static_cast<unsigned char>(c);
                          return u <= 0x20 || u == 0x7f || c == '@' || c == '<' || c == '>';
                        });
                        if (s.empty() || bad_char || s.size() > fixed::max_local_part_length) {
                          error(el, el_path,
                                "bad local part " + echo_value(s) +
                                    ": must be 1 to 64 octets without '@', spaces or control characters");
                          return;
                        }
                        std::string lp = lower(s);
                        if (std::find(parts.begin(), parts.end(), lp) == parts.end()) parts.push_back(std::move(lp));
                      });
      if (std::find(parts.begin(), parts.end(), "postmaster") == parts.end()) parts.insert(parts.begin(), "postmaster");
      cfg.inbound.exempt_local_parts = std::move(parts);
    }
    if (auto nets = cidr_list(*in, "accept_untagged_from", "inbound.accept_untagged_from"))
      cfg.inbound.accept_untagged_from = std::move(*nets);
    optional_bool(*in, "mailer_daemon_is_bounce", "inbound.mailer_daemon_is_bounce",
                  cfg.inbound.mailer_daemon_is_bounce);
    optional_enum<BadSignatureAction>(*in, "bad_signature", "inbound.bad_signature", kBadSigNames,
                                      cfg.inbound.bad_signature);
    // [inbound.domain_mode]: "domain" = "enforce" | "monitor" | "off"; each domain must be one we verify.
    if (const toml::table* dm = sub_table(*in, "domain_mode", "inbound.domain_mode")) {
      for (const auto& [k, v] : *dm) {
        const std::string path = "inbound.domain_mode." + std::string(k.str());
        std::string why;
        auto domain = normalize_domain(k.str(), &why);
        if (!domain) {
          error(v, path, "bad domain " + echo_value(k.str()) + ": " + why);
          continue;
        }
        const auto& verify = cfg.domains.verify;
        if (std::find(verify.begin(), verify.end(), *domain) == verify.end()) {
          error(v, path, "domain " + *domain + " is not in domains.verify");
          continue;
        }
        InboundMode mode{};
        if (auto m = enum_value<InboundMode>(v, path, kModeNames)) {
          mode = *m;
          cfg.inbound.domain_mode.emplace_back(std::move(*domain), mode);
        }
      }
    }
  }

  // [limits], [timeouts]
  for (std::string_view section : {std::string_view("limits"), std::string_view("timeouts")}) {
    if (const toml::table* t = sub_table(root, section, std::string(section))) {
      const auto known = keys_of_section(section);
      check_keys(*t, section, known);
      load_limits(*t, cfg, section);
      if (section == "limits" && cfg.limits.sessions_per_client > cfg.limits.sessions) {
        const toml::node* at = t->get("sessions_per_client");
        if (!at) at = t->get("sessions");
        error(*at, at == t->get("sessions") ? "limits.sessions" : "limits.sessions_per_client",
              "sessions_per_client (" + std::to_string(cfg.limits.sessions_per_client) +
                  ") must not exceed sessions (" + std::to_string(cfg.limits.sessions) + ")");
      }
    }
  }

  // [logging]
  if (const toml::table* lg = sub_table(root, "logging", "logging")) {
    check_keys(*lg, "logging", kLoggingKeys);
    optional_enum<LogLevel>(*lg, "level", "logging.level", kLevelNames, cfg.logging.level);
    optional_enum<LogTarget>(*lg, "target", "logging.target", kTargetNames, cfg.logging.target);
    optional_enum<SyslogFacility>(*lg, "syslog_facility", "logging.syslog_facility", kFacilityNames,
                                  cfg.logging.syslog_facility);
  }

  // [smtp]
  if (const toml::table* sm = sub_table(root, "smtp", "smtp")) {
    check_keys(*sm, "smtp", kSmtpKeys);
    if (const toml::node* hn = sm->get("hostname")) {
      if (auto s = string_value(*hn, "smtp.hostname")) {
        std::string why;
        if (auto d = normalize_domain(*s, &why)) cfg.smtp.hostname = std::move(*d);
        else error(*hn, "smtp.hostname", "bad host name " + echo_value(*s) + ": " + why);
      }
    }
    optional_enum<VrfyReply>(*sm, "vrfy", "smtp.vrfy", kVrfyNames, cfg.smtp.vrfy);
  }

  // [process]
  if (const toml::table* pr = sub_table(root, "process", "process")) {
    check_keys(*pr, "process", kProcessKeys);
    for (std::string_view key : {std::string_view("user"), std::string_view("group")}) {
      const toml::node* n = pr->get(key);
      if (!n) continue;
      const std::string path = "process." + std::string(key);
      if (auto v = string_value(*n, path)) {
        const bool ok = !v->empty() && v->size() <= 32 && std::all_of(v->begin(), v->end(), [](char c) {
          return text::is_alnum(c) || c == '_' || c == '-' || c == '.';
        });
        if (!ok) error(*n, path, "bad name " + echo_value(*v) + ": 1-32 of letters, digits, '_', '-', '.'");
        else (key == "user" ? cfg.process.user : cfg.process.group) = *v;
      }
    }
    optional_bool(*pr, "run_as_root", "process.run_as_root", cfg.process.run_as_root);
  }

  // [metrics]
  if (const toml::table* m = sub_table(root, "metrics", "metrics")) {
    check_keys(*m, "metrics", kMetricsKeys);
    if (const toml::node* ln = m->get("listen")) {
      if (auto s = string_value(*ln, "metrics.listen")) {
        std::string why;
        if (auto hp = parse_host_port(*s, /*allow_hostname=*/false, &why)) {
          for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
            if (cfg.listeners[i].unix_path.empty() && listen_overlaps(*hp, cfg.listeners[i].listen)) {
              error(*ln, "metrics.listen",
                    "address " + hp->to_string() + " is already used by " + indexed("listener", i) + ".listen");
              break;
            }
          }
          cfg.metrics.listen = std::move(*hp);
        } else {
          error(*ln, "metrics.listen", "bad address " + echo_value(*s) + ": " + why);
        }
      }
    }
  }
  return cfg;
}

}  // namespace

// --- Public API --------------------------------------------------------------------------------------

std::string_view to_string(Role v) { return name_of<Role>(kRoleNames, v); }
std::string_view to_string(InboundMode v) { return name_of<InboundMode>(kModeNames, v); }
std::string_view to_string(LogLevel v) { return name_of<LogLevel>(kLevelNames, v); }
std::string_view to_string(LogTarget v) { return name_of<LogTarget>(kTargetNames, v); }
std::string_view to_string(SyslogFacility v) { return name_of<SyslogFacility>(kFacilityNames, v); }
std::string_view to_string(HashSetting v) { return name_of<HashSetting>(kHashNames, v); }
std::string_view to_string(VrfyReply v) { return name_of<VrfyReply>(kVrfyNames, v); }
std::string_view to_string(ForwardClient v) { return name_of<ForwardClient>(kForwardNames, v); }
std::string_view to_string(UpstreamTls v) { return name_of<UpstreamTls>(kUpstreamTlsNames, v); }
std::string_view to_string(TlsVersion v) { return name_of<TlsVersion>(kTlsVersionNames, v); }
std::string_view to_string(UpstreamConnect v) { return name_of<UpstreamConnect>(kUpstreamConnectNames, v); }
std::string_view to_string(BadSignatureAction v) { return name_of<BadSignatureAction>(kBadSigNames, v); }

std::vector<KeyInfo> config_keys() { return build_config_keys(); }

InboundMode Inbound::mode_for(std::string_view domain) const {
  for (const auto& [d, m] : domain_mode)
    if (iequals(d, domain)) return m;
  return mode;
}

bool AddressPattern::matches(std::string_view address) const {
  const auto at = address.rfind('@');
  if (at == std::string_view::npos) return false;
  if (!iequals(address.substr(at + 1), domain)) return false;
  return local_part.empty() || address.substr(0, at) == local_part;
}

std::string AddressPattern::to_string() const { return local_part + "@" + domain; }

std::string escape_nonprintable(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

std::string format(const ConfigError& e) {
  std::string out = e.file;
  if (e.line > 0) out += ":" + std::to_string(e.line) + ":" + std::to_string(e.column);
  out += ": ";
  if (!e.key.empty()) out += e.key + ": ";
  out += e.message;
  return out;
}

LoadResult load_config_string(std::string_view toml_text, const std::string& name_for_errors,
                              const std::string& base_dir) {
  LoadResult result;
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(name_for_errors));
  } catch (const toml::parse_error& e) {
    const Pos p = pos_of(e.source());
    result.errors.push_back({name_for_errors, p.line, p.column, "", escape_nonprintable(e.description())});
    return result;
  }
  Loader loader(name_for_errors, base_dir);
  Config cfg = loader.load(root);
  result.errors = std::move(loader.errors);
  std::stable_sort(result.errors.begin(), result.errors.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::pair(a.line, a.column) < std::pair(b.line, b.column);
  });
  if (result.errors.empty()) result.config = std::move(cfg);
  return result;
}

LoadResult load_config_file(const std::string& path) {
  auto fail = [&](std::string message) {
    LoadResult r;
    r.errors.push_back({path, 0, 0, "", std::move(message)});
    return r;
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return fail("is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(std::string("cannot open: ") + std::strerror(errno));
  std::string text;
  char buf[8192];
  while (in) {
    in.read(buf, sizeof buf);
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    if (static_cast<std::int64_t>(text.size()) > fixed::max_config_file_bytes)
      return fail("larger than " + std::to_string(fixed::max_config_file_bytes) + " bytes");
  }
  if (in.bad()) return fail("read error");
  std::filesystem::path abs = std::filesystem::absolute(path, ec);
  const std::string base = ec ? std::filesystem::path(path).parent_path().string() : abs.parent_path().string();
  return load_config_string(text, path, base);
}

}  // namespace batv::conf
