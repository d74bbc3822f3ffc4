// Fuzz target: the relay config loader (conf/config: load_config_string) on arbitrary text.
// Invariants: no crash; config set iff no errors; every error names the file, has a position that
// is 0:0 or 1-based, the errors come sorted by position, and the error text (message and key as
// printed by format()) is printable ASCII, so a hostile or broken file cannot put control bytes
// in the operator's terminal or log. An accepted config is within every conf/limits.hpp bound and
// meets the documented rules: at least one listener and one signing domain, lowercase domains,
// postmaster always exempt, no upstream equal to its own listen address, sessions_per_client
// within sessions, listen addresses that are IP literals, and it round-trips its enum spellings.
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"
#include "conf/limits.hpp"

using namespace batv::conf;

namespace {

bool printable(std::string_view s) {
  for (const char ch : s)
    if (ch < 0x20 || ch > 0x7e) return false;
  return true;
}

bool lowercase(std::string_view s) {
  for (const char ch : s)
    if (ch >= 'A' && ch <= 'Z') return false;
  return !s.empty();
}

void within(std::string_view section, std::string_view key, std::int64_t v) {
  const Limit* l = find_limit(section, key);
  if (l == nullptr || v < l->min || v > l->max) std::abort();
}

void check_config(const Config& c) {
  within("", "lifetime_days", c.lifetime_days);
  within("", "threads", c.threads);
  const Limits& l = c.limits;
  within("limits", "line_length", l.line_length);
  within("limits", "reply_line_length", l.reply_line_length);
  within("limits", "reply_lines", l.reply_lines);
  within("limits", "recipients_per_message", l.recipients_per_message);
  within("limits", "message_size", l.message_size);
  within("limits", "errors_per_session", l.errors_per_session);
  within("limits", "sessions", l.sessions);
  within("limits", "sessions_per_client", l.sessions_per_client);
  within("limits", "commands_before_mail", l.commands_before_mail);
  within("limits", "invalid_recipients_per_session", l.invalid_recipients_per_session);
  if (l.sessions_per_client > l.sessions) std::abort();
  const Timeouts& t = c.timeouts;
  within("timeouts", "idle", t.idle.count());
  within("timeouts", "command", t.command.count());
  within("timeouts", "session", t.session.count());
  within("timeouts", "data", t.data.count());
  within("timeouts", "upstream_connect", t.upstream_connect.count());
  within("timeouts", "upstream_reply", t.upstream_reply.count());
  within("timeouts", "upstream_data_reply", t.upstream_data_reply.count());
  within("timeouts", "shutdown_grace", t.shutdown_grace.count());

  if (c.listeners.empty() || c.domains.sign.empty() || c.key_file.empty()) std::abort();
  for (const auto& d : c.domains.sign)
    if (!lowercase(d)) std::abort();
  for (const auto& d : c.domains.verify)
    if (!lowercase(d)) std::abort();
  bool postmaster = false;
  for (const auto& lp : c.inbound.exempt_local_parts) {
    if (!lowercase(lp)) std::abort();
    postmaster = postmaster || lp == "postmaster";
  }
  if (!postmaster) std::abort();
  for (const auto& l2 : c.listeners) {
    if (!l2.listen.is_ip_literal || l2.upstream.port == 0) std::abort();
    if (l2.upstream == l2.listen) std::abort();
  }
  for (const auto& p : c.signing.exempt_senders)
    if (p.domain.empty() || !lowercase(p.domain)) std::abort();
  for (const auto& [domain, mode] : c.inbound.domain_mode)
    if (!lowercase(domain)) std::abort();
  // [[domain_keys]]: bounded; every ring has domains, each ours and in one ring only, and a key
  // file of its own.
  if (c.domain_keys.size() > fixed::max_domain_keys) std::abort();
  std::vector<std::string> ring_domains, ring_files{c.key_file};
  for (const auto& dk : c.domain_keys) {
    if (dk.domains.empty() || dk.key_file.empty()) std::abort();
    if (std::find(ring_files.begin(), ring_files.end(), dk.key_file) != ring_files.end()) std::abort();
    ring_files.push_back(dk.key_file);
    for (const auto& d : dk.domains) {
      if (!lowercase(d)) std::abort();
      const bool ours = std::find(c.domains.sign.begin(), c.domains.sign.end(), d) != c.domains.sign.end() ||
                        std::find(c.domains.verify.begin(), c.domains.verify.end(), d) != c.domains.verify.end();
      if (!ours || std::find(ring_domains.begin(), ring_domains.end(), d) != ring_domains.end()) std::abort();
      ring_domains.push_back(d);
    }
  }
  if (to_string(c.hash).empty() || to_string(c.inbound.mode).empty() || to_string(c.logging.level).empty())
    std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto r = load_config_string(in, "fuzz.toml", "/etc/batv-relay");
  if (r.config.has_value() == !r.errors.empty()) std::abort();
  for (std::size_t i = 0; i < r.errors.size(); ++i) {
    const ConfigError& e = r.errors[i];
    if (e.file != "fuzz.toml" || e.line < 0 || e.column < 0 || (e.line == 0) != (e.column == 0)) std::abort();
    if (e.message.empty() || !printable(format(e))) std::abort();
    if (i > 0 && std::pair(r.errors[i - 1].line, r.errors[i - 1].column) > std::pair(e.line, e.column)) std::abort();
  }
  if (r.config) check_config(*r.config);
  return 0;
}
