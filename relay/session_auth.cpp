// Session, AUTH (RFC 4954) relayed to the next hop.
#include "relay/session.hpp"

#include <algorithm>
#include <cstring>

#include "conf/ascii.hpp"
#include "relay/log.hpp"
#include "relay/replies.hpp"

namespace batv::relay {

namespace {

// AUTH arguments and responses are a mechanism name and base64, "=" or "*" (RFC 4954 4): printable
// ASCII. Other bytes (a stray CR, a NUL in a response) must not reach the next hop's command line.
bool auth_text(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c <= 0x7e; });
}

}  // namespace

bool Session::auth_offered() const {
  if (listener_.role != conf::Role::outbound || up_.caps().auth.empty()) return false;
  if (client_.tls()) return true;
  const bool loopback = ctx_.client_ip.rfind("127.", 0) == 0 || ctx_.client_ip == "::1";
  return listener_.plaintext_auth_loopback && loopback;
}

// AUTH (RFC 4954), relayed to the next hop byte for byte: the mechanism and initial response
// go up, each 334 challenge comes down, each client response goes up, until the next hop gives
// its final reply. Whatever the mechanism, nothing of the exchange is logged but the mechanism
// name and the outcome.
awaitable<bool> Session::do_auth(std::string_view args) {
  // Offered, not yet done, outside a transaction: smtp::check said so.
  const std::string mechanism = text::upper(args.substr(0, args.find(' ')));
  auth_attempted_ = true;  // the next hop's session now belongs to this client: never reused
  if (mechanism.empty() || !auth_text(args)) {
    refuse(replies::auth_syntax());
    co_return true;
  }
  if (!co_await ensure_upstream()) {
    refuse(upstream_failure_reply());
    co_return true;
  }
  std::string up_line = "AUTH " + std::string(args) + "\r\n";
  std::optional<smtp::Reply> r;
  for (int round = 0; round < conf::fixed::max_auth_rounds; ++round) {
    const bool sent = co_await up_.send(up_line);
    explicit_bzero(up_line.data(), up_line.size());
    if (!sent || !(r = co_await up_.read_reply())) break;
    if (r->code != 334) break;
    if (!co_await write_client(smtp::format_reply(r->code, r->lines))) co_return false;
    std::string response;
    command_deadline_ = std::min(Clock::now() + cfg_.timeouts.command, session_deadline_);
    const LineStatus st = co_await read_line(response);
    if (st == LineStatus::too_long) {
      // RFC 4954 4: the exchange is cancelled, the session goes on. The next hop is mid-exchange:
      // drop it, a later command reconnects.
      up_.close();
      log(Level::warning, "auth").kv("sid", ctx_.id).kv("mechanism", mechanism).kv("result", "failed").kv("reply", "500");
      refuse(replies::auth_line_too_long());
      co_return true;
    }
    if (st != LineStatus::ok) {
      explicit_bzero(response.data(), response.size());
      up_.close();  // the next hop is mid-exchange: start afresh if the session goes on
      // No deadline of its own here: a timeout is idle_timeout.
      co_return co_await finish_silently(read_end(failure_of(st), Clock::time_point::max(), End::idle_timeout));
    }
    if (!auth_text(response)) {  // not base64: cancel the exchange ("*", RFC 4954 4) instead
      explicit_bzero(response.data(), response.size());
      response = "*";
    }
    up_line = response + "\r\n";
    explicit_bzero(response.data(), response.size());
    r.reset();
  }
  std::string reply;
  if (!r) {
    reply = upstream_failure_reply();
    up_.close();
  } else if (r->code == 334) {
    reply = replies::auth_cancelled();  // too many rounds
    up_.close();
  } else {
    reply = relay_reply(*r);
  }
  authenticated_ = !reply.empty() && reply[0] == '2';
  log(authenticated_ ? Level::info : Level::warning, "auth")
      .kv("sid", ctx_.id)
      .kv("mechanism", mechanism)
      .kv("result", authenticated_ ? "ok" : "failed")
      .kv("reply", reply.substr(0, 3));
  co_return co_await reply_now(std::move(reply));
}

}  // namespace batv::relay
