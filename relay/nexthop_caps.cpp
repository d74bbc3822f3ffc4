#include "relay/nexthop_caps.hpp"

#include <algorithm>

#include "relay/client_identity.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/spawn.hpp"
#include "relay/upstream.hpp"

namespace batv::relay {

namespace {

// The extensions the client-facing EHLO can take from the next hop, for the probe's log line.
std::string summary(const smtp::Capabilities& c) {
  std::string out;
  auto add = [&out](std::string_view s) {
    if (!out.empty()) out += ' ';
    out += s;
  };
  if (c.pipelining) add("PIPELINING");
  if (c.size_advertised) add(c.size ? "SIZE=" + std::to_string(*c.size) : std::string("SIZE"));
  if (c.eightbitmime) add("8BITMIME");
  if (c.smtputf8) add("SMTPUTF8");
  if (c.enhancedstatuscodes) add("ENHANCEDSTATUSCODES");
  if (c.dsn) add("DSN");
  if (c.chunking) add("CHUNKING");
  if (c.starttls) add("STARTTLS");
  if (c.xclient) add("XCLIENT");
  return out.empty() ? std::string("-") : out;
}

awaitable<void> probe(std::shared_ptr<const Runtime> rt, std::size_t index) {
  const conf::Listener& l = rt->config.listeners.at(index);
  const std::string key = NextHopCaps::key_of(l);
  Upstream up(co_await asio::this_coro::executor, rt->config.limits, rt->config.timeouts);
  // A next hop that expects a PROXY header gets one that names no client but the relay itself:
  // v2 LOCAL (addresses of two families make client_identity produce it), which HAProxy's spec
  // defines for health checks (the next hop uses the real peer); v1 a TCP4/TCP6 line with the
  // probe connection's own addresses, since Postfix (3.7) refuses v1 "PROXY UNKNOWN".
  std::string preamble;
  const tcp::endpoint none4(asio::ip::address_v4::any(), 0), none6(asio::ip::address_v6::any(), 0);
  if (l.forward_client == conf::ForwardClient::proxy_v2) preamble = proxy_v2_header(none4, none6);
  if (l.forward_client == conf::ForwardClient::proxy_v1)
    up.preamble_for = [](const tcp::endpoint& local, const tcp::endpoint& remote) {
      return proxy_v1_header(local, remote);
    };
  UpstreamTlsPolicy tls;
  tls.mode = l.upstream_tls;
  tls.ctx = index < rt->tls.size() ? rt->tls[index].client.get() : nullptr;
  tls.name = l.upstream_tls_name.empty() ? l.upstream.host : l.upstream_tls_name;
  const bool ok = co_await up.open(l.upstream, rt->hostname, preamble, tls);
  metrics().upstream_probe(ok);
  if (!ok) {
    const NextHopCaps::Known kept = NextHopCaps::global().get(key);
    log(Level::warning, "upstream_probe")
        .kv("listener", index)
        .kv("upstream", l.upstream.to_string())
        .kv("result", "failed")
        .kv("error", std::string(to_string(up.failure())) + ": " + up.detail())
        .kv("offering", to_string(kept.source))
        .kv("caps", summary(kept.caps));
    co_return;
  }
  NextHopCaps::global().learn(key, up.caps(), NextHopCaps::Source::probe);
  log(Level::info, "upstream_probe")
      .kv("listener", index)
      .kv("upstream", l.upstream.to_string())
      .kv("result", "ok")
      .kv("tls", up.encrypted() ? up.tls_protocol() : std::string("none"))
      .kv("caps", summary(up.caps()));
  // A polite end; the 221 is read so that the next hop does not log a lost connection.
  if (co_await up.send("QUIT\r\n")) co_await up.read_reply();
  up.close();
}

}  // namespace

NextHopCaps& NextHopCaps::global() {
  static NextHopCaps caps;
  return caps;
}

smtp::Capabilities NextHopCaps::conservative() {
  smtp::Capabilities c;
  c.pipelining = true;
  c.enhancedstatuscodes = true;
  return c;
}

std::string NextHopCaps::key_of(const conf::Listener& l) {
  return l.listen_text() + " " + l.upstream.to_string() + " tls=" + std::string(conf::to_string(l.upstream_tls)) +
         " name=" + l.upstream_tls_name + " forward=" + std::string(conf::to_string(l.forward_client));
}

NextHopCaps::Known NextHopCaps::get(const std::string& key) const {
  std::lock_guard lock(mu_);
  if (auto it = known_.find(key); it != known_.end()) return it->second;
  return Known{conservative(), Source::conservative};
}

void NextHopCaps::learn(const std::string& key, const smtp::Capabilities& caps, Source source) {
  std::lock_guard lock(mu_);
  known_[key] = Known{caps, source};
}

void NextHopCaps::retain(const std::vector<std::string>& keys) {
  std::lock_guard lock(mu_);
  for (auto it = known_.begin(); it != known_.end();) {
    if (std::find(keys.begin(), keys.end(), it->first) == keys.end()) it = known_.erase(it);
    else ++it;
  }
}

void NextHopCaps::clear() {
  std::lock_guard lock(mu_);
  known_.clear();
}

std::string_view to_string(NextHopCaps::Source s) {
  switch (s) {
    case NextHopCaps::Source::conservative: return "conservative";
    case NextHopCaps::Source::probe: return "probe";
    case NextHopCaps::Source::session: return "session";
  }
  return "?";
}

void probe_next_hops(asio::any_io_executor ex, std::shared_ptr<const Runtime> rt) {
  std::vector<std::string> keys;
  for (const conf::Listener& l : rt->config.listeners)
    if (conf::is_proxy(l.role)) keys.push_back(NextHopCaps::key_of(l));
  NextHopCaps::global().retain(keys);
  for (std::size_t i = 0; i < rt->config.listeners.size(); ++i) {
    const conf::Listener& l = rt->config.listeners[i];
    if (!conf::is_proxy(l.role) || l.upstream_connect != conf::UpstreamConnect::mail) continue;
    asio::co_spawn(ex, probe(rt, i), log_exceptions("next_hop_probe"));
  }
}

}  // namespace batv::relay
