// Session, the envelope: MAIL (its parameters checked by smtp/params against what was offered
// and, connecting at MAIL, against the next hop reached), RCPT (the sender decision at the first
// one, the inbound tag check, relayed through the pipeline), RSET and the transaction reset.
#include "relay/session.hpp"

#include "conf/ascii.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/replies.hpp"

namespace batv::relay {

smtp::ParamOffer Session::param_offer() const {
  smtp::ParamOffer o;
  o.size = adv_size_;
  o.eightbitmime = adv_8bitmime_;
  o.smtputf8 = adv_smtputf8_;
  o.dsn = adv_dsn_;
  o.auth = auth_offered();
  return o;
}

awaitable<bool> Session::handle_mail(std::string_view args) {
  const smtp::PathResult res = smtp::parse_mail_from(args);
  if (!res.path) {
    switch (res.error) {
      case smtp::PathError::syntax:
      case smtp::PathError::missing_brackets:
      case smtp::PathError::bad_param:
      case smtp::PathError::duplicate_param:
        queue_local(replies::mail_syntax());
        break;
      default:
        queue_local(replies::bad_sender(smtp::to_string(res.error)));
    }
    co_return true;
  }
  const smtp::Path& path = *res.path;
  const smtp::MailParams params = smtp::check_mail_params(path, param_offer());
  if (params.problem) {
    refuse(replies::param_refusal(*params.problem));
    co_return true;
  }
  if (connect_at_mail() && !up_.connected()) {
    // Postfix smtpd_proxy: the next hop is opened for a MAIL that the relay itself accepts.
    // Replies owed so far go out first (their order must hold); a next hop that cannot be
    // reached fails this MAIL only (451): the client may try again or QUIT, each failed MAIL
    // counts as an error, so limits.errors_per_session bounds the attempts.
    if (!co_await flush()) co_return false;
    if (!co_await ensure_upstream()) {
      refuse(mail_open_failed_reply());
      co_return true;
    }
  }
  if (up_.connected()) {
    // What the client was offered came from an earlier EHLO of the next hop (connecting at
    // MAIL); the next hop reached now may offer less. A parameter it would not take fails this
    // MAIL (RFC 3463 X.3.3) instead of the message later; the client's next EHLO (learn_caps)
    // no longer offers it.
    if (const auto lacks = smtp::recheck_mail_params(path, up_.caps())) {
      refuse(replies::param_refusal(*lacks));
      co_return true;
    }
  }
  reset_transaction();
  tx_.active = true;
  tx_.sender = path.address;
  // Parameters go upstream exactly as sent, except SIZE to a next hop that did not offer it: we
  // advertise SIZE ourselves (our limit) and have checked it already.
  tx_.mail_params = smtp::forward_mail_params(path, up_.caps());
  tx_.smtputf8 = params.smtputf8;
  tx_.bounce = listener_.role == conf::Role::inbound && is_bounce(cfg_, tx_.sender);
  phase_ = Phase::mail;
  queue_local(replies::sender_ok());
  co_return true;
}

void Session::handle_rcpt(std::string_view args) {
  const smtp::PathResult res = smtp::parse_rcpt_to(args);
  if (!res.path) {
    switch (res.error) {
      case smtp::PathError::null_not_allowed: queue_local(replies::null_recipient()); break;
      case smtp::PathError::syntax:
      case smtp::PathError::missing_brackets:
      case smtp::PathError::bad_param:
      case smtp::PathError::duplicate_param: queue_local(replies::rcpt_syntax()); break;
      default: queue_local(replies::bad_recipient(smtp::to_string(res.error)));
    }
    return;
  }
  const smtp::Path& path = *res.path;
  const smtp::Capabilities* next_hop = up_.connected() ? &up_.caps() : nullptr;  // its DSN, now
  if (const auto bad = smtp::check_rcpt_params(path, param_offer(), next_hop, tx_.smtputf8)) {
    refuse(replies::param_refusal(*bad));
    return;
  }
  phase_ = Phase::rcpt;
  ++tx_.rcpt_tried;
  if (tx_.rcpt_sent >= cfg_.limits.recipients_per_message) {
    queue_local(replies::too_many_recipients(), /*own_limit=*/true);
    return;
  }
  std::shared_ptr<TxShared> shared = tx_.shared;
  if (shared->mail_error) {  // known before this batch: the next hop refused MAIL
    queue_local(*shared->mail_error);
    return;
  }
  std::string forward_path = path.address;
  if (listener_.role == conf::Role::inbound) {
    const RcptDecision rd = decide_recipient(cfg_, rt_->keys, rt_->prvs, tx_.bounce, client_exempt_,
                                             path.address, rt_->clock.now());
    auto line = log(rd.action == RcptAction::refused ? Level::warning : Level::info, "rcpt");
    line.kv("sid", ctx_.id).kv("from", "<" + tx_.sender + ">").kv("to", "<" + path.address + ">");
    line.kv("upstream_to", rd.action == RcptAction::refused ? std::string("-") : "<" + rd.upstream + ">");
    const auto at = path.address.rfind('@');
    line.kv("domain", at == std::string::npos ? std::string("-") : text::lower(path.address.substr(at + 1)));
    if (rd.ours) line.kv("verdict", crypto::to_string(rd.verdict));
    line.kv("bounce", tx_.bounce).kv("action", to_string(rd.action));
    if (rd.ours && at != std::string::npos)
      metrics().verdict(text::lower(path.address.substr(at + 1)), rd.verdict);
    metrics().recipient(listener_.role, rd.action);
    if (rd.action == RcptAction::refused) {
      ++refused_;
      ++invalid_recipients_;
      queue_local(rd.reply, /*own_limit=*/true);  // limits.invalid_recipients_per_session
      return;
    }
    if (rd.monitor) {
      tx_.monitor_verdict = tx_.monitored ? worse(*tx_.monitor_verdict, rd.verdict) : rd.verdict;
      tx_.monitored = true;
    }
    forward_path = rd.upstream;
  }
  std::string rcpt_cmd = "RCPT TO:<" + forward_path + ">";
  if (!path.params_text.empty()) rcpt_cmd.append(" ").append(path.params_text);
  rcpt_cmd += "\r\n";

  auto rcpt_result = [this, shared](const smtp::Reply& r) {
    if (listener_.role == conf::Role::outbound)
      metrics().recipient(conf::Role::outbound, r.code / 100 == 2 ? RcptAction::relayed : RcptAction::refused);
    if (r.code / 100 == 2) {
      ++shared->rcpt_accepted;
      ++recipients_;
    }
    return Answer{relay_reply(r)};
  };

  const std::int64_t now = rt_->clock.now();
  // Only the outbound role signs; an inbound listener passes senders through untouched.
  const bool outbound = listener_.role == conf::Role::outbound;
  auto decide = [&] {
    if (outbound) return decide_sender(cfg_, rt_->keys, rt_->prvs, tx_.sender, path.address, now);
    SenderDecision d;
    d.upstream_from = tx_.sender;
    return d;
  };
  if (!tx_.decided) {
    tx_.decision = decide();
    tx_.decided = true;
    if (outbound) {
      auto line = log(Level::info, "mail");
      line.kv("sid", ctx_.id).kv("from", "<" + tx_.sender + ">").kv("upstream_from", "<" + tx_.decision.upstream_from + ">");
      if (tx_.decision.sign) line.kv("signing", "signed").kv("key", tx_.decision.key_id);
      else line.kv("signing", "not_signed").kv("reason", crypto::to_string(tx_.decision.reason));
      if (tx_.decision.sign) metrics().signed_with(tx_.decision.key_id);
      else metrics().not_signed(tx_.decision.reason);
    }

    std::string mail_cmd = "MAIL FROM:<" + tx_.decision.upstream_from + ">";
    if (!tx_.mail_params.empty()) mail_cmd.append(" ").append(tx_.mail_params);
    mail_cmd += "\r\n";
    auto on_replies = [this, shared, rcpt_result](std::vector<smtp::Reply>& got) {
      if (got.empty()) return Answer{upstream_failure_reply()};
      if (got[0].code / 100 != 2) {
        shared->mail_error = relay_reply(got[0]);
        shared->upstream_open = false;
        return Answer{*shared->mail_error};
      }
      if (got.size() < 2) return Answer{upstream_failure_reply()};
      return rcpt_result(got[1]);
    };
    shared->upstream_open = true;  // corrected by the reply handler if MAIL fails
    pipeline_.relay({std::move(mail_cmd), std::move(rcpt_cmd)}, std::move(on_replies), /*stop_on_failure=*/true);
  } else {
    const SenderDecision d = decide();
    if (d.sign != tx_.decision.sign) {
      queue_local(replies::separate_transaction(), /*own_limit=*/true);
      return;
    }
    pipeline_.relay({std::move(rcpt_cmd)}, [shared, rcpt_result](std::vector<smtp::Reply>& got) {
      if (shared->mail_error) return Answer{*shared->mail_error};
      return rcpt_result(got.at(0));
    });
  }
  ++tx_.rcpt_sent;
}

void Session::handle_rset(bool reply) {
  // A next-hop connection already lost took its transaction with it: no reconnect for RSET. But
  // a MAIL still waiting in this pipelined batch will reconnect and open one: RSET must follow.
  const bool mail_queued = pipeline_.needs_next_hop();
  if (tx_.decided && tx_.shared->upstream_open && (up_.connected() || mail_queued)) {
    // The next hop has a transaction open: abort it too. Its reply is not the client's business
    // beyond success; a failure surfaces as a lost connection in flush().
    pipeline_.relay({"RSET\r\n"}, [reply](std::vector<smtp::Reply>&) { return Answer{reply ? replies::ok() : std::string()}; });
  } else if (reply) {
    queue_local(replies::ok());
  }
  reset_transaction();
}

void Session::reset_transaction() {
  tx_ = Transaction{};
  tx_.shared = std::make_shared<TxShared>();
  phase_ = Phase::command;
}

}  // namespace batv::relay
