// Invariants of an accepted (or refused) MAIL FROM / RCPT TO path, shared by the smtp_command and
// smtp_path fuzz targets. Each violated invariant aborts, which libFuzzer reports as a finding.
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"
#include "relay/policy.hpp"
#include "relay/smtp/command.hpp"

namespace fuzz {

using namespace batv::relay::smtp;
namespace fixed = batv::conf::fixed;

inline bool inside(std::string_view part, std::string_view whole) {
  return part.empty() ||
         (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

inline char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }

inline bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

inline const batv::crypto::Keyring& path_ring() {
  static const batv::crypto::Keyring r = [] {
    std::vector<batv::crypto::KeyMaterial> m;
    m.push_back({1, true, batv::crypto::Secret(std::string_view("path-check-key"))});
    std::string err;
    auto k = batv::crypto::Keyring::build(m, err);
    if (!k) std::abort();
    return std::move(*k);
  }();
  return r;
}

// Parses "FROM:<address> params" (or TO:) built in `text`, which the result's views point into.
// The relay's policy for example.com and example.org, defaults otherwise.
inline const batv::conf::Config& path_config() {
  static const batv::conf::Config c = [] {
    batv::conf::Config cfg;
    cfg.domains.sign = {"example.com", "example.org"};
    cfg.domains.verify = cfg.domains.sign;
    return cfg;
  }();
  return c;
}

inline PathResult reparse(bool rcpt, std::string& text, std::string_view address, std::string_view params = {}) {
  text = std::string(rcpt ? "TO:<" : "FROM:<") + std::string(address) + ">";
  if (!params.empty()) text.append(" ").append(params);
  return rcpt ? parse_rcpt_to(text) : parse_mail_from(text);
}

// `in` is the text the result was parsed from (its views point into it).
inline void check_path(std::string_view in, const PathResult& r, bool rcpt) {
  if (r.ok() != r.path.has_value()) std::abort();
  if (!r.ok()) return;
  const Path& p = *r.path;
  if (rcpt && p.null_path) std::abort();
  if (p.null_path != p.address.empty()) std::abort();
  if (p.address.size() + 2 > fixed::max_path_length) std::abort();
  bool high = false;
  for (const char ch : p.address) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) std::abort();
    if (c >= 0x80) high = true;
  }
  if (high != p.non_ascii) std::abort();
  if (!inside(p.params_text, in)) std::abort();
  if (!p.params_text.empty() && (p.params_text.front() == ' ' || p.params_text.back() == ' ')) std::abort();
  if (p.params.size() > fixed::max_esmtp_params) std::abort();
  for (std::size_t i = 0; i < p.params.size(); ++i) {
    const Param& a = p.params[i];
    if (a.keyword.empty() || !inside(a.keyword, p.params_text)) std::abort();
    if (a.value && (a.value->empty() || !inside(*a.value, p.params_text))) std::abort();
    for (std::size_t j = 0; j < i; ++j)
      if (iequal(a.keyword, p.params[j].keyword)) std::abort();
    (void)valid_param_value(a.keyword, a.value);
  }
  // Rebuilt from its parts (source route dropped), the path parses to the same value.
  std::string text;
  const PathResult r2 = reparse(rcpt, text, p.address, p.params_text);
  if (!r2.ok() || r2.path->address != p.address || r2.path->null_path != p.null_path ||
      r2.path->params_text != p.params_text || r2.path->params.size() != p.params.size())
    std::abort();
  if (p.null_path) return;

  // The relay and crypto/prvs split at the LAST "@": for an accepted mailbox that is the one the
  // parser used, so the parts respect RFC 5321 4.5.3.1 sizes (only <Postmaster> has no domain).
  const auto at = p.address.rfind('@');
  if (at == std::string::npos) {
    if (!rcpt || !iequal(p.address, "postmaster")) std::abort();
    return;
  }
  if (at == 0 || at > fixed::max_local_part_length || p.address.size() - at - 1 > fixed::max_domain_length ||
      at + 1 == p.address.size())
    std::abort();
  // A mailbox is a mailbox in both commands.
  if (!reparse(!rcpt, text, p.address).ok()) std::abort();

  // What the relay sends on must still be a valid path, or the next hop gets a command we would
  // refuse ourselves: a tagged MAIL FROM (any signable mailbox, and the relay's own decision for
  // this one), and the address a RCPT leaves as after the inbound policy (tag stripped or not).
  namespace crypto = batv::crypto;
  namespace relay = batv::relay;
  constexpr std::int64_t now = 1700000000;
  const crypto::SignResult s = crypto::sign(path_ring(), p.address, now);
  if (s.tagged && (!reparse(false, text, *s.tagged).ok() || !reparse(true, text, *s.tagged).ok())) std::abort();
  const relay::SenderDecision sd =
      relay::decide_sender(path_config(), path_ring(), {}, p.address, "rcpt@remote.example", now);
  if (!reparse(false, text, sd.upstream_from).ok()) std::abort();
  for (const bool bounce : {false, true}) {
    const relay::RcptDecision rd = relay::decide_recipient(path_config(), path_ring(), {}, bounce, false, p.address, now);
    if (rd.action != relay::RcptAction::refused && !reparse(true, text, rd.upstream).ok()) std::abort();
  }
}

}  // namespace fuzz
