#include "relay/upstream.hpp"

#include <algorithm>
#include <cerrno>

#include <sys/socket.h>

#include "conf/limits.hpp"

namespace batv::relay {

std::string_view to_string(Upstream::Failure f) {
  switch (f) {
    case Upstream::Failure::none: return "none";
    case Upstream::Failure::unreachable: return "unreachable";
    case Upstream::Failure::timeout: return "timeout";
    case Upstream::Failure::closed: return "closed";
    case Upstream::Failure::protocol: return "protocol";
    case Upstream::Failure::io: return "io";
    case Upstream::Failure::tls: return "tls";
  }
  return "?";
}

Upstream::Upstream(asio::any_io_executor ex, const conf::Limits& limits, const conf::Timeouts& timeouts)
    : ex_(ex),
      sock_(std::make_unique<Stream>(ex)),
      limits_(limits),
      timeouts_(timeouts),
      reader_(static_cast<std::size_t>(limits.reply_line_length), static_cast<std::size_t>(limits.reply_lines)) {}

void Upstream::fail(Failure f, std::string detail) {
  if (failure_ == Failure::none) {
    failure_ = f;
    detail_ = std::move(detail);
  }
  close();
}

void Upstream::close() { sock_->close(); }

void Upstream::cancel() { sock_->cancel(); }

IdleUpstream Upstream::release() {
  IdleUpstream idle{std::move(sock_), std::move(caps_), std::move(peer_)};
  sock_ = std::make_unique<Stream>(ex_);
  caps_ = {};
  peer_.clear();
  return idle;
}

bool Upstream::adopt(IdleUpstream idle) {
  // Anything readable on an idle SMTP connection means it is over: EOF, a reset, or a reply
  // nobody asked for (421 after the next hop's own timeout).
  char byte;
  const ssize_t n = ::recv(idle.sock->socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
    idle.sock->close();
    return false;
  }
  sock_->close();
  sock_ = std::move(idle.sock);
  caps_ = std::move(idle.caps);
  peer_ = std::move(idle.peer);
  failure_ = Failure::none;
  detail_.clear();
  buf_.clear();
  reader_ = smtp::ReplyReader(static_cast<std::size_t>(limits_.reply_line_length),
                              static_cast<std::size_t>(limits_.reply_lines));
  replied_ = true;  // greeted long ago: anything unread from now on is out of turn
  stage_ = UpstreamStage::reply;  // open long ago: what fails from here is a reply
  return true;
}

awaitable<bool> Upstream::open(const conf::HostPort& hop, const std::string& our_name,
                               const std::string& preamble, const TlsPolicy& tls) {
  failure_ = Failure::none;
  detail_.clear();
  buf_.clear();
  reader_ = smtp::ReplyReader(static_cast<std::size_t>(limits_.reply_line_length),
                              static_cast<std::size_t>(limits_.reply_lines));
  caps_ = {};
  sock_->reset();
  replied_ = false;
  stage_ = UpstreamStage::connect;
  const IoResult c = co_await connect_for(sock_->socket(), hop.host, hop.port, timeouts_.upstream_connect);
  if (!c) {
    fail(c.timed_out ? Failure::timeout : Failure::unreachable,
         hop.to_string() + ": " + (c.timed_out ? std::string("connect timed out") : c.ec.message()));
    co_return false;
  }
  boost::system::error_code ec;
  const auto remote = sock_->socket().remote_endpoint(ec);
  peer_ = ec ? hop.to_string() : to_string(remote);
  stage_ = UpstreamStage::greeting;
  std::string own;
  if (preamble.empty() && preamble_for) {
    const auto local = sock_->socket().local_endpoint(ec);
    if (!ec) own = preamble_for(local, remote);
  }
  const std::string& first = preamble.empty() ? own : preamble;
  if (!first.empty() && !co_await send(first)) co_return false;
  auto greeting = co_await read_reply();
  if (!greeting) co_return false;
  if (greeting->code != 220) {
    fail(Failure::protocol, "greeting " + std::to_string(greeting->code));
    co_return false;
  }
  if (!co_await ehlo(our_name)) co_return false;
  if (tls.mode == conf::UpstreamTls::none || tls.ctx == nullptr) co_return true;
  if (!caps_.starttls) {
    stage_ = UpstreamStage::tls;
    if (tls.mode == conf::UpstreamTls::opportunistic) co_return true;
    fail(Failure::tls, "next hop offers no STARTTLS");
    co_return false;
  }
  co_return co_await starttls(tls, our_name);
}

awaitable<bool> Upstream::ehlo(const std::string& our_name) {
  stage_ = UpstreamStage::ehlo;
  if (!co_await send("EHLO " + our_name + "\r\n")) co_return false;
  auto ehlo = co_await read_reply();
  if (!ehlo) co_return false;
  if (ehlo->code / 100 == 2) {
    caps_ = smtp::parse_ehlo(*ehlo);
    co_return true;
  }
  if (ehlo->code / 100 != 5) {
    fail(Failure::protocol, "EHLO answered " + std::to_string(ehlo->code));
    co_return false;
  }
  // RFC 5321 3.2: a server without extensions answers EHLO with 5xx; fall back to HELO.
  if (!co_await send("HELO " + our_name + "\r\n")) co_return false;
  auto helo = co_await read_reply();
  if (!helo) co_return false;
  if (helo->code / 100 != 2) {
    fail(Failure::protocol, "HELO answered " + std::to_string(helo->code));
    co_return false;
  }
  caps_ = {};
  co_return true;
}

awaitable<bool> Upstream::starttls(const TlsPolicy& tls, const std::string& our_name) {
  stage_ = UpstreamStage::tls;
  if (!co_await send("STARTTLS\r\n")) co_return false;
  auto r = co_await read_reply();
  if (!r) co_return false;
  if (r->code != 220) {
    // No handshake began, so the connection is still clean plaintext SMTP (RFC 3207 4): an
    // opportunistic policy carries on without TLS; the stricter ones give up.
    if (tls.mode == conf::UpstreamTls::opportunistic) co_return true;
    fail(Failure::tls, "STARTTLS answered " + std::to_string(r->code));
    co_return false;
  }
  if (!buf_.empty()) {  // bytes after the 220 before the handshake: a broken or hostile next hop
    fail(Failure::tls, "data pipelined after the STARTTLS reply");
    co_return false;
  }
  const bool verify = tls.mode == conf::UpstreamTls::verify;
  const IoResult h = co_await sock_->handshake(*tls.ctx, boost::asio::ssl::stream_base::client,
                                              timeouts_.upstream_reply, tls.name, verify);
  if (!h) {
    std::string why = h.timed_out ? std::string("TLS handshake timed out") : "TLS handshake: " + h.ec.message();
    if (auto* t = sock_->tls_stream()) {
      const long v = SSL_get_verify_result(t->native_handle());
      if (v != X509_V_OK) why += std::string(" (") + X509_verify_cert_error_string(v) + ")";
    }
    fail(Failure::tls, why);
    co_return false;
  }
  // RFC 3207 4.2: forget what was learned before TLS and ask again.
  replied_ = false;
  co_return co_await ehlo(our_name);
}

awaitable<std::optional<smtp::Reply>> Upstream::xclient(const std::string& attributes,
                                                         const std::string& ehlo_name) {
  if (!co_await send("XCLIENT " + attributes + "\r\n")) co_return std::nullopt;
  auto r = co_await read_reply();
  // XCLIENT_README: Postfix answers 220 and restarts the session with a new greeting; other
  // implementations (smtp-sink) answer 250. Either way, say EHLO again.
  if (!r || r->code / 100 != 2) co_return r;
  if (!co_await send("EHLO " + ehlo_name + "\r\n")) co_return std::nullopt;
  auto ehlo = co_await read_reply();
  if (!ehlo) co_return std::nullopt;
  if (ehlo->code / 100 != 2) {
    fail(Failure::protocol, "EHLO after XCLIENT answered " + std::to_string(ehlo->code));
    co_return std::nullopt;
  }
  caps_ = smtp::parse_ehlo(*ehlo);
  co_return r;
}

bool Upstream::spoke_out_of_turn() const {
  if (!buf_.empty()) return true;
  if (!replied_) return false;
  boost::system::error_code ec;
  const std::size_t queued = sock_->socket().available(ec);
  return !ec && queued > 0;
}

awaitable<bool> Upstream::send(std::string_view data) {
  if (!connected()) co_return false;
  if (spoke_out_of_turn()) {
    fail(Failure::protocol, "reply to a command not sent (or before the end of data)");
    co_return false;
  }
  const IoResult r = co_await write_all_for(*sock_, asio::buffer(data.data(), data.size()), timeouts_.upstream_reply);
  if (!r) {
    fail(r.timed_out ? Failure::timeout : Failure::io,
         r.timed_out ? std::string("write timed out") : "write: " + r.ec.message());
    co_return false;
  }
  co_return true;
}

awaitable<std::optional<smtp::Reply>> Upstream::read_reply(bool final_dot) {
  const auto limit = final_dot ? timeouts_.upstream_data_reply : timeouts_.upstream_reply;
  const auto deadline = Clock::now() + limit;
  const auto max_line = static_cast<std::size_t>(limits_.reply_line_length);
  for (;;) {
    if (!connected()) co_return std::nullopt;
    // Consume every complete line in the buffer.
    std::size_t start = 0;
    for (;;) {
      const auto nl = buf_.find('\n', start);
      if (nl == std::string::npos) break;
      std::string_view line(buf_.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      const auto st = reader_.feed(line);
      start = nl + 1;
      if (st == smtp::ReplyReader::Status::error) {
        fail(Failure::protocol, std::string(reader_.error()));
        co_return std::nullopt;
      }
      if (st == smtp::ReplyReader::Status::complete) {
        buf_.erase(0, start);
        replied_ = true;
        co_return reader_.take();
      }
    }
    buf_.erase(0, start);
    if (buf_.size() >= max_line) {
      fail(Failure::protocol, "reply line too long");
      co_return std::nullopt;
    }
    char tmp[conf::fixed::upstream_read_bytes];
    const std::size_t room = std::min(sizeof tmp, max_line - buf_.size());
    const IoResult r = co_await read_some_for(*sock_, asio::buffer(tmp, room), deadline - Clock::now());
    if (!r) {
      if (r.timed_out) fail(Failure::timeout, "no reply within " + std::to_string(limit.count()) + "s");
      else if (r.ec == asio::error::eof || r.ec == asio::error::connection_reset)
        fail(Failure::closed, "connection closed");
      else fail(Failure::io, "read: " + r.ec.message());
      co_return std::nullopt;
    }
    buf_.append(tmp, r.n);
  }
}

// --- The idle connection cache ---------------------------------------------------------------------

namespace {
// An idle connection leaves politely: QUIT without waiting for the 221 (a 6-byte write to an
// idle socket does not block; if it would, it is skipped), then close.
void quit_and_close(Stream& s) {
  boost::system::error_code ec;
  if (s.is_open()) {
    s.socket().non_blocking(true, ec);
    constexpr std::string_view quit = "QUIT\r\n";
    if (auto* t = s.tls_stream()) asio::write(*t, asio::buffer(quit.data(), quit.size()), ec);
    else asio::write(s.socket(), asio::buffer(quit.data(), quit.size()), ec);
  }
  s.close();
}
}  // namespace

UpstreamCache& UpstreamCache::local() {
  thread_local UpstreamCache cache;
  return cache;
}

void UpstreamCache::put(const void* runtime, std::size_t listener, std::shared_ptr<const void> keep_alive,
                        IdleUpstream idle, Clock::duration max_idle, std::size_t capacity) {
  sweep();
  if (capacity == 0 || max_idle <= Clock::duration::zero() || !idle.sock) {
    if (idle.sock) quit_and_close(*idle.sock);
    return;
  }
  while (entries_.size() >= capacity) {
    quit_and_close(*entries_.front().idle.sock);
    entries_.pop_front();
  }
  const auto ex = idle.sock->get_executor();
  entries_.push_back(Entry{runtime, listener, std::move(keep_alive), std::move(idle), Clock::now() + max_idle});
  schedule(ex);
}

std::optional<IdleUpstream> UpstreamCache::take(const void* runtime, std::size_t listener) {
  sweep();
  // Newest first: the most recently used connection is the least likely to have been closed.
  for (auto it = entries_.rbegin(); it != entries_.rend(); ++it) {
    if (it->runtime != runtime || it->listener != listener) continue;
    IdleUpstream idle = std::move(it->idle);
    entries_.erase(std::next(it).base());
    return idle;
  }
  return std::nullopt;
}


void UpstreamCache::sweep() {
  const auto now = Clock::now();
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->expires <= now) {
      quit_and_close(*it->idle.sock);
      it = entries_.erase(it);
    } else {
      ++it;
    }
  }
}

// One timer per thread, pending only while entries wait: it wakes at the earliest expiry.
void UpstreamCache::schedule(asio::any_io_executor ex) {
  if (timer_pending_ || entries_.empty()) return;
  if (!timer_) timer_ = std::make_unique<asio::steady_timer>(ex);
  Clock::time_point first = Clock::time_point::max();
  for (const Entry& e : entries_) first = std::min(first, e.expires);
  timer_->expires_at(first);
  timer_pending_ = true;
  timer_->async_wait([this, ex](const boost::system::error_code& ec) {
    if (ec == asio::error::operation_aborted) return;  // clear(): this thread is finishing
    timer_pending_ = false;
    sweep();
    schedule(ex);
  });
}

void UpstreamCache::clear() {
  for (Entry& e : entries_) quit_and_close(*e.idle.sock);
  entries_.clear();
  if (timer_) timer_->cancel();
  timer_.reset();
  timer_pending_ = false;
}

}  // namespace batv::relay
