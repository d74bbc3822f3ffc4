// upstream: the relay's SMTP client side, one connection to the next hop per client session.
//
// The next hop is untrusted (Postfix smtpd_proxy.c): replies are read through a bounded line
// buffer (limits.reply_line_length) into smtp::ReplyReader (limits.reply_lines), every wait has a
// deadline, and any failure leaves the connection closed with a reason for the log. Never throws.
#pragma once

#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "conf/config.hpp"
#include "relay/io.hpp"
#include "relay/metrics.hpp"
#include "relay/smtp/reply.hpp"

namespace batv::relay {

// TLS towards the next hop (RFC 3207 as a client). `ctx` is null for UpstreamTls::none.
struct UpstreamTlsPolicy {
  conf::UpstreamTls mode = conf::UpstreamTls::none;
  boost::asio::ssl::context* ctx = nullptr;
  std::string name;  // SNI and, for verify, the expected certificate name
};

// A next-hop connection between two client sessions (relay/upstream.cpp, UpstreamCache): idle,
// greeted, EHLO done (and TLS, when the policy asked for it), no transaction open.
struct IdleUpstream {
  std::unique_ptr<Stream> sock;
  smtp::Capabilities caps;
  std::string peer;
};

class Upstream {
 public:
  enum class Failure { none, unreachable, timeout, closed, protocol, io, tls };
  using TlsPolicy = UpstreamTlsPolicy;

  Upstream(asio::any_io_executor ex, const conf::Limits& limits, const conf::Timeouts& timeouts);

  // Connects, sends `preamble` first when not empty (a HAProxy PROXY header), reads the 220
  // greeting and sends EHLO (HELO when EHLO gets a 5xx), recording the capabilities. False on
  // any failure (failure() says which).
  awaitable<bool> open(const conf::HostPort& next_hop, const std::string& our_name,
                       const std::string& preamble = {}, const TlsPolicy& tls = {});
  // A preamble that depends on the connection's own addresses (the capability probe's PROXY v1
  // header describes the relay itself: relay/nexthop_caps.cpp): called by open() once connected,
  // when its `preamble` is empty.
  std::function<std::string(const tcp::endpoint& local, const tcp::endpoint& remote)> preamble_for;

  // Postfix XCLIENT: sends "XCLIENT <attributes>", and after the 220 that restarts the next hop's
  // session, EHLO `ehlo_name` again (updating the capabilities). Returns the XCLIENT reply, or
  // nullopt when the connection failed.
  awaitable<std::optional<smtp::Reply>> xclient(const std::string& attributes, const std::string& ehlo_name);

  // Fails (protocol) without writing when the next hop has sent anything since its last reply
  // was read: see spoke_out_of_turn().
  awaitable<bool> send(std::string_view data);
  // Reads one complete reply; `final_dot` selects timeouts.upstream_data_reply.
  awaitable<std::optional<smtp::Reply>> read_reply(bool final_dot = false);

  void close();
  void cancel();
  // Hands the connection over for reuse by a later session, leaving this object closed. Only for
  // a connected next hop with nothing unread and no transaction open.
  IdleUpstream release();
  // Takes over an idle connection; false (and closed) when the next hop has closed it or sent
  // anything meanwhile (a 421 timeout, say): the caller then opens a fresh one.
  bool adopt(IdleUpstream idle);
  [[nodiscard]] bool connected() const { return sock_->is_open() && failure_ == Failure::none; }
  [[nodiscard]] bool encrypted() const { return sock_->tls(); }
  [[nodiscard]] std::string tls_protocol() const { return sock_->protocol(); }
  [[nodiscard]] std::string tls_cipher() const { return sock_->cipher(); }
  [[nodiscard]] Failure failure() const { return failure_; }
  [[nodiscard]] const std::string& detail() const { return detail_; }
  [[nodiscard]] const smtp::Capabilities& caps() const { return caps_; }
  [[nodiscard]] const std::string& peer() const { return peer_; }
  // The step open() was at when it failed: connect, greeting, ehlo or tls (for metrics).
  [[nodiscard]] UpstreamStage stage() const { return stage_; }

 private:
  void fail(Failure f, std::string detail);
  // A next hop speaks only when spoken to. Bytes that arrived after the last reply we read and
  // before our next command are a reply to nothing we sent, or an early reply to data not yet
  // all sent ("250" in the middle of a message): every later reply would be off by one, and the
  // end of data could be answered by a stale 250. Checked in buf_ and, once a reply has been
  // read on the connection (or its TLS session), in the kernel's receive queue (before that, a
  // greeting may race our PROXY header, and a TLS 1.3 server sends session tickets).
  [[nodiscard]] bool spoke_out_of_turn() const;

  awaitable<bool> ehlo(const std::string& our_name);
  awaitable<bool> starttls(const TlsPolicy& tls, const std::string& our_name);

  asio::any_io_executor ex_;
  std::unique_ptr<Stream> sock_;  // a pointer so that a connection can move between sessions
  const conf::Limits& limits_;
  const conf::Timeouts& timeouts_;
  std::string buf_;          // unread reply bytes, bounded by reply_line_length
  smtp::ReplyReader reader_;
  smtp::Capabilities caps_;
  Failure failure_ = Failure::none;
  std::string detail_;
  std::string peer_;
  UpstreamStage stage_ = UpstreamStage::connect;
  bool replied_ = false;     // a reply was read since connect / the TLS handshake
};

std::string_view to_string(Upstream::Failure f);

// Idle next-hop connections kept between client sessions, like Postfix's connection cache
// (scache): a client that sends one message per connection then costs no next-hop connect,
// greeting, EHLO, TLS handshake or QUIT. One cache per I/O thread (no lock); an entry is reused
// only by a session of the same listener under the same runtime (a reload starts afresh), and
// only for listeners that forward no client identity (XCLIENT and PROXY describe one client).
// Entries older than timeouts.upstream_idle are closed by a sweep timer; at most
// limits.upstream_idle_connections per thread (the oldest is closed first).
class UpstreamCache {
 public:
  static UpstreamCache& local();  // this thread's
  void put(const void* runtime, std::size_t listener, std::shared_ptr<const void> keep_alive,
           IdleUpstream idle, Clock::duration max_idle, std::size_t capacity);
  std::optional<IdleUpstream> take(const void* runtime, std::size_t listener);
  void clear();  // closes everything; call on the owning thread before its io_context goes
  [[nodiscard]] std::size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    const void* runtime;
    std::size_t listener;
    std::shared_ptr<const void> keep_alive;  // the runtime stays (and its address stays unique)
    IdleUpstream idle;
    Clock::time_point expires;
  };
  void sweep();
  void schedule(asio::any_io_executor ex);
  std::deque<Entry> entries_;  // oldest first
  std::unique_ptr<asio::steady_timer> timer_;
  bool timer_pending_ = false;
};

}  // namespace batv::relay
