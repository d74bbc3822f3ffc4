// The policy service's connection: PolicyFramer + parse_policy_request + decide_policy per request
// on the shared request loop (relay/postfix/request_connection.hpp).

#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/postfix/policy_service.hpp"
#include "relay/postfix/request_connection.hpp"
#include "conf/ascii.hpp"

namespace batv::relay::postfix {

namespace {

Metrics::Answer metric_answer(PolicyAnswer a) {
  switch (a) {
    case PolicyAnswer::dunno: return Metrics::Answer::dunno;
    case PolicyAnswer::reject: return Metrics::Answer::reject;
    case PolicyAnswer::prepend: return Metrics::Answer::prepend;
  }
  return Metrics::Answer::other;
}

class PolicyConnection final : public RequestConnection {
 public:
  PolicyConnection(LocalSocket sock, ConnContext ctx, Options opt, PolicyLimits limits)
      : RequestConnection(std::move(sock), std::move(ctx), opt), limits_(limits), framer_(limits.request_size) {}

 protected:
  Step process(std::string_view in, std::string& out) override {
    Step st;
    const Runtime& rt = runtime();
    const std::int64_t now = rt.clock.now();
    for (;;) {
      const std::string_view rest = in.substr(st.consumed);
      const PolicyFrame f = framer_.next(rest);
      if (f.status == PolicyFrame::Status::need_more) return st;
      if (f.status == PolicyFrame::Status::too_large) {
        st.close = true;
        st.reason = SessionEnd::request_too_large;
        st.detail = "no end of request within " + std::to_string(limits_.request_size) + " octets";
        return st;
      }
      framer_.reset();
      const PolicyParse p = parse_policy_request(rest.substr(0, f.length), limits_);
      if (!p.ok()) {
        st.close = true;
        st.reason = p.error == PolicyError::attribute_too_long || p.error == PolicyError::too_many_attributes
                        ? SessionEnd::request_too_large
                        : SessionEnd::protocol_error;
        st.detail = std::string(to_string(p.error)) + " at line " + std::to_string(p.line);
        return st;
      }
      const PolicyDecision d = decide_policy(rt.config, rt.keys, rt.prvs, p.request, now);
      if (!d.error.empty()) {
        st.close = true;
        st.reason = SessionEnd::protocol_error;
        st.detail = std::string(d.error);
        return st;
      }
      append_policy_answer(out, d.action);
      st.consumed += f.length;
      ++requests_;
      account(d);
    }
  }

 private:
  void account(const PolicyDecision& d) {
    metrics().answer(conf::Role::policy, metric_answer(d.answer));
    const RcptDecision& rd = d.recipient_decision;
    if (!d.rcpt || !rd.ours) {
      if (log_enabled(Level::debug)) log(Level::debug, "policy").kv("sid", context().id).kv("answer", to_string(d.answer));
      return;
    }
    const auto at = d.recipient.rfind('@');
    const std::string domain = text::lower(d.recipient.substr(at + 1));  // ours: the address has an '@'
    // Bounce decisions are counted as the inbound proxy counts them; a normal sender's mail is the
    // socketmap's to strip, and only its refusal (bad_signature = "reject") is ours to count.
    if (d.bounce) metrics().verdict(domain, rd.verdict);
    if (d.bounce || rd.action == RcptAction::refused) metrics().recipient(conf::Role::policy, rd.action);
    const Level level = rd.action == RcptAction::refused ? Level::warning : Level::info;
    if (!log_enabled(level)) return;
    auto line = log(level, "policy");
    line.kv("sid", context().id).kv("from", "<" + std::string(d.sender) + ">").kv("to", "<" + std::string(d.recipient) + ">");
    line.kv("domain", domain).kv("verdict", crypto::to_string(rd.verdict)).kv("bounce", d.bounce);
    line.kv("action", to_string(rd.action)).kv("answer", to_string(d.answer));
  }

  PolicyLimits limits_;
  PolicyFramer framer_;
};

}  // namespace

std::shared_ptr<Connection> make_policy_connection(LocalSocket sock, ConnContext ctx) {
  const conf::Config& cfg = ctx.runtime->config;
  RequestConnection::Options opt;
  opt.role = conf::Role::policy;
  opt.idle = cfg.timeouts.policy_idle;
  opt.request = cfg.timeouts.policy_request;
  const PolicyLimits limits = policy_limits(cfg);
  opt.max_request = limits.request_size;
  return std::make_shared<PolicyConnection>(std::move(sock), std::move(ctx), opt, limits);
}

}  // namespace batv::relay::postfix
