// server: listeners, the accept loop, admission (allowed networks, session limits), the thread
// pool, and signals (SIGTERM/SIGINT: graceful shutdown; SIGHUP: reload the key file).
//
// One io_context per thread (Asio's io_context-per-core model): a session lives entirely on the
// context that accepted its socket, so its coroutine needs no strand. Admission counts live in
// one mutex-guarded registry. Every admitted connection's coroutine is a member of one TaskGroup
// (relay/task_group.hpp), which wakes the shutdown when its last member ends: shutdown waits up to
// timeouts.shutdown_grace for that, then ends the rest with 421 4.3.2 and waits for them (bounded).
// Every wait is bounded.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/asio/system_timer.hpp>

#include "relay/connection.hpp"
#include "relay/http.hpp"
#include "relay/io.hpp"
#include "relay/runtime.hpp"
#include "relay/task_group.hpp"

namespace batv::relay {

class Server {
 public:
  Server(RuntimeHolder& runtime, std::string config_path);
  ~Server();
  // Binds every listener and serves until SIGTERM/SIGINT. Returns the process exit code.
  int run();

 private:
  struct Registry {
    std::mutex mu;
    std::int64_t total = 0;
    std::unordered_map<std::string, std::int64_t> per_ip;
    std::unordered_map<std::uint64_t, std::weak_ptr<Connection>> live;
  };

  // One bound listening socket. `index` is its listener's position in the current runtime's
  // config; a reload may renumber it (all on the main context, between accepts). The SMTP
  // roles accept tcp::socket (the proxy's hot path, no conversion); the no-hop roles accept
  // through a generic acceptor, the same for TCP and unix sockets.
  struct Listening {
    std::unique_ptr<tcp::acceptor> acc;                              // proxy roles
    std::unique_ptr<LocalAcceptor> local;  // no-hop roles
    std::string address;    // Listener::listen_text(): the identity kept across reloads
    std::string unix_path;  // the socket file to remove when closed
    std::size_t index = 0;
    bool is_open() const;
    void close();           // closes the socket and removes a unix socket's file
  };
  std::shared_ptr<Listening> bind_listener(const conf::Listener& l, std::size_t index, std::string& error);
  awaitable<void> accept_loop(std::shared_ptr<Listening> listening);
  awaitable<void> accept_local_loop(std::shared_ptr<Listening> listening);
  void start_local(LocalSocket sock, std::size_t listener);
  void spawn_accept(const std::shared_ptr<Listening>& l);
  // What admission gave one connection: its count in the registry (limits.sessions,
  // limits.sessions_per_client, the live map; taken by the caller under registry_.mu) and its
  // place in the connection group. Destroying it gives both back, the count first and then the
  // place (the group's last member wakes a waiting shutdown). Whatever ends the connection, run()
  // returning or throwing, or a failure between admission and the start of its coroutine, the
  // count cannot leak: a leaked one would refuse clients (421, or a closed connection) until a
  // restart. Move-only; a default-constructed one holds nothing.
  class Admitted {
   public:
    Admitted() = default;
    Admitted(Server& server, std::uint64_t id, std::string ip, TaskGroup::Member member)
        : server_(&server), id_(id), ip_(std::move(ip)), member_(std::move(member)) {}
    Admitted(Admitted&& o) noexcept
        : server_(std::exchange(o.server_, nullptr)), id_(o.id_), ip_(std::move(o.ip_)), member_(std::move(o.member_)) {}
    Admitted& operator=(Admitted&& o) noexcept;
    Admitted(const Admitted&) = delete;
    Admitted& operator=(const Admitted&) = delete;
    ~Admitted() { give_back(); }
    [[nodiscard]] explicit operator bool() const { return server_ != nullptr; }

   private:
    void give_back() noexcept;  // takes registry_.mu: never call it holding the lock
    Server* server_ = nullptr;
    std::uint64_t id_ = 0;
    std::string ip_;
    TaskGroup::Member member_;
  };
  // Admission under limits.sessions; on success the connection is counted, registered and joins
  // the connection group, all held by `slot` (which must hold nothing before).
  bool admit(std::uint64_t id, const std::string& ip, bool per_client, const std::shared_ptr<Connection>& c,
             Admitted& slot);
  // An admitted connection's coroutine: runs it; `slot` gives the admission back when it ends,
  // however it ends.
  awaitable<void> serve(std::shared_ptr<Connection> conn, Admitted slot);
  std::string next_session_id(std::uint64_t& id);
  awaitable<void> signal_loop();
  awaitable<void> shutdown();
  awaitable<void> watch_key_file();
  // The client's session. `rt` and `listener` as of the accept; `remote` / `local`: the client
  // and our address as it addressed us (the socket's, or a PROXY header's); `via`: the load
  // balancer's "ip:port" when a PROXY header named the client.
  void start_session(tcp::socket sock, std::shared_ptr<const Runtime> rt, std::size_t listener,
                     const tcp::endpoint& remote, const tcp::endpoint& local, std::string via);
  // A connection from listener.accept_proxy_from: reads its PROXY header (exactly its bytes,
  // within timeouts.proxy_header and limits.proxy_header_size), then starts the session for the
  // client it names, answers a health check (v2 LOCAL, v1 UNKNOWN) and closes, or closes on a bad
  // header with a warning. Runs on the socket's own context.
  awaitable<void> read_proxy_header(tcp::socket sock, std::shared_ptr<const Runtime> rt, std::size_t listener,
                                    tcp::endpoint peer);
  void release(std::uint64_t id, const std::string& ip);
  void reload();
  // Staged keys (crypto::Keyring::next_switch): each ring already signs with the right key at
  // any time; this timer, armed for the earliest next switch of all rings and re-armed on every
  // reload and every firing, only logs the switch (event=signing_key_switch ring=...) and updates
  // the key metrics when it happens. arm_key_switch also sets the key metrics per ring
  // (batv_active_key_id{ring}, the next switch time).
  void arm_key_switch();
  void on_key_switch(std::uint64_t generation);

  RuntimeHolder& runtime_;
  std::vector<std::unique_ptr<asio::io_context>> contexts_;
  std::string config_path_;
  std::vector<std::shared_ptr<Listening>> acceptors_;
  std::unique_ptr<asio::signal_set> signals_;
  std::size_t next_context_ = 0;
  std::atomic<std::uint64_t> next_id_{1};  // sessions also start on I/O threads (PROXY headers)
  std::uint32_t id_prefix_ = 0;
  Registry registry_;
  bool stopping_ = false;
  std::unique_ptr<MetricsServer> metrics_server_;  // after contexts_: destroyed before them
  std::unique_ptr<asio::system_timer> key_switch_timer_;  // on the main context; after contexts_
  TaskGroup connections_;  // the coroutines of the admitted connections (shutdown waits for them)
  std::uint64_t key_switch_generation_ = 0;  // a wait from before the last re-arm is stale
  std::vector<int> announced_signers_{-1};   // per ring: the signer the log and the metrics last showed
};

}  // namespace batv::relay
