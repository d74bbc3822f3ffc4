#include "relay/milter/handler.hpp"

#include <algorithm>

#include "conf/limits.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/replies.hpp"
#include "conf/ascii.hpp"

namespace batv::relay::milter {

namespace {
std::string_view unbracket(std::string_view a) {
  if (a.size() >= 2 && a.front() == '<' && a.back() == '>') return a.substr(1, a.size() - 2);
  return a;
}
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) {
    if (!s.empty()) s.push_back(' ');
    s += a;
  }
  return s;
}
// A reply line of relay/replies.hpp without its CRLF.
std::string bare(std::string line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
  return line;
}
constexpr auto role = conf::Role::milter;
}  // namespace

Handler::Handler(std::shared_ptr<const Runtime> rt, std::size_t listener, std::string sid, Clock clock)
    : rt_(std::move(rt)), listener_(rt_->config.listeners.at(listener)), sid_(std::move(sid)), clock_(std::move(clock)) {}

std::string Handler::macro(std::string_view name) const {
  for (const auto& [k, v] : macros_)
    if (k == name) return v;
  // Sendmail spells one-letter macros bare, long ones in braces; accept both for "i".
  if (name.size() == 1)
    for (const auto& [k, v] : macros_)
      if (k.size() == 3 && k[0] == '{' && k[1] == name[0] && k[2] == '}') return v;
  return {};
}

bool Handler::non_smtpd() const {
  return macro("{client_name}") == "localhost" && macro("{client_addr}") == "127.0.0.1" &&
         macro("{auth_authen}").empty();
}

bool Handler::ours() const {
  const std::string addr = macro("{client_addr}");
  for (const auto& c : listener_.allow_clients)
    if (c.contains(std::string_view(addr))) return true;
  if (!macro("{auth_authen}").empty()) return true;
  const std::string daemon = macro("{daemon_name}");
  return std::find(listener_.originating_daemons.begin(), listener_.originating_daemons.end(), daemon) !=
         listener_.originating_daemons.end();
}

bool Handler::needs_headers() const {
  if (!listener_.milter_verify) return false;
  const auto& in = rt_->config.inbound;
  if (in.mode == conf::InboundMode::monitor) return true;
  return std::any_of(in.domain_mode.begin(), in.domain_mode.end(),
                     [](const auto& d) { return d.second == conf::InboundMode::monitor; });
}

void Handler::fail(std::string why, std::string& out) {
  if (state_ == State::closed) return;
  out += encode_tempfail();
  error_ = std::move(why);
  state_ = State::closed;
  if (in_message_) metrics().answer(role, Metrics::Answer::tempfail);
  log(Level::warning, "milter_error").kv("sid", sid_).kv("error", error_);
}

void Handler::tempfail(std::string& out) {
  out += encode_tempfail();
  metrics().answer(role, Metrics::Answer::tempfail);
  log(Level::info, "milter_out_of_order").kv("sid", sid_);
  reset_message();
}

void Handler::on_frame_error(Error e, std::string& out) { fail(std::string(to_string(e)), out); }

void Handler::reset_message() {
  in_message_ = false;
  sender_.clear();
  mail_args_.clear();
  bounce_ = is_ours_ = local_ = decided_ = false;
  decision_ = {};
  rcpts_ = 0;
  strip_.clear();
  monitor_ = false;
  monitor_verdict_ = crypto::Verdict::valid;
  status_headers_ = 0;
}

void Handler::negotiate(const OptNeg& o, std::string& out) {
  if (o.version < kVersion) return fail("milter_version_" + std::to_string(o.version), out);
  const bool verify = listener_.milter_verify;
  const bool headers = needs_headers();
  std::uint32_t need = act::chgfrom | act::setsymlist;
  if (verify) need |= act::delrcpt | act::addrcpt_par;
  if (headers) need |= act::addhdrs | act::chghdrs;
  if ((o.actions & need) != need) return fail("milter_actions_missing", out);
  std::uint32_t skip = proto::noconnect | proto::nohelo | proto::nobody | proto::noeoh | proto::nounknown |
                       proto::nodata | proto::nr_conn | proto::nr_helo | proto::nr_mail | proto::nr_data |
                       proto::nr_unkn | proto::nr_eoh | proto::nr_body;
  skip |= headers ? proto::nr_hdr : proto::nohdrs;
  actions_ = need;
  protocol_ = skip & o.protocol;
  out += encode_optneg(kVersion, need, protocol_,
                       {{Stage::envfrom, std::string(kMailMacros)}, {Stage::eom, std::string(kEomMacros)}});
  state_ = State::ready;
}

void Handler::on_mail(const Envelope& e, std::string& out) {
  reset_message();
  in_message_ = true;
  sender_ = std::string(unbracket(e.address));
  mail_args_ = join(e.args);
  bounce_ = is_bounce(rt_->config, sender_);
  local_ = non_smtpd();
  is_ours_ = local_ || ours();
  // MAIL is never refused here (the decision needs the first RCPT): when the MTA offers it, it
  // does not wait for this answer, one round trip per message fewer (Postfix: SMFIP_NR_MAIL).
  if (!(protocol_ & proto::nr_mail)) out += encode_continue();
}

void Handler::on_rcpt(const Envelope& e, std::string& out) {
  if (!in_message_) return tempfail(out);
  const std::string rcpt(unbracket(e.address));
  const std::int64_t now = clock_();
  const auto& cfg = rt_->config;
  std::string upstream = rcpt;

  if (listener_.milter_verify) {
    const std::string addr = macro("{client_addr}");
    bool client_exempt = false;
    for (const auto& c : cfg.inbound.accept_untagged_from)
      if (c.contains(std::string_view(addr))) client_exempt = true;
    const RcptDecision rd = decide_recipient(cfg, rt_->keys, rt_->prvs, bounce_, client_exempt, rcpt, now);
    if (rd.ours) {
      const auto at = rcpt.rfind('@');
      metrics().verdict(text::lower(at == std::string::npos ? "" : rcpt.substr(at + 1)), rd.verdict);
    }
    metrics().recipient(role, rd.action);
    log(Level::info, "rcpt").kv("sid", sid_).kv("to", "<" + rcpt + ">").kv("action", to_string(rd.action))
        .kv("verdict", crypto::to_string(rd.verdict));
    if (rd.action == RcptAction::refused && !local_) {
      ++refused_;
      out += encode_replycode(bare(rd.reply));
      metrics().answer(role, Metrics::Answer::reject);
      return;
    }
    if (rd.action != RcptAction::refused) upstream = rd.upstream;
    if (rd.monitor) {
      monitor_ = true;
      monitor_verdict_ = rcpts_ == 0 && !monitor_ ? rd.verdict : worse(monitor_verdict_, rd.verdict);
    }
  }

  if (is_ours_) {
    const SenderDecision d = decide_sender(cfg, rt_->keys, rt_->prvs, sender_, upstream, now);
    if (!decided_) {
      decision_ = d;
      decided_ = true;
      auto line = log(Level::info, "mail");
      line.kv("sid", sid_).kv("role", "milter").kv("queue_id", macro("i")).kv("from", "<" + sender_ + ">")
          .kv("upstream_from", "<" + d.upstream_from + ">");
      if (d.sign) line.kv("signing", "signed").kv("key", d.key_id);
      else line.kv("signing", "not_signed").kv("reason", crypto::to_string(d.reason));
      if (d.sign) metrics().signed_with(d.key_id);
      else metrics().not_signed(d.reason);
    } else if ((d.sign != decision_.sign || d.upstream_from != decision_.upstream_from) && !local_) {
      out += encode_replycode(bare(replies::separate_transaction()));
      metrics().answer(role, Metrics::Answer::tempfail);
      return;
    }
  }
  if (upstream != rcpt) strip_.push_back(Rcpt{std::string(e.address), upstream, join(e.args)});
  ++rcpts_;
  out += encode_continue();
  metrics().answer(role, Metrics::Answer::accept);
}

void Handler::on_header(const Header& h, std::string& out) {
  if (!in_message_) return tempfail(out);
  if (text::iequals(h.name, kStatusHeader)) ++status_headers_;
  if (!(protocol_ & proto::nr_hdr)) out += encode_continue();
}

void Handler::on_eom(std::string& out) {
  if (!in_message_ || rcpts_ == 0) return tempfail(out);
  if (decided_ && decision_.sign) {
    out += encode_chgfrom("<" + decision_.upstream_from + ">", mail_args_);
    ++signed_;
  }
  for (const Rcpt& r : strip_) {
    out += encode_delrcpt(r.original);
    out += encode_addrcpt_par("<" + r.upstream + ">", r.args);
  }
  if (monitor_ && (actions_ & act::chghdrs)) {
    for (std::uint32_t i = status_headers_; i >= 1; --i) out += encode_chgheader(i, kStatusHeader, "");
    out += encode_addheader(kStatusHeader, crypto::to_string(monitor_verdict_));
  }
  out += encode_accept();
  metrics().answer(role, Metrics::Answer::accept);
  metrics().message(role, true);
  ++messages_;
  log(Level::info, "message").kv("sid", sid_).kv("role", "milter").kv("queue_id", macro("i"))
      .kv("signed", decided_ && decision_.sign).kv("stripped", static_cast<std::uint64_t>(strip_.size()))
      .kv("monitor", monitor_);
  reset_message();
}

void Handler::on_packet(const Packet& p, std::string& out) {
  if (state_ == State::closed) return;
  const CommandResult r = parse_command(p);
  if (!r.ok) return fail(std::string(to_string(r.error)), out);
  const Command& c = r.command;
  if (state_ == State::start) {
    if (const auto* o = std::get_if<OptNeg>(&c)) return negotiate(*o, out);
    return fail("command_before_negotiation", out);
  }
  if (std::holds_alternative<OptNeg>(c)) return fail("negotiation_repeated", out);
  if (const auto* m = std::get_if<Macros>(&c)) {
    for (const auto& kv_in : m->values) {
      const auto& k = kv_in.first;
      const auto& v = kv_in.second;
      auto it = std::find_if(macros_.begin(), macros_.end(), [&k](const auto& kv) { return kv.first == k; });
      if (it != macros_.end()) it->second = v;
      else if (macros_.size() < conf::fixed::max_milter_macros) macros_.emplace_back(k, v);
    }
    return;  // macros get no reply
  }
  if (std::holds_alternative<Connect>(c)) {  // a new SMTP connection (its macros came just before)
    reset_message();
    out += encode_continue();
    return;
  }
  if (std::holds_alternative<Helo>(c) || std::holds_alternative<Unknown>(c)) {
    out += encode_continue();
    return;
  }
  if (const auto* e = std::get_if<Envelope>(&c)) return e->rcpt ? on_rcpt(*e, out) : on_mail(*e, out);
  if (const auto* h = std::get_if<Header>(&c)) return on_header(*h, out);
  if (std::holds_alternative<Body>(c)) {
    if (!in_message_) return tempfail(out);
    out += encode_continue();
    return;
  }
  const char cmd = std::get<Simple>(c).cmd;
  switch (cmd) {
    case 'T':
    case 'N':
      if (!in_message_ || rcpts_ == 0) return tempfail(out);
      out += encode_continue();
      return;
    case 'E': return on_eom(out);
    case 'A': reset_message(); return;
    case 'K':
      reset_message();
      macros_.clear();
      return;
    case 'Q':
      state_ = State::closed;
      return;
    default: return fail("unknown_command", out);
  }
}

}  // namespace batv::relay::milter
