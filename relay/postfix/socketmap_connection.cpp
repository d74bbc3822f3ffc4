// The socketmap's connection: decode_netstring + decide_socketmap per query on the shared request
// loop (relay/postfix/request_connection.hpp).

#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/postfix/netstring.hpp"
#include "relay/postfix/request_connection.hpp"
#include "relay/postfix/socketmap.hpp"

namespace batv::relay::postfix {

namespace {

// "10000:" + payload + ",": the largest netstring a query may be.
constexpr std::size_t max_query_frame = conf::fixed::socketmap_max_query + 7;

Metrics::Answer metric_answer(MapAnswer a) {
  switch (a) {
    case MapAnswer::found: return Metrics::Answer::found;
    case MapAnswer::notfound: return Metrics::Answer::notfound;
    case MapAnswer::perm: return Metrics::Answer::perm;
  }
  return Metrics::Answer::other;
}

class SocketmapConnection final : public RequestConnection {
 public:
  using RequestConnection::RequestConnection;

 protected:
  Step process(std::string_view in, std::string& out) override {
    Step st;
    const Runtime& rt = runtime();
    const std::int64_t now = rt.clock.now();
    for (;;) {
      const NetstringResult r = decode_netstring(in.substr(st.consumed), conf::fixed::socketmap_max_query);
      if (r.status == NetstringResult::Status::need_more) return st;
      if (r.status == NetstringResult::Status::error) {
        st.close = true;
        st.reason = r.error == NetstringError::too_long ? SessionEnd::request_too_large : SessionEnd::protocol_error;
        st.detail = "netstring " + std::string(to_string(r.error));
        return st;
      }
      const SocketmapDecision d = decide_socketmap(rt.config, rt.keys, rt.prvs, r.payload, now);
      // Our replies are "OK " plus an address shorter than the query, or a fixed text.
      append_netstring(out, std::string_view(d.reply).substr(0, conf::fixed::socketmap_max_reply));
      st.consumed += r.consumed;
      ++requests_;
      account(d);
    }
  }

 private:
  void account(const SocketmapDecision& d) {
    metrics().answer(conf::Role::socketmap, metric_answer(d.answer));
    const RcptDecision& rd = d.recipient_decision;
    const Level level = d.answer == MapAnswer::perm ? Level::warning : rd.ours ? Level::info : Level::debug;
    if (!log_enabled(level)) return;
    auto line = log(level, "socketmap");
    line.kv("sid", context().id);
    if (d.answer == MapAnswer::perm) {
      line.kv("answer", to_string(d.answer)).kv("reply", d.reply);
      return;
    }
    line.kv("key", d.key);
    if (rd.ours) line.kv("verdict", crypto::to_string(rd.verdict)).kv("action", to_string(rd.action));
    line.kv("answer", to_string(d.answer));
    if (d.answer == MapAnswer::found) line.kv("stripped", rd.upstream);
  }
};

}  // namespace

std::shared_ptr<Connection> make_socketmap_connection(LocalSocket sock, ConnContext ctx) {
  const conf::Config& cfg = ctx.runtime->config;
  RequestConnection::Options opt;
  opt.role = conf::Role::socketmap;
  opt.idle = cfg.timeouts.socketmap_idle;
  opt.request = cfg.timeouts.socketmap_request;
  opt.max_request = max_query_frame;
  return std::make_shared<SocketmapConnection>(std::move(sock), std::move(ctx), opt);
}

}  // namespace batv::relay::postfix
