#include "relay/server.hpp"

#include <openssl/rand.h>
#include <sys/socket.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sysexits.h>
#include <unistd.h>

#include <boost/asio/experimental/awaitable_operators.hpp>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <optional>

#include "crypto/no_dump.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/proxy_header.hpp"
#include "relay/replies.hpp"
#include "relay/nexthop_caps.hpp"
#include "relay/session.hpp"
#include "relay/spawn.hpp"

namespace batv::relay {

namespace {

// systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram to
// $NOTIFY_SOCKET ("@name" is the abstract namespace). A no-op outside systemd.
void notify_systemd(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::size_t len = std::strlen(path);
  if (len >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, path, len);
  if (addr.sun_path[0] == '@') addr.sun_path[0] = '\0';
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  ::sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr),
           static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len));
  ::close(fd);
}

// Drops root after the privileged start-up work (binding port 25, reading keys and
// certificates). Returns an error text, or "" on success.
std::string drop_privileges(const conf::Process& p) {
  if (p.user.empty()) {
    if (::geteuid() == 0 && !p.run_as_root)
      return "refusing to run as root: set [process] user (or run_as_root = true to insist)";
    return "";
  }
  errno = 0;
  const passwd* pw = ::getpwnam(p.user.c_str());
  if (pw == nullptr) return "[process] user: no such user '" + p.user + "'";
  const uid_t uid = pw->pw_uid;
  gid_t gid = pw->pw_gid;
  if (!p.group.empty()) {
    const group* gr = ::getgrnam(p.group.c_str());
    if (gr == nullptr) return "[process] group: no such group '" + p.group + "'";
    gid = gr->gr_gid;
  }
  if (::geteuid() != 0) {
    if (::geteuid() == uid) return "";  // already that user (started by systemd as it)
    return "[process] user = '" + p.user + "' needs start-up as root";
  }
  if (::setgroups(1, &gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0)
    return std::string("cannot switch to user '") + p.user + "': " + std::strerror(errno);
  if (::setuid(0) == 0) return "privileges could be regained after the switch: refusing to run";
  // The uid change reset the dumpable flag to fs.suid_dumpable (which may be 1): clear it again.
  return crypto::forbid_core_dumps();
}

// Makes room for a unix listener at `path`: a stale socket file (nothing accepts on it: a
// relay that died) is removed; a live one, or any other kind of file, is an error.
std::string clear_socket_path(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? "" : std::string("cannot stat: ") + std::strerror(errno);
  if (!S_ISSOCK(st.st_mode)) return "exists and is not a socket (refusing to replace it)";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return std::string("socket: ") + std::strerror(errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  const int err = errno;
  ::close(fd);
  if (rc == 0) return "in use: another process accepts on this socket";
  if (err != ECONNREFUSED && err != ENOENT) return std::string("cannot probe: ") + std::strerror(err);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return std::string("cannot remove stale socket: ") + std::strerror(errno);
  return "";
}

// socket_mode, socket_owner and socket_group of a unix listener, applied between bind and
// listen (no client can connect before listen, so there is no window with the umask's mode).
std::string apply_socket_attributes(const conf::Listener& l) {
  if (::chmod(l.unix_path.c_str(), static_cast<mode_t>(l.socket_mode)) != 0)
    return std::string("chmod: ") + std::strerror(errno);
  if (l.socket_owner.empty() && l.socket_group.empty()) return "";
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  if (!l.socket_owner.empty()) {
    const passwd* pw = ::getpwnam(l.socket_owner.c_str());
    if (pw == nullptr) return "socket_owner: no such user '" + l.socket_owner + "'";
    uid = pw->pw_uid;
  }
  if (!l.socket_group.empty()) {
    const group* gr = ::getgrnam(l.socket_group.c_str());
    if (gr == nullptr) return "socket_group: no such group '" + l.socket_group + "'";
    gid = gr->gr_gid;
  }
  if (::chown(l.unix_path.c_str(), uid, gid) != 0) return std::string("chown: ") + std::strerror(errno);
  return "";
}

// "ip:port" of a generic endpoint that holds an IP address; "unix:/path" for a local one.
std::string peer_of(const asio::generic::stream_protocol::endpoint& ep, const std::string& unix_path) {
  const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
  if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
    tcp::endpoint t;
    std::memcpy(t.data(), ep.data(), std::min<std::size_t>(ep.size(), t.capacity()));
    return to_string(t);
  }
  return "unix:" + unix_path;
}

// The IP of an endpoint as text, a v4-mapped IPv6 address shown as IPv4.
std::string unmapped_ip(const tcp::endpoint& ep) {
  auto addr = ep.address();
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  return addr.to_string();
}

// The IP of a TCP peer (v4-mapped v6 shown as v4), "" for a unix peer.
std::string ip_of(const asio::generic::stream_protocol::endpoint& ep) {
  const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) return "";
  tcp::endpoint t;
  std::memcpy(t.data(), ep.data(), std::min<std::size_t>(ep.size(), t.capacity()));
  auto addr = t.address();
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  return addr.to_string();
}

}  // namespace

bool Server::Listening::is_open() const { return acc ? acc->is_open() : local && local->is_open(); }

void Server::Listening::close() {
  boost::system::error_code ignored;
  if (acc) acc->close(ignored);
  if (local && local->is_open()) {
    local->close(ignored);
    if (!unix_path.empty()) ::unlink(unix_path.c_str());
  }
}

Server::Server(RuntimeHolder& runtime, std::string config_path)
    : runtime_(runtime), config_path_(std::move(config_path)) {
  // A random prefix keeps session ids unique across restarts and relays sharing one log.
  if (RAND_bytes(reinterpret_cast<unsigned char*>(&id_prefix_), sizeof id_prefix_) != 1) id_prefix_ = 0;
}

Server::~Server() = default;

int Server::run() {
  const auto rt = runtime_.get();
  const conf::Config& cfg = rt->config;
  std::size_t threads = cfg.threads > 0 ? static_cast<std::size_t>(cfg.threads) : std::thread::hardware_concurrency();
  if (threads == 0) threads = 1;
  for (std::size_t i = 0; i < threads; ++i) contexts_.push_back(std::make_unique<asio::io_context>(1));
  asio::io_context& main = *contexts_[0];

  for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
    std::string err;
    auto listening = bind_listener(cfg.listeners[i], i, err);
    if (!listening) {
      log(Level::error, "listen_failed").kv("listener", i).kv("address", cfg.listeners[i].listen_text()).kv("error", err);
      for (auto& a : acceptors_) a->close();
      return EX_OSERR;
    }
    acceptors_.push_back(std::move(listening));
  }
  metrics().set_domains(cfg.domains.verify);
  {
    std::vector<conf::Role> roles;
    for (const auto& l : cfg.listeners) roles.push_back(l.role);
    metrics().set_roles(roles);
  }
  key_switch_timer_ = std::make_unique<asio::system_timer>(main);
  arm_key_switch();  // sets the key metrics too
  metrics().set_sessions_limit(cfg.limits.sessions);
  if (cfg.metrics.listen) {
    boost::system::error_code ec;
    const auto addr = asio::ip::make_address(cfg.metrics.listen->host, ec);
    if (!ec) {
      MetricsServer::Options options;
      options.now = [this] { return runtime_.get()->clock.now(); };  // the key ages' clock
      metrics_server_ = std::make_unique<MetricsServer>(main, tcp::endpoint(addr, cfg.metrics.listen->port),
                                                        [this] { return !stopping_; }, options);
      ec = metrics_server_->start();
    }
    if (ec) {
      log(Level::error, "listen_failed").kv("listener", "metrics").kv("address", cfg.metrics.listen->to_string()).kv("error", ec.message());
      return EX_OSERR;
    }
    log(Level::info, "metrics_listening").kv("address", to_string(metrics_server_->local_endpoint()));
  }
  if (const std::string err = drop_privileges(cfg.process); !err.empty()) {
    log(Level::error, "privileges").kv("result", "failed").kv("error", err);
    return EX_CONFIG;
  }
  if (!cfg.process.user.empty())
    log(Level::info, "privileges").kv("result", "ok").kv("uid", static_cast<std::int64_t>(::getuid()))
        .kv("gid", static_cast<std::int64_t>(::getgid()));
  for (auto& a : acceptors_) spawn_accept(a);
  // Listeners that connect at MAIL learn their next hop's EHLO in the background.
  probe_next_hops(main.get_executor(), rt);
  // Handlers are installed here, before "ready": a SIGTERM right after readiness is ours to handle.
  signals_ = std::make_unique<asio::signal_set>(main, SIGTERM, SIGINT, SIGHUP);
  asio::co_spawn(main, signal_loop(), log_exceptions("signal_loop"));
  asio::co_spawn(main, watch_key_file(), log_exceptions("watch_key_file"));
  notify_systemd("READY=1");
  log(Level::info, "ready").kv("threads", threads).kv("keys", rt->keys.default_ring().key_count)
      .kv("signing_key", announced_signers_.front()).kv("rings", rt->keys.rings().size());

  std::vector<std::thread> pool;
  std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
  for (auto& c : contexts_) guards.emplace_back(c->get_executor());
  // Each thread closes its idle next-hop connections itself, while its io_context still exists.
  for (std::size_t i = 1; i < contexts_.size(); ++i)
    pool.emplace_back([&c = *contexts_[i]] {
      c.run();
      UpstreamCache::local().clear();
    });
  main.run();
  UpstreamCache::local().clear();
  guards.clear();
  for (auto& c : contexts_) c->stop();
  for (auto& t : pool) t.join();
  // The signal_set goes away with the server, and with it our handlers: asio restores SIG_DFL,
  // and a second SIGTERM from an impatient sender would kill the process mid-exit (status -15,
  // not 0). Blocked in the one thread left (asio's own threads block every signal), it stays
  // pending and dies with the process.
  sigset_t late;
  sigemptyset(&late);
  sigaddset(&late, SIGTERM);
  sigaddset(&late, SIGINT);
  sigaddset(&late, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &late, nullptr);
  log(Level::info, "shutdown_complete");
  return 0;
}

std::shared_ptr<Server::Listening> Server::bind_listener(const conf::Listener& l, std::size_t index,
                                                        std::string& error) {
  auto out = std::make_shared<Listening>();
  out->address = l.listen_text();
  out->index = index;
  boost::system::error_code ec;
  std::string bound;
  if (conf::is_proxy(l.role)) {
    const auto addr = asio::ip::make_address(l.listen.host, ec);
    auto acc = std::make_unique<tcp::acceptor>(*contexts_[0]);
    const tcp::endpoint ep(addr, l.listen.port);
    if (!ec) acc->open(ep.protocol(), ec);
    if (!ec) acc->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec && addr.is_v6()) acc->set_option(asio::ip::v6_only(true), ec);
    if (!ec) acc->bind(ep, ec);
    if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      error = ec.message();
      return nullptr;
    }
    bound = to_string(acc->local_endpoint());
    out->acc = std::move(acc);
  } else {
    using generic = asio::generic::stream_protocol;
    auto acc = std::make_unique<LocalAcceptor>(*contexts_[0]);
    if (l.unix_path.empty()) {
      const auto addr = asio::ip::make_address(l.listen.host, ec);
      const tcp::endpoint ep(addr, l.listen.port);
      const generic::endpoint gep(ep);
      if (!ec) acc->open(gep.protocol(), ec);
      if (!ec) acc->set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec && addr.is_v6()) {
        const int one = 1;  // v6_only is an ip::v6 option: set it by hand on the generic socket
        if (::setsockopt(acc->native_handle(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0)
          ec.assign(errno, boost::system::system_category());
      }
      if (!ec) acc->bind(gep, ec);
      if (!ec) acc->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        error = ec.message();
        return nullptr;
      }
      tcp::endpoint local;
      const generic::endpoint g = acc->local_endpoint(ec);
      std::memcpy(local.data(), g.data(), std::min<std::size_t>(g.size(), local.capacity()));
      bound = to_string(local);
    } else {
      if (std::string why = clear_socket_path(l.unix_path); !why.empty()) {
        error = l.unix_path + ": " + why;
        return nullptr;
      }
      const generic::endpoint gep(asio::local::stream_protocol::endpoint(l.unix_path));
      acc->open(gep.protocol(), ec);
      if (!ec) acc->bind(gep, ec);
      if (ec) {
        error = l.unix_path + ": " + ec.message();
        return nullptr;
      }
      out->unix_path = l.unix_path;
      if (std::string why = apply_socket_attributes(l); !why.empty()) {
        acc->close(ec);
        ::unlink(l.unix_path.c_str());
        error = l.unix_path + ": " + why;
        return nullptr;
      }
      acc->listen(asio::socket_base::max_listen_connections, ec);
      if (ec) {
        acc->close(ec);
        ::unlink(l.unix_path.c_str());
        error = l.unix_path + ": " + ec.message();
        return nullptr;
      }
      bound = "unix:" + l.unix_path;
    }
    out->local = std::move(acc);
  }
  auto line = log(Level::info, "listening");
  line.kv("listener", index).kv("role", conf::to_string(l.role)).kv("address", bound);
  if (conf::is_proxy(l.role)) line.kv("upstream", l.upstream.to_string());
  return out;
}

void Server::spawn_accept(const std::shared_ptr<Listening>& l) {
  if (l->acc) asio::co_spawn(*contexts_[0], accept_loop(l), log_exceptions("accept_loop"));
  else asio::co_spawn(*contexts_[0], accept_local_loop(l), log_exceptions("accept_local_loop"));
}

awaitable<void> Server::accept_loop(std::shared_ptr<Listening> listening) {
  tcp::acceptor& acc = *listening->acc;
  for (;;) {
    asio::io_context& target = *contexts_[next_context_++ % contexts_.size()];
    auto [ec, sock] = co_await acc.async_accept(target, asio::as_tuple(asio::use_awaitable));
    if (stopping_ || ec == asio::error::operation_aborted || !acc.is_open()) co_return;
    if (ec) {
      // EMFILE and friends: log, pause briefly so a descriptor shortage does not spin the loop.
      log(Level::warning, "accept_failed").kv("listener", listening->index).kv("error", ec.message());
      asio::steady_timer t(acc.get_executor());
      t.expires_after(conf::fixed::accept_error_pause);
      co_await t.async_wait(asio::use_awaitable);
      continue;
    }
    boost::system::error_code remote_ec, local_ec;
    const tcp::endpoint remote = sock.remote_endpoint(remote_ec);
    const tcp::endpoint local = sock.local_endpoint(local_ec);
    if (remote_ec || local_ec) continue;  // already gone (a health check's reset, say)
    auto rt = runtime_.get();
    const std::size_t index = listening->index;
    // A load balancer in accept_proxy_from speaks first: its PROXY header names the client. Anyone
    // else is the client itself, and is never parsed for a header.
    bool proxied = false;
    for (const auto& net : rt->config.listeners[index].accept_proxy_from)
      if (net.contains(std::string_view(unmapped_ip(remote)))) proxied = true;
    if (proxied) {
      auto ex = sock.get_executor();
      asio::co_spawn(ex, read_proxy_header(std::move(sock), std::move(rt), index, remote),
                     log_exceptions("read_proxy_header"));
    } else {
      start_session(std::move(sock), std::move(rt), index, remote, local, "");
    }
  }
}

awaitable<void> Server::read_proxy_header(tcp::socket sock, std::shared_ptr<const Runtime> rt, std::size_t listener,
                                          tcp::endpoint peer) {
  using namespace asio::experimental::awaitable_operators;
  const conf::Config& cfg = rt->config;
  const std::string lb = to_string(peer);
  auto close = [&sock] {
    boost::system::error_code ignored;
    sock.shutdown(tcp::socket::shutdown_both, ignored);
    sock.close(ignored);
  };
  auto fail = [&](ProxyHeaderError reason) {
    // No greeting: the peer is a load balancer speaking the wrong protocol (or none), and a
    // load balancer passes nothing we write on to anyone.
    metrics().proxy_header_error(reason);
    log(Level::warning, "proxy_header_failed").kv("listener", listener).kv("peer", lb).kv("reason", to_string(reason));
    close();
  };
  asio::steady_timer timer(sock.get_executor());
  timer.expires_after(cfg.timeouts.proxy_header);
  const auto max = static_cast<std::size_t>(cfg.limits.proxy_header_size);
  std::string buf;
  ProxyParse p = parse_proxy_header(buf, max);
  while (p.status == ProxyParse::Status::need_more) {
    // Exactly the bytes that are certainly header: what follows (the client's SMTP) stays in the
    // socket for the session.
    const std::size_t have = buf.size();
    buf.resize(have + p.need);
    auto r = co_await (asio::async_read(sock, asio::buffer(buf.data() + have, p.need), asio::as_tuple(asio::use_awaitable)) ||
                       timer.async_wait(asio::as_tuple(asio::use_awaitable)));
    if (r.index() == 1) co_return fail(ProxyHeaderError::timeout);
    const auto [ec, n] = std::get<0>(r);
    const bool closed = ec == asio::error::eof || ec == asio::error::connection_reset;
    if (closed && have == 0 && n == 0) {
      // Connected and gone without a byte: a plain TCP health check (a load balancer's check
      // without PROXY, a port probe), not a protocol error worth a warning every few seconds.
      metrics().proxy_health_check();
      log(Level::debug, "proxy_health_check").kv("listener", listener).kv("peer", lb).kv("command", "none");
      close();
      co_return;
    }
    if (ec) co_return fail(closed ? ProxyHeaderError::closed : ProxyHeaderError::io_error);
    p = parse_proxy_header(buf, max);
  }
  if (p.status == ProxyParse::Status::error) co_return fail(from_parse(p.error));
  const ProxyHeader& h = p.header;
  if (h.command != ProxyHeader::Command::proxy) {
    // A health check: it names no client, and opens no session (nothing counted, no next hop).
    metrics().proxy_health_check();
    log(Level::debug, "proxy_health_check").kv("listener", listener).kv("peer", lb)
        .kv("version", h.version).kv("command", to_string(h.command));
    const std::string reply = replies::proxy_health_check(rt->hostname);
    timer.expires_after(cfg.timeouts.idle);
    co_await (asio::async_write(sock, asio::buffer(reply), asio::as_tuple(asio::use_awaitable)) ||
              timer.async_wait(asio::as_tuple(asio::use_awaitable)));
    close();
    co_return;
  }
  start_session(std::move(sock), std::move(rt), listener, tcp::endpoint(h.src, h.src_port),
                tcp::endpoint(h.dst, h.dst_port), lb);
}

awaitable<void> Server::accept_local_loop(std::shared_ptr<Listening> listening) {
  auto& acc = *listening->local;
  for (;;) {
    asio::io_context& target = *contexts_[next_context_++ % contexts_.size()];
    auto [ec, sock] = co_await acc.async_accept(target, asio::as_tuple(asio::use_awaitable));
    if (stopping_ || ec == asio::error::operation_aborted || !acc.is_open()) co_return;
    if (ec) {
      log(Level::warning, "accept_failed").kv("listener", listening->index).kv("error", ec.message());
      asio::steady_timer t(acc.get_executor());
      t.expires_after(conf::fixed::accept_error_pause);
      co_await t.async_wait(asio::use_awaitable);
      continue;
    }
    start_local(std::move(sock), listening->index);
  }
}

std::string Server::next_session_id(std::uint64_t& id) {
  id = next_id_++;
  char sid[32];
  std::snprintf(sid, sizeof sid, "%08x%06llx", id_prefix_, static_cast<unsigned long long>(id & 0xffffff));
  return sid;
}

Server::Admitted& Server::Admitted::operator=(Admitted&& o) noexcept {
  if (this != &o) {
    give_back();
    server_ = std::exchange(o.server_, nullptr);
    id_ = o.id_;
    ip_ = std::move(o.ip_);
    member_ = std::move(o.member_);
  }
  return *this;
}

void Server::Admitted::give_back() noexcept {
  if (server_ == nullptr) return;
  std::exchange(server_, nullptr)->release(id_, ip_);
  member_.reset();  // after the release: the last member wakes a waiting shutdown
}

bool Server::admit(std::uint64_t id, const std::string& ip, bool per_client, const std::shared_ptr<Connection>& c,
                   Admitted& slot) {
  const conf::Limits& limits = runtime_.get()->config.limits;
  std::lock_guard lock(registry_.mu);
  if (registry_.total >= limits.sessions) return false;
  if (per_client && registry_.per_ip[ip] >= limits.sessions_per_client) return false;
  ++registry_.total;
  ++registry_.per_ip[ip];
  registry_.live[id] = c;
  // Under the registry's lock: counted and a member at once. `slot` held nothing, so this
  // assignment gives nothing back (which would take the lock again).
  slot = Admitted(*this, id, ip, connections_.join());
  return true;
}

awaitable<void> Server::serve(std::shared_ptr<Connection> conn, Admitted slot) {
  // A local, not the parameter: it is destroyed when the body ends, returning or throwing (the
  // exception then goes on to log_exceptions), not whenever the coroutine frame goes.
  const Admitted held = std::move(slot);
  co_await conn->run();
}

// A connection of a no-hop role: peers outside allow_peers (TCP) and connections over
// limits.sessions are closed at once with a log line (these protocols have no refusal message
// the MTA would show; it applies its own default action, as for a daemon that is down).
void Server::start_local(LocalSocket sock, std::size_t listener) {
  ConnContext ctx;
  ctx.runtime = runtime_.get();
  ctx.current = [holder = &runtime_] { return holder->get(); };
  ctx.listener = listener;
  const conf::Listener& l = ctx.runtime->config.listeners[listener];
  boost::system::error_code ec;
  const auto remote = sock.remote_endpoint(ec);
  if (ec) return;  // already gone
  ctx.peer = peer_of(remote, l.unix_path);
  const std::string ip = ip_of(remote);
  std::uint64_t id = 0;
  ctx.id = next_session_id(id);
  auto refuse = [&](std::string_view reason) {
    log(Level::warning, "session_refused").kv("sid", ctx.id).kv("role", conf::to_string(l.role))
        .kv("peer", ctx.peer).kv("reason", reason);
    boost::system::error_code ignored;
    sock.close(ignored);
  };
  if (!ip.empty()) {
    bool allowed = false;
    for (const auto& net : l.allow_peers)
      if (net.contains(std::string_view(ip))) allowed = true;
    if (!allowed) return refuse("access_denied");
  }
  const ConnectionFactory make = connection_factory(l.role);
  if (make == nullptr) return refuse("role_unavailable");
  const std::string role(conf::to_string(l.role));
  auto conn = make(std::move(sock), std::move(ctx));
  Admitted slot;
  if (!admit(id, ip, /*per_client=*/false, conn, slot)) {
    log(Level::warning, "session_refused").kv("role", role).kv("reason", "too_many_sessions");
    return;  // conn (and its socket) go away here, before run(): nothing was counted
  }
  auto ex = conn->executor();
  asio::co_spawn(ex, serve(std::move(conn), std::move(slot)), log_exceptions("connection"));
}

void Server::start_session(tcp::socket sock, std::shared_ptr<const Runtime> rt, std::size_t listener,
                           const tcp::endpoint& remote, const tcp::endpoint& local, std::string via) {
  SessionContext ctx;
  ctx.runtime = std::move(rt);
  ctx.listener = listener;
  ctx.client = to_string(remote);
  ctx.client_ip = unmapped_ip(remote);
  ctx.remote = remote;
  ctx.local = local;
  ctx.via = std::move(via);
  const conf::Listener& l = ctx.runtime->config.listeners[listener];
  const conf::Limits& limits = ctx.runtime->config.limits;

  std::uint64_t id = 0;
  ctx.id = next_session_id(id);

  bool allowed = false;
  for (const auto& net : l.allow_clients)
    if (net.contains(std::string_view(ctx.client_ip))) allowed = true;
  Admitted slot;  // holds the admission from here on: a throw below (make_shared) gives it back
  // Outside the allowed networks: refused, unless the listener lets authenticated clients relay
  // (they are admitted, and MAIL needs AUTH first).
  if (!allowed && l.allow_authenticated) ctx.needs_auth = true;
  if (!allowed && !l.allow_authenticated) {
    ctx.admission = SessionContext::Admission::denied;
  } else {
    std::lock_guard lock(registry_.mu);
    if (registry_.total >= limits.sessions) {
      ctx.admission = SessionContext::Admission::too_many;
    } else if (registry_.per_ip[ctx.client_ip] >= limits.sessions_per_client) {
      ctx.admission = SessionContext::Admission::too_many_from_client;
    } else {
      ++registry_.total;
      ++registry_.per_ip[ctx.client_ip];
      slot = Admitted(*this, id, ctx.client_ip, connections_.join());  // held nothing: no release under the lock
    }
  }
  auto session = std::make_shared<Session>(std::move(sock), std::move(ctx));
  if (slot) {
    std::lock_guard lock(registry_.mu);
    registry_.live[id] = session;
  }
  auto ex = session->executor();
  if (slot) {
    asio::co_spawn(ex, serve(std::move(session), std::move(slot)), log_exceptions("session"));
    return;
  }
  // Refused (access, limits): it writes its refusal and ends; shutdown does not wait for it.
  asio::co_spawn(ex, [session]() -> awaitable<void> { co_await session->run(); }, log_exceptions("session"));
}

void Server::release(std::uint64_t id, const std::string& ip) {
  std::lock_guard lock(registry_.mu);
  --registry_.total;
  if (--registry_.per_ip[ip] <= 0) registry_.per_ip.erase(ip);
  registry_.live.erase(id);
}

// Polls every key file of the running runtime (the default one and each [[domain_keys]] file;
// bounded work: one stat(2) per file per period) and reloads when one changed, so a `batv-keys
// rotate` of any ring reaches every relay without a signal. A file that is missing or
// half-written makes the reload fail and the old keys stay; the next change retries.
awaitable<void> Server::watch_key_file() {
  constexpr auto period = conf::fixed::key_file_poll_interval;
  asio::steady_timer timer(*contexts_[0]);
  // Per file, the stamp last acted on. A file without an entry is compared with the stamp the
  // running keys were read from, not the file as it is when this first runs (after "ready"): a
  // rotation during start-up is a change too, and so is one between a reload and the next tick.
  std::map<std::string, FileStamp> last;
  while (!stopping_) {
    timer.expires_after(period);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec || stopping_) co_return;
    const auto rt = runtime_.get();
    const auto& rings = rt->keys.rings();
    std::map<std::string, FileStamp> seen;
    bool changed = false;  // one reload for however many files changed
    for (std::size_t i = 0; i < rings.size(); ++i) {
      const std::string& path = rings[i].key_file;
      const auto it = last.find(path);
      const FileStamp base = it != last.end()                ? it->second
                             : i < rt->key_stamps.size() ? rt->key_stamps[i]
                                                         : FileStamp{};
      const FileStamp now = stamp_of(path);
      seen[path] = now.exists ? now : base;
      if (now == base || !now.exists) continue;
      log(Level::info, "key_file_changed").kv("file", path).kv("ring", rings[i].name);
      changed = true;
    }
    last = std::move(seen);  // files no longer configured are forgotten
    if (changed) reload();
  }
}

// A complete new runtime (config, key file, keyring, TLS contexts) built off to the side; on any
// error the old one stays and the log says why. Listeners whose address is unchanged keep their
// socket; new addresses are bound before anything is committed, so a failed bind (say, port 25
// after dropping root) fails the whole reload. Sessions keep the runtime they started with.
void Server::reload() {
  notify_systemd("RELOADING=1");
  struct Ready {
    ~Ready() { notify_systemd("READY=1"); }
  } ready;
  const auto current = runtime_.get();
  std::vector<std::string> errors;
  auto next = load_runtime(config_path_, errors);
  auto fail = [&](const std::string& why) {
    metrics().reload(false);
    log(Level::error, "reload").kv("result", "failed").kv("error", why);
  };
  if (!next) {
    std::string joined;
    for (const auto& e : errors) joined += (joined.empty() ? "" : "; ") + e;
    fail(joined);
    return;
  }
  const conf::Config& cfg = next->config;
  std::vector<std::shared_ptr<Listening>> bound(cfg.listeners.size());
  std::vector<bool> kept(acceptors_.size(), false);
  std::vector<std::shared_ptr<Listening>> fresh;
  for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
    const conf::Listener& nl = cfg.listeners[i];
    const std::string address = nl.listen_text();
    for (std::size_t j = 0; j < acceptors_.size() && !bound[i]; ++j) {
      if (!kept[j] && acceptors_[j]->address == address) {
        // An SMTP role and a no-hop role accept through different sockets: the same address
        // cannot change between them without closing the old socket first, which a reload
        // that might still fail must not do.
        if ((acceptors_[j]->acc != nullptr) != conf::is_proxy(nl.role)) {
          for (auto& f : fresh) f->close();
          fail("listener[" + std::to_string(i) + "].role: " + address +
               " changes between an SMTP role and a no-hop role: restart the relay for that");
          return;
        }
        kept[j] = true;
        bound[i] = acceptors_[j];
        if (!nl.unix_path.empty()) {
          // Mode and ownership follow the new config (we own the file, even after dropping root).
          if (std::string why = apply_socket_attributes(nl); !why.empty())
            log(Level::warning, "socket_attributes").kv("address", address).kv("error", why);
        }
      }
    }
    if (bound[i]) continue;
    std::string err;
    bound[i] = bind_listener(cfg.listeners[i], i, err);
    if (!bound[i]) {
      for (auto& f : fresh) f->close();
      fail("listener[" + std::to_string(i) + "].listen " + address + ": " + err);
      return;
    }
    fresh.push_back(bound[i]);
  }
  // Commit: the swap, then sockets that are no longer configured close (their loops end).
  runtime_.set(next);
  for (std::size_t j = 0; j < acceptors_.size(); ++j) {
    if (kept[j]) continue;
    acceptors_[j]->close();
    log(Level::info, "listener_closed").kv("address", acceptors_[j]->address);
  }
  for (std::size_t i = 0; i < bound.size(); ++i) bound[i]->index = i;
  acceptors_ = std::move(bound);
  for (auto& f : fresh) spawn_accept(f);
  configure_logging(cfg.logging);
  probe_next_hops(contexts_[0]->get_executor(), next);
  // What only a restart changes.
  if (cfg.threads != current->config.threads) log(Level::warning, "reload_restart_needed").kv("key", "threads");
  if (cfg.process.user != current->config.process.user || cfg.process.group != current->config.process.group)
    log(Level::warning, "reload_restart_needed").kv("key", "process");
  if (cfg.metrics.listen.has_value() != current->config.metrics.listen.has_value() ||
      (cfg.metrics.listen && cfg.metrics.listen->to_string() != current->config.metrics.listen->to_string()))
    log(Level::warning, "reload_restart_needed").kv("key", "metrics.listen");
  metrics().set_domains(cfg.domains.verify);
  {
    std::vector<conf::Role> roles;
    for (const auto& l : cfg.listeners) roles.push_back(l.role);
    metrics().set_roles(roles);
  }
  arm_key_switch();
  metrics().set_sessions_limit(cfg.limits.sessions);
  metrics().reload(true);
  log(Level::info, "reload")
      .kv("result", "ok")
      .kv("keys", next->keys.default_ring().key_count)
      .kv("signing_key", announced_signers_.front())
      .kv("rings", next->keys.rings().size())
      .kv("listeners", static_cast<std::int64_t>(acceptors_.size()));
}

void Server::arm_key_switch() {
  const auto rt = runtime_.get();
  // One reading of the clock for the metrics, the announced signers and the timer, so that a
  // reload in the very second of a switch cannot show one key and arm for none.
  const std::int64_t now = rt->clock.now();
  const auto& rings = rt->keys.rings();
  std::vector<Metrics::RingKeys> shown;
  announced_signers_.clear();
  // Each ring switches on its own schedule: the timer waits for the earliest of them, and each
  // firing re-arms for the next.
  std::optional<std::int64_t> earliest;
  for (const Ring& r : rings) {
    const int signer = r.keyring.signing_id(now);
    const auto next = r.keyring.next_switch(now);
    announced_signers_.push_back(signer);
    shown.push_back({r.name, signer, r.key_created, next.value_or(0)});
    if (next && (!earliest || *next < *earliest)) earliest = next;
  }
  metrics().set_rings(std::move(shown));
  const std::uint64_t generation = ++key_switch_generation_;
  key_switch_timer_->cancel();
  if (!earliest || stopping_) return;
  key_switch_timer_->expires_at(std::chrono::system_clock::from_time_t(static_cast<std::time_t>(*earliest)));
  key_switch_timer_->async_wait([this, generation](const boost::system::error_code& ec) {
    if (!ec) on_key_switch(generation);
  });
}

void Server::on_key_switch(std::uint64_t generation) {
  if (generation != key_switch_generation_ || stopping_) return;  // re-armed or stopping meanwhile
  const std::vector<int> before = announced_signers_;
  arm_key_switch();  // the metrics, then the next switch (or, the clock stepped back, this one again)
  // Sessions need nothing: their keyring snapshot signs with the new key from this second on.
  const auto rt = runtime_.get();
  for (std::size_t i = 0; i < announced_signers_.size() && i < before.size(); ++i)
    if (announced_signers_[i] != before[i])
      log(Level::info, "signing_key_switch").kv("ring", rt->keys.rings()[i].name).kv("from", before[i])
          .kv("to", announced_signers_[i]);
}

awaitable<void> Server::signal_loop() {
  for (;;) {
    auto [ec, sig] = co_await signals_->async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec) co_return;
    if (sig == SIGHUP) {
      reload();
      continue;
    }
    log(Level::info, "shutdown_begin").kv("signal", sig == SIGTERM ? "TERM" : "INT");
    co_await shutdown();
    co_return;
  }
}

awaitable<void> Server::shutdown() {
  stopping_ = true;
  if (key_switch_timer_) key_switch_timer_->cancel();
  notify_systemd("STOPPING=1");
  for (auto& a : acceptors_) a->close();
  const auto rt = runtime_.get();
  auto live = [this](bool only_between_requests) {
    std::vector<std::shared_ptr<Connection>> out;
    std::lock_guard lock(registry_.mu);
    for (auto& [id, weak] : registry_.live)
      if (auto s = weak.lock(); s && (!only_between_requests || s->stops_when_shutdown_begins()))
        out.push_back(std::move(s));
    return out;
  };
  // Policy and socketmap connections idle between requests: no grace needed (a request being
  // answered is finished first).
  for (auto& c : live(true)) c->stop();
  // Sessions finish within the grace period: the connection group wakes this when its last
  // member ends.
  if (!co_await connections_.wait_empty(Clock::now() + rt->config.timeouts.shutdown_grace)) {
    const std::vector<std::shared_ptr<Connection>> left = live(false);
    log(Level::info, "shutdown_closing").kv("sessions", static_cast<std::int64_t>(left.size()));
    for (auto& s : left) s->stop();
    // Each stopped session writes its 421 with the idle timeout as bound; one whose message is with
    // the next hop first waits for its verdict (timeouts.upstream_data_reply). Give them that long.
    const auto hard_end = Clock::now() + std::max<Clock::duration>(conf::fixed::shutdown_stop_minimum,
        rt->config.timeouts.upstream_data_reply + std::chrono::seconds(1));
    co_await connections_.wait_empty(hard_end);
  }
  if (metrics_server_) metrics_server_->stop();
  for (auto& c : contexts_) c->stop();
}

}  // namespace batv::relay
