#include "relay/postfix/socketmap.hpp"

namespace batv::relay::postfix {

std::string_view to_string(MapAnswer a) {
  switch (a) {
    case MapAnswer::found: return "found";
    case MapAnswer::notfound: return "notfound";
    case MapAnswer::perm: return "perm";
  }
  return "?";
}

SocketmapDecision decide_socketmap(const conf::Config& cfg, KeyringsRef keys,
                                   const crypto::PrvsParams& params, std::string_view query, std::int64_t now) {
  SocketmapDecision d;
  const std::size_t sp = query.find(' ');
  if (sp == std::string_view::npos) {
    d.answer = MapAnswer::perm;
    d.reply = "PERM malformed query";
    return d;
  }
  if (query.substr(0, sp) != kStripMap) {
    d.answer = MapAnswer::perm;
    d.reply = "PERM unknown map name";
    return d;
  }
  d.key = query.substr(sp + 1);
  // The proxy's decision for a normal sender (see the header): the socketmap cannot tell bounces
  // apart, and the policy service has decided those at RCPT already.
  d.recipient_decision = decide_recipient(cfg, keys, params, /*bounce=*/false, /*client_exempt=*/false, d.key, now);
  if (d.recipient_decision.action == RcptAction::stripped) {
    d.answer = MapAnswer::found;
    d.reply.reserve(3 + d.recipient_decision.upstream.size());
    d.reply.append("OK ").append(d.recipient_decision.upstream);
  } else {
    d.reply = "NOTFOUND ";
  }
  return d;
}

}  // namespace batv::relay::postfix
