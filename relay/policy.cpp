#include "relay/policy.hpp"

#include <algorithm>

namespace batv::relay {

namespace {
bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c; };
           return lower(x) == lower(y);
         });
}
}  // namespace

bool domain_in(const std::vector<std::string>& list, std::string_view domain) {
  return std::any_of(list.begin(), list.end(), [&](const std::string& d) { return iequals(d, domain); });
}

crypto::PrvsParams prvs_params(const conf::Config& cfg) {
  crypto::PrvsParams p;
  p.lifetime_days = cfg.lifetime_days;
  p.hash = cfg.hash == conf::HashSetting::lowercase_local ? crypto::HashMode::lowercase_local
                                                           : crypto::HashMode::exact;
  return p;
}

SenderDecision decide_sender(const conf::Config& cfg, const crypto::Keyring& keys,
                             const crypto::PrvsParams& params, std::string_view sender,
                             std::string_view first_recipient, std::int64_t now) {
  SenderDecision d;
  d.upstream_from = std::string(sender);
  auto no = [&](crypto::NoSignReason r) {
    d.reason = r;
    return d;
  };
  if (sender.empty()) return no(crypto::NoSignReason::null_sender);
  const auto at = sender.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == sender.size())
    return no(crypto::NoSignReason::malformed_address);
  if (!domain_in(cfg.domains.sign, sender.substr(at + 1))) return no(crypto::NoSignReason::not_our_domain);
  for (const auto& p : cfg.signing.exempt_senders)
    if (p.matches(sender)) return no(crypto::NoSignReason::exempt_sender);
  for (const auto& p : cfg.signing.exempt_destinations)
    if (p.matches(first_recipient)) return no(crypto::NoSignReason::exempt_destination);
  crypto::SignResult s = crypto::sign(keys, sender, now, params);
  if (!s.tagged) return no(s.reason);
  d.sign = true;
  d.key_id = s.key_id;
  d.upstream_from = std::move(*s.tagged);
  return d;
}

}  // namespace batv::relay
