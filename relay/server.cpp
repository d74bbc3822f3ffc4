#include "relay/server.hpp"

#include <openssl/rand.h>
#include <sys/socket.h>
#include <grp.h>
#include <pwd.h>
#include <sys/un.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "crypto/no_dump.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/session.hpp"

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

}  // namespace

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
      log(Level::error, "listen_failed").kv("listener", i).kv("address", cfg.listeners[i].listen.to_string()).kv("error", err);
      return 71;  // EX_OSERR
    }
    acceptors_.push_back(std::move(listening));
  }
  metrics().set_domains(cfg.domains.verify);
  metrics().set_keys(rt->keyring.signing_id(), rt->key_created);
  metrics().set_sessions_limit(cfg.limits.sessions);
  if (cfg.metrics.listen) {
    boost::system::error_code ec;
    const auto addr = asio::ip::make_address(cfg.metrics.listen->host, ec);
    if (!ec) {
      metrics_server_ = std::make_unique<MetricsServer>(main, tcp::endpoint(addr, cfg.metrics.listen->port),
                                                        [this] { return !stopping_; });
      ec = metrics_server_->start();
    }
    if (ec) {
      log(Level::error, "listen_failed").kv("listener", "metrics").kv("address", cfg.metrics.listen->to_string()).kv("error", ec.message());
      return 71;
    }
    log(Level::info, "metrics_listening").kv("address", to_string(metrics_server_->local_endpoint()));
  }
  if (const std::string err = drop_privileges(cfg.process); !err.empty()) {
    log(Level::error, "privileges").kv("result", "failed").kv("error", err);
    return 78;  // EX_CONFIG
  }
  if (!cfg.process.user.empty())
    log(Level::info, "privileges").kv("result", "ok").kv("uid", static_cast<std::int64_t>(::getuid()))
        .kv("gid", static_cast<std::int64_t>(::getgid()));
  for (auto& a : acceptors_) asio::co_spawn(main, accept_loop(a), asio::detached);
  // Handlers are installed here, before "ready": a SIGTERM right after readiness is ours to handle.
  signals_ = std::make_unique<asio::signal_set>(main, SIGTERM, SIGINT, SIGHUP);
  asio::co_spawn(main, signal_loop(), asio::detached);
  asio::co_spawn(main, watch_key_file(), asio::detached);
  notify_systemd("READY=1");
  log(Level::info, "ready").kv("threads", threads).kv("keys", rt->key_count).kv("signing_key", rt->keyring.signing_id());

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
  log(Level::info, "shutdown_complete");
  return 0;
}

std::shared_ptr<Server::Listening> Server::bind_listener(const conf::Listener& l, std::size_t index,
                                                        std::string& error) {
  boost::system::error_code ec;
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
  log(Level::info, "listening")
      .kv("listener", index)
      .kv("role", conf::to_string(l.role))
      .kv("address", to_string(acc->local_endpoint()))
      .kv("upstream", l.upstream.to_string());
  auto out = std::make_shared<Listening>();
  out->acc = std::move(acc);
  out->address = l.listen.to_string();
  out->index = index;
  return out;
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
      t.expires_after(std::chrono::milliseconds(100));
      co_await t.async_wait(asio::use_awaitable);
      continue;
    }
    start_session(std::move(sock), listening->index);
  }
}

void Server::start_session(tcp::socket sock, std::size_t listener) {
  SessionContext ctx;
  ctx.runtime = runtime_.get();
  ctx.listener = listener;
  boost::system::error_code ec;
  const auto remote = sock.remote_endpoint(ec);
  if (ec) return;  // already gone
  ctx.client = to_string(remote);
  auto addr = remote.address();
  if (addr.is_v6() && addr.to_v6().is_v4_mapped()) addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
  ctx.client_ip = addr.to_string();
  const conf::Listener& l = ctx.runtime->config.listeners[listener];
  const conf::Limits& limits = ctx.runtime->config.limits;

  const std::uint64_t id = next_id_++;
  char sid[32];
  std::snprintf(sid, sizeof sid, "%08x%06llx", id_prefix_, static_cast<unsigned long long>(id & 0xffffff));
  ctx.id = sid;

  bool allowed = false;
  for (const auto& net : l.allow_clients)
    if (net.contains(std::string_view(ctx.client_ip))) allowed = true;
  bool counted = false;
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
      counted = true;
    }
  }
  const std::string ip = ctx.client_ip;
  auto session = std::make_shared<Session>(std::move(sock), std::move(ctx));
  if (counted) {
    std::lock_guard lock(registry_.mu);
    registry_.live[id] = session;
  }
  auto ex = session->executor();
  asio::co_spawn(ex, [this, session, id, ip, counted]() -> awaitable<void> {
    co_await session->run();
    if (counted) release(id, ip);
  }, asio::detached);
}

void Server::release(std::uint64_t id, const std::string& ip) {
  std::lock_guard lock(registry_.mu);
  --registry_.total;
  if (--registry_.per_ip[ip] <= 0) registry_.per_ip.erase(ip);
  registry_.live.erase(id);
}

// Polls the key file (bounded work: one stat(2) per period) and reloads when it changed, so a
// `batv-keys rotate` on a shared key file reaches every relay without a signal. A file that is
// missing or half-written makes the reload fail and the old keys stay; the next change retries.
awaitable<void> Server::watch_key_file() {
  constexpr auto period = std::chrono::seconds(2);
  asio::steady_timer timer(*contexts_[0]);
  // The baseline is the file the running keys were read from, not the file as it is when this
  // first runs (after "ready"): a rotation during start-up is a change too.
  FileStamp last = runtime_.get()->key_stamp;
  while (!stopping_) {
    timer.expires_after(period);
    auto [ec] = co_await timer.async_wait(asio::as_tuple(asio::use_awaitable));
    if (ec || stopping_) co_return;
    const FileStamp now = stamp_of(runtime_.get()->config.key_file);
    if (now == last || !now.exists) continue;
    last = now;
    log(Level::info, "key_file_changed").kv("file", runtime_.get()->config.key_file);
    reload();
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
    const std::string address = cfg.listeners[i].listen.to_string();
    for (std::size_t j = 0; j < acceptors_.size() && !bound[i]; ++j) {
      if (!kept[j] && acceptors_[j]->address == address) {
        kept[j] = true;
        bound[i] = acceptors_[j];
      }
    }
    if (bound[i]) continue;
    std::string err;
    bound[i] = bind_listener(cfg.listeners[i], i, err);
    if (!bound[i]) {
      for (auto& f : fresh) f->acc->close();
      fail("listener[" + std::to_string(i) + "].listen " + address + ": " + err);
      return;
    }
    fresh.push_back(bound[i]);
  }
  // Commit: the swap, then sockets that are no longer configured close (their loops end).
  runtime_.set(next);
  for (std::size_t j = 0; j < acceptors_.size(); ++j) {
    if (kept[j]) continue;
    boost::system::error_code ignored;
    acceptors_[j]->acc->close(ignored);
    log(Level::info, "listener_closed").kv("address", acceptors_[j]->address);
  }
  for (std::size_t i = 0; i < bound.size(); ++i) bound[i]->index = i;
  acceptors_ = std::move(bound);
  for (auto& f : fresh) asio::co_spawn(*contexts_[0], accept_loop(f), asio::detached);
  configure_logging(cfg.logging);
  // What only a restart changes.
  if (cfg.threads != current->config.threads) log(Level::warning, "reload_restart_needed").kv("key", "threads");
  if (cfg.process.user != current->config.process.user || cfg.process.group != current->config.process.group)
    log(Level::warning, "reload_restart_needed").kv("key", "process");
  if (cfg.metrics.listen.has_value() != current->config.metrics.listen.has_value() ||
      (cfg.metrics.listen && cfg.metrics.listen->to_string() != current->config.metrics.listen->to_string()))
    log(Level::warning, "reload_restart_needed").kv("key", "metrics.listen");
  metrics().set_domains(cfg.domains.verify);
  metrics().set_keys(next->keyring.signing_id(), next->key_created);
  metrics().set_sessions_limit(cfg.limits.sessions);
  metrics().reload(true);
  log(Level::info, "reload")
      .kv("result", "ok")
      .kv("keys", next->key_count)
      .kv("signing_key", next->keyring.signing_id())
      .kv("listeners", static_cast<std::int64_t>(acceptors_.size()));
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
  notify_systemd("STOPPING=1");
  for (auto& a : acceptors_) {
    boost::system::error_code ignored;
    a->acc->close(ignored);
  }
  const auto rt = runtime_.get();
  asio::steady_timer timer(*contexts_[0]);
  auto live_count = [this] {
    std::lock_guard lock(registry_.mu);
    return registry_.total;
  };
  // Let sessions finish within the grace period, polling (bounded) for the last one to end.
  const auto grace_end = Clock::now() + rt->config.timeouts.shutdown_grace;
  while (live_count() > 0 && Clock::now() < grace_end) {
    timer.expires_after(std::chrono::milliseconds(50));
    co_await timer.async_wait(asio::use_awaitable);
  }
  if (live_count() > 0) {
    std::vector<std::shared_ptr<Session>> left;
    {
      std::lock_guard lock(registry_.mu);
      for (auto& [id, weak] : registry_.live)
        if (auto s = weak.lock()) left.push_back(std::move(s));
    }
    log(Level::info, "shutdown_closing").kv("sessions", static_cast<std::int64_t>(left.size()));
    for (auto& s : left) s->stop();
    // Each stopped session writes its 421 with the idle timeout as bound; give them that long.
    const auto hard_end = Clock::now() + std::chrono::seconds(10);
    while (live_count() > 0 && Clock::now() < hard_end) {
      timer.expires_after(std::chrono::milliseconds(50));
      co_await timer.async_wait(asio::use_awaitable);
    }
  }
  if (metrics_server_) metrics_server_->stop();
  for (auto& c : contexts_) c->stop();
}

}  // namespace batv::relay
