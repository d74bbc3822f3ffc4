#include "relay/policy.hpp"

#include <algorithm>

#include "relay/replies.hpp"
#include "relay/smtp/command.hpp"
#include "conf/ascii.hpp"

namespace batv::relay {

Keyrings::Keyrings(crypto::Keyring only) {
  rings_.push_back(Ring{"default", {}, {}, std::move(only), 0, {}});
}

Keyrings::Keyrings(std::vector<Ring> rings) : rings_(std::move(rings)) { index(); }

void Keyrings::index() {
  for (std::size_t i = 1; i < rings_.size(); ++i)
    for (const std::string& d : rings_[i].domains) {
      by_domain_.emplace_back(text::lower(d), i);
    }
  // Stable: of two rings listing one domain, the first keeps it.
  std::stable_sort(by_domain_.begin(), by_domain_.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
}

const Ring& Keyrings::for_domain(std::string_view domain) const {
  if (by_domain_.empty()) return rings_.front();
  // Lowercased into a stack buffer: a longer name is no configured domain (253 at most).
  char buf[conf::fixed::max_domain_length];
  if (domain.size() > sizeof buf) return rings_.front();
  domain.copy(buf, domain.size());
  text::lower_in_place(buf, domain.size());
  const std::string_view key(buf, domain.size());
  auto it = std::lower_bound(by_domain_.begin(), by_domain_.end(), key,
                             [](const auto& e, std::string_view k) { return std::string_view(e.first) < k; });
  if (it == by_domain_.end() || it->first != key) return rings_.front();
  return rings_[it->second];
}

const Ring& Keyrings::for_address(std::string_view address) const {
  const auto at = address.rfind('@');
  if (at == std::string_view::npos) return rings_.front();
  return for_domain(address.substr(at + 1));
}

bool domain_in(const std::vector<std::string>& list, std::string_view domain) {
  return std::any_of(list.begin(), list.end(), [&](const std::string& d) { return text::iequals(d, domain); });
}

crypto::PrvsParams prvs_params(const conf::Config& cfg) {
  crypto::PrvsParams p;
  p.lifetime_days = cfg.lifetime_days;
  p.hash = cfg.hash == conf::HashSetting::lowercase_local ? crypto::HashMode::lowercase_local
                                                           : crypto::HashMode::exact;
  return p;
}

SenderDecision decide_sender(const conf::Config& cfg, KeyringsRef keyrings,
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
  crypto::SignResult s = crypto::sign(keyrings.for_address(sender), sender, now, params);
  if (!s.tagged) return no(s.reason);
  d.sign = true;
  d.key_id = s.key_id;
  d.upstream_from = std::move(*s.tagged);
  return d;
}

bool is_bounce(const conf::Config& cfg, std::string_view sender) {
  if (sender.empty()) return true;
  if (!cfg.inbound.mailer_daemon_is_bounce) return false;
  const auto at = sender.rfind('@');
  return at != std::string_view::npos && text::iequals(sender.substr(0, at), "MAILER-DAEMON");
}

crypto::Verdict worse(crypto::Verdict a, crypto::Verdict b) {
  auto rank = [](crypto::Verdict v) {
    switch (v) {
      case crypto::Verdict::bad_signature: return 5;
      case crypto::Verdict::unknown_key: return 4;
      case crypto::Verdict::malformed: return 3;
      case crypto::Verdict::expired: return 2;
      case crypto::Verdict::untagged: return 1;
      case crypto::Verdict::valid: return 0;
    }
    return 0;
  };
  return rank(a) >= rank(b) ? a : b;
}

RcptDecision decide_recipient(const conf::Config& cfg, KeyringsRef keyrings,
                              const crypto::PrvsParams& params, bool bounce, bool client_exempt,
                              std::string_view recipient, std::int64_t now) {
  RcptDecision d;
  d.upstream = std::string(recipient);
  const auto at = recipient.rfind('@');
  if (at == std::string_view::npos || !domain_in(cfg.domains.verify, recipient.substr(at + 1))) return d;
  d.ours = true;
  crypto::VerifyResult v = crypto::verify(keyrings.for_address(recipient), recipient, now, params);
  // A tag whose stripped address is no mailbox ("prvs=...=.x@d" leaves ".x@d", not a Dot-string,
  // RFC 5321 4.1.2; Exim signs such addresses all the same) counts as malformed: the next hop never
  // gets an address the relay would refuse itself.
  if (!v.original.empty() && !smtp::parse_rcpt_to("TO:<" + v.original + ">").ok()) {
    v.verdict = crypto::Verdict::malformed;
    v.original.clear();
  }
  d.verdict = v.verdict;
  // The address the mailbox knows: the original when a tag parsed, else as received.
  const std::string original = v.original.empty() ? std::string(recipient) : v.original;
  const bool strippable = v.verdict == crypto::Verdict::valid || v.verdict == crypto::Verdict::expired;
  const conf::InboundMode mode = cfg.inbound.mode_for(recipient.substr(at + 1));

  if (mode == conf::InboundMode::off) {
    if (strippable) {
      d.action = RcptAction::stripped;
      d.upstream = original;
    }
    return d;
  }
  if (!bounce) {
    if (strippable) {
      d.action = RcptAction::stripped;
      d.upstream = original;
    } else if (v.verdict == crypto::Verdict::bad_signature || v.verdict == crypto::Verdict::unknown_key) {
      switch (cfg.inbound.bad_signature) {
        case conf::BadSignatureAction::strip:
          d.action = RcptAction::stripped;
          d.upstream = original;
          break;
        case conf::BadSignatureAction::keep: d.action = RcptAction::kept; break;
        case conf::BadSignatureAction::reject:
          d.action = RcptAction::refused;
          d.reply = replies::tag_not_verified(v.verdict);
          break;
      }
    }
    return d;
  }
  // A bounce to one of our domains.
  d.monitor = mode == conf::InboundMode::monitor;
  if (v.verdict == crypto::Verdict::valid) {
    d.action = RcptAction::accepted;
    d.upstream = original;
    return d;
  }
  const auto oat = original.rfind('@');
  const std::string_view local = std::string_view(original).substr(0, oat);
  bool exempt = client_exempt;
  for (const auto& lp : cfg.inbound.exempt_local_parts)
    if (text::iequals(lp, local)) exempt = true;
  if (exempt || d.monitor) {
    d.action = exempt ? RcptAction::exempt : RcptAction::monitored;
    d.monitor = !exempt && d.monitor;
    d.upstream = original;
    return d;
  }
  d.action = RcptAction::refused;
  d.reply = replies::bounce_refused(v.verdict);
  return d;
}

}  // namespace batv::relay
