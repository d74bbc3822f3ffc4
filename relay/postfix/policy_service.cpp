#include "relay/postfix/policy_service.hpp"

#include "relay/replies.hpp"
#include "conf/ascii.hpp"

namespace batv::relay::postfix {

std::string_view to_string(PolicyAnswer a) {
  switch (a) {
    case PolicyAnswer::dunno: return "dunno";
    case PolicyAnswer::reject: return "reject";
    case PolicyAnswer::prepend: return "prepend";
  }
  return "?";
}

namespace {
// relay/replies.hpp writes SMTP replies with their CRLF; a policy action is the text alone.
std::string without_crlf(std::string reply) {
  while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\r')) reply.pop_back();
  return reply;
}
}  // namespace

PolicyDecision decide_policy(const conf::Config& cfg, KeyringsRef keys,
                             const crypto::PrvsParams& params, const PolicyRequest& request,
                             std::int64_t now) {
  PolicyDecision d;
  d.action = "DUNNO";
  const auto kind = request.find("request");
  if (!kind || *kind != "smtpd_access_policy") {
    d.error = "not_smtpd_access_policy";
    return d;
  }
  const auto state = request.find("protocol_state");
  if (!state) {
    d.error = "missing_protocol_state";
    return d;
  }
  if (!text::iequals(*state, "RCPT")) return d;
  d.rcpt = true;
  const auto sender = request.find("sender");
  const auto recipient = request.find("recipient");
  if (!sender) {
    d.error = "missing_sender";
    return d;
  }
  if (!recipient) {
    d.error = "missing_recipient";
    return d;
  }
  d.sender = *sender;
  d.recipient = *recipient;
  d.bounce = is_bounce(cfg, *sender);
  bool client_exempt = false;
  if (const auto client = request.find("client_address"))
    for (const auto& net : cfg.inbound.accept_untagged_from)
      if (net.contains(*client)) client_exempt = true;
  d.recipient_decision = decide_recipient(cfg, keys, params, d.bounce, client_exempt, *recipient, now);
  const RcptDecision& rd = d.recipient_decision;
  if (rd.action == RcptAction::refused) {
    // A bounce: "bounce refused: ..."; a normal sender with bad_signature = "reject": "tag does
    // not verify: ...". Both texts come from relay/replies.hpp through decide_recipient.
    d.answer = PolicyAnswer::reject;
    d.action = without_crlf(rd.reply);
  } else if (rd.monitor) {
    d.answer = PolicyAnswer::prepend;
    d.action = "PREPEND X-BATV-Status: " + std::string(crypto::to_string(rd.verdict));
  }
  return d;
}

void append_policy_answer(std::string& out, std::string_view action) {
  out.append("action=");
  out.append(action);
  out.append("\n\n");
}

PolicyLimits policy_limits(const conf::Config& cfg) {
  PolicyLimits l;
  l.request_size = static_cast<std::size_t>(cfg.limits.policy_request_size);
  l.attributes = static_cast<std::size_t>(cfg.limits.policy_attributes);
  l.attribute_length = static_cast<std::size_t>(cfg.limits.policy_attribute_length);
  return l;
}

}  // namespace batv::relay::postfix
