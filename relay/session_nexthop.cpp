// Session, the next hop: opening (or reusing) the connection, its TLS policy, relaying its replies.
#include "relay/session.hpp"

#include "relay/client_identity.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/nexthop_caps.hpp"
#include "relay/replies.hpp"

namespace batv::relay {

std::string Session::relay_reply(const smtp::Reply& r) const {
  const int cls = r.code / 100;
  if (cls != 2 && cls != 4 && cls != 5) return replies::upstream_garbled();
  return smtp::format_reply(r.code, r.lines);
}

std::string Session::upstream_failure_reply() const { return next_hop_failure_reply(up_); }

UpstreamTlsPolicy Session::upstream_tls_policy() const {
  UpstreamTlsPolicy p;
  p.mode = listener_.upstream_tls;
  p.ctx = rt_->tls.at(ctx_.listener).client.get();
  p.name = listener_.upstream_tls_name.empty() ? listener_.upstream.host : listener_.upstream_tls_name;
  return p;
}

// Connects to the next hop (PROXY header, greeting, EHLO, STARTTLS per upstream_tls) and logs
// the outcome; the failure detail goes to session_end.
bool Session::upstream_reusable() const {
  return listener_.forward_client == conf::ForwardClient::none && preamble_.empty() &&
         cfg_.timeouts.upstream_idle.count() > 0 && cfg_.limits.upstream_idle_connections > 0;
}

awaitable<bool> Session::open_upstream() {
  if (upstream_reusable()) {
    while (auto idle = UpstreamCache::local().take(rt_.get(), ctx_.listener)) {
      if (!up_.adopt(std::move(*idle))) continue;  // closed meanwhile: try the next, then connect
      log(Level::debug, "upstream_reuse").kv("sid", ctx_.id).kv("upstream", up_.peer());
      if (client_.tls() && !up_.encrypted()) log_downgrade();
      ++upstream_opens_;
      co_return true;
    }
  }
  const UpstreamTlsPolicy tls = upstream_tls_policy();
  const bool ok = co_await up_.open(listener_.upstream, rt_->hostname, preamble_, tls);
  if (ok || up_.stage() != UpstreamStage::connect) metrics().upstream_connection(listener_.role);
  if (!ok) {
    metrics().upstream_error(up_.stage());
    upstream_detail_ = std::string(to_string(up_.failure())) + ": " + up_.detail();
    if (up_.failure() == Upstream::Failure::tls)
      log(Level::warning, "upstream_tls").kv("sid", ctx_.id).kv("result", "failed").kv("error", up_.detail());
    log(Level::warning, "upstream_unavailable").kv("sid", ctx_.id).kv("upstream", listener_.upstream.to_string())
        .kv("error", upstream_detail_);
    co_return false;
  }
  if (up_.encrypted())
    log(Level::info, "upstream_tls")
        .kv("sid", ctx_.id)
        .kv("result", "ok")
        .kv("protocol", up_.tls_protocol())
        .kv("cipher", up_.tls_cipher());
  if (client_.tls() && !up_.encrypted()) log_downgrade();
  ++upstream_opens_;
  co_return true;
}

void Session::learn_caps() {
  if (connect_at_mail() && up_.connected())
    NextHopCaps::global().learn(NextHopCaps::key_of(listener_), up_.caps(), NextHopCaps::Source::session);
}

bool Session::strict_upstream_tls() const {
  // required/verify not met is a policy matter (4.7.0); a broken opportunistic handshake is just a
  // next hop we could not talk to (4.4.2).
  return listener_.upstream_tls == conf::UpstreamTls::required || listener_.upstream_tls == conf::UpstreamTls::verify;
}

std::string Session::mail_open_failed_reply() const {
  if (up_.failure() != Upstream::Failure::tls) return upstream_failure_reply();
  return strict_upstream_tls() ? replies::upstream_tls_unavailable_mail() : replies::upstream_tls_failed_mail();
}

void Session::log_downgrade() {
  log(Level::warning, "tls_downgrade")
      .kv("sid", ctx_.id)
      .kv("client_tls", client_.protocol())
      .kv("upstream", listener_.upstream.to_string())
      .kv("upstream_tls", conf::to_string(listener_.upstream_tls));
}

awaitable<bool> Session::ensure_upstream() {
  if (up_.connected()) co_return true;
  // Connecting at MAIL, the first connection is no reconnect.
  const bool first = connect_at_mail() && upstream_opens_ == 0;
  bool ok = co_await open_upstream();
  if (ok && helo_seen_) ok = co_await forward_client_identity();
  if (ok) learn_caps();
  auto line = log(ok ? Level::info : Level::warning, first ? "upstream_open" : "upstream_reconnect");
  line.kv("sid", ctx_.id).kv("result", ok ? "ok" : "failed");
  if (!ok) line.kv("error", up_.detail());
  co_return ok;
}

awaitable<bool> Session::forward_client_identity() {
  if (listener_.forward_client != conf::ForwardClient::xclient) co_return true;
  ClientIdentity who;
  who.sid = ctx_.id;
  who.listener = ctx_.listener;
  who.upstream = listener_.upstream.to_string();
  who.remote = ctx_.remote;
  who.info.addr = ctx_.client_ip;
  who.info.ipv6 = ctx_.client_ip.find(':') != std::string::npos;
  who.info.port = client_port_;
  who.info.helo = client_helo_;
  who.info.esmtp = esmtp_;
  who.lookup_timeout = cfg_.timeouts.upstream_connect;
  who.name_ttl = cfg_.timeouts.client_name_ttl;
  who.names_cached = static_cast<std::size_t>(cfg_.limits.client_names_cached);
  co_return co_await relay::forward_client_identity(up_, who);
}

}  // namespace batv::relay
