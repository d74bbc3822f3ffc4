// session: one client connection of the outbound relay, as one C++20 coroutine.
//
// Transparent proxy: the session opens one next-hop connection, answers the greeting and EHLO
// itself, decides how MAIL FROM leaves at the first RCPT (relay/policy.hpp) and relays every
// reply of the next hop, sanitised. The connection opens at connect, or, with
// listener.upstream_connect = "mail" (inbound default), at the client's first MAIL, as Postfix's
// smtpd_proxy: EHLO is then answered from the next hop's capabilities as last learned
// (relay/nexthop_caps.hpp), and a MAIL that uses an extension the next hop turns out not to offer
// gets 451 4.3.3; a next hop unreachable then gets that MAIL a 451 and the session goes on. A message is acknowledged with 250 only after the next hop
// acknowledged it; every failure on the way gives the client a 4xx or 5xx (relay/replies.hpp).
// Pipelined commands are relayed as one batch in both directions, replies in order.
// Memory per session is bounded: one input buffer (4 KiB or limits.line_length while reading
// commands, 64 KiB while a body streams), the reply reader's limits, and a bounded queue of
// pipelined commands.
// Every session ends through Session::finish(End) (the final reply per End: replies::final_reply)
// and logs one `event=session_end` line in Session::run.
//
// Where things live: session.cpp is the dispatcher (the command loop, the phase table
// relay/smtp/phase.hpp applied, EHLO, MAIL, RCPT, RSET, QUIT, the way out); the pipeline of
// next-hop commands is relay/pipeline.hpp; session_data.cpp streams DATA and BDAT;
// session_auth.cpp relays AUTH; session_nexthop.cpp opens the next hop and relays its replies;
// relay/client_identity.hpp tells the next hop who the client is (XCLIENT, PROXY).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "conf/limits.hpp"
#include "relay/connection.hpp"
#include "relay/io.hpp"
#include "relay/pipeline.hpp"
#include "relay/policy.hpp"
#include "relay/runtime.hpp"
#include "relay/session_end.hpp"
#include "relay/smtp/command.hpp"
#include "relay/smtp/params.hpp"
#include "relay/smtp/phase.hpp"
#include "relay/upstream.hpp"

namespace batv::relay {

// What a server tells a session at its start, and how it asks it to stop.
struct SessionContext {
  std::shared_ptr<const Runtime> runtime;
  std::size_t listener = 0;
  std::string id;           // for logs
  std::string client;       // "ip:port"
  std::string client_ip;
  // The client and our address as it addressed us: the socket's peer and local address, or,
  // behind a load balancer (listener.accept_proxy_from), the ones its PROXY header gave.
  tcp::endpoint remote, local;
  std::string via;          // "ip:port" of that load balancer; empty without one
  enum class Admission { ok, denied, too_many, too_many_from_client } admission = Admission::ok;
  bool needs_auth = false;  // outside allow_clients, admitted by allow_authenticated
};

// The client input buffer: like std::vector<char> without zeroing what it allocates (zero-filling
// a body's 64 KiB showed in profiles). Body-sized buffers come from and go back to a small
// per-thread pool, so a stream of messages does not allocate and free 64 KiB each time.
class InputBuffer {
 public:
  explicit InputBuffer(std::size_t n) : p_(take(n)), n_(n) {}
  ~InputBuffer() { give(std::move(p_), n_); }
  InputBuffer(const InputBuffer&) = delete;
  InputBuffer& operator=(const InputBuffer&) = delete;
  char* data() { return p_.get(); }
  const char* data() const { return p_.get(); }
  [[nodiscard]] std::size_t size() const { return n_; }
  // How many spare stream buffers this thread holds (for tests and debugging).
  [[nodiscard]] static std::size_t spare_buffers() { return spares().size(); }
  // A new capacity; the first `keep` bytes (keep <= both sizes) are preserved.
  void reallocate(std::size_t n, std::size_t keep) {
    std::unique_ptr<char[]> q = take(n);
    std::memcpy(q.get(), p_.get(), keep);
    give(std::move(p_), n_);
    p_ = std::move(q);
    n_ = n;
  }

 private:
  // Spare stream-sized buffers of this thread (conf::fixed::spare_stream_buffers_per_thread).
  static std::vector<std::unique_ptr<char[]>>& spares() {
    thread_local std::vector<std::unique_ptr<char[]>> v;
    return v;
  }
  static std::unique_ptr<char[]> take(std::size_t n) {
    auto& v = spares();
    if (n == conf::fixed::stream_buffer_bytes && !v.empty()) {
      std::unique_ptr<char[]> p = std::move(v.back());
      v.pop_back();
      return p;
    }
    return std::unique_ptr<char[]>(new char[n]);
  }
  static void give(std::unique_ptr<char[]> p, std::size_t n) {
    auto& v = spares();
    if (p && n == conf::fixed::stream_buffer_bytes && v.size() < conf::fixed::spare_stream_buffers_per_thread)
      v.push_back(std::move(p));
  }

  std::unique_ptr<char[]> p_;
  std::size_t n_;
};

class Session final : public Connection, public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket client, SessionContext ctx);

  // Runs the whole session; never throws.
  awaitable<void> run() override;

  // Asks the session to end with 421 4.3.2 (shutdown). Thread-safe: posts to the session's executor.
  void stop() override;

  asio::any_io_executor executor() override { return client_.get_executor(); }

 private:
  enum class Phase { connect, greeting, command, mail, rcpt, data, bdat, quit };
  using End = SessionEnd;  // relay/session_end.hpp: the values a proxy session ends with, quit..io_error
  enum class LineStatus { ok, too_long, closed, timeout, stopped };
  enum class ReadFailure { closed, timeout, stopped };

  // The part of a transaction that next-hop replies update. Reply handlers of pipelined
  // commands hold it by shared_ptr, so an RSET later in the same batch cannot make them update
  // the next transaction.
  struct TxShared {
    std::optional<std::string> mail_error;  // the next hop refused MAIL: the reply for every RCPT
    bool upstream_open = false;             // MAIL sent on the current next-hop connection
    int rcpt_accepted = 0;
  };
  // The transaction: reset by RSET, EHLO/HELO, and after the end of data.
  struct Transaction {
    bool active = false;             // MAIL accepted
    std::string sender;              // as received (empty = <>)
    std::string mail_params;         // raw parameter text, forwarded as-is
    bool smtputf8 = false;
    bool decided = false;            // first RCPT seen: decision taken and MAIL sent upstream
    SenderDecision decision;
    int rcpt_sent = 0;               // RCPTs passed to the next hop
    int rcpt_tried = 0;
    bool bdat_used = false, bdat_failed = false;
    std::uint64_t bdat_bytes = 0;
    bool bounce = false;             // inbound: MAIL FROM:<> (or MAILER-DAEMON, configured)
    bool monitored = false;          // inbound monitor mode: X-BATV-Status goes in front
    std::optional<crypto::Verdict> monitor_verdict;
    bool header_sent = false;
    std::shared_ptr<TxShared> shared;
  };

  awaitable<void> serve();
  awaitable<LineStatus> read_line(std::string& line);
  awaitable<bool> fill(Clock::time_point deadline);
  awaitable<bool> write_client(std::string_view text);
  awaitable<bool> flush();
  awaitable<bool> process(const std::string& line);
  smtp::PhaseFacts facts() const;  // where the session stands, for the phase table
  awaitable<bool> do_helo(const smtp::Command& cmd);
  awaitable<bool> do_quit();
  awaitable<bool> do_data();
  awaitable<bool> do_bdat(std::string_view args);
  awaitable<bool> skip_bytes(std::uint64_t n);
  // The one way a session ends: end_ = e, the replies owed flushed, then e's final reply
  // (replies::final_reply, or `reply` for the variants it names). Returns false ("over"), for
  // `co_return co_await finish(...)`.
  awaitable<bool> finish(End e);
  awaitable<bool> finish(End e, std::string reply);
  // Ends without a final reply: a TLS handshake that did not complete cannot carry one, and a
  // client read failing inside an AUTH exchange has never been answered with one.
  awaitable<bool> finish_silently(End e);
  // The next hop went away: metrics (stage; empty = not counted), upstream_detail_, 421 4.4.2.
  awaitable<bool> next_hop_lost(UpstreamStage stage);
  // How a failed client read ends the session: stop -> shutdown, EOF or reset -> client_closed,
  // a timeout -> `at_deadline` once `deadline` has passed, else idle_timeout (timeouts.idle).
  End read_end(ReadFailure f, Clock::time_point deadline, End at_deadline) const;
  static ReadFailure failure_of(LineStatus st);
  // A per-session limit reached after a command (errors, invalid recipients, junk commands).
  std::optional<End> over_limit() const;
  bool strict_upstream_tls() const;  // upstream_tls required/verify: TLS trouble is policy (4.7.0)
  awaitable<bool> ensure_upstream();
  awaitable<bool> forward_client_identity();  // XCLIENT when the listener says so (relay/client_identity.hpp)
  awaitable<bool> open_upstream();
  bool upstream_reusable() const;  // listener and limits allow an idle next-hop connection cache
  awaitable<bool> start_tls(std::string_view args);  // the STARTTLS command
  awaitable<bool> do_auth(std::string_view args);    // the AUTH command, relayed to the next hop
  bool auth_offered() const;
  UpstreamTlsPolicy upstream_tls_policy() const;
  void log_downgrade();
  std::string monitor_header() const;
  void offer(const smtp::Capabilities& caps);  // what the client's EHLO reply advertises
  // A reply of the session's own, kept in order in the pipeline; counted (Answer::counts) now.
  void queue_local(std::string reply, bool own_limit = false);
  // A reply written at once (DATA, BDAT, AUTH: the session waited for it); counted the same way.
  awaitable<bool> reply_now(std::string reply);
  void resize_input(std::size_t n);  // keeps buffered bytes; never below limits.line_length
  void refuse(std::string reply) { queue_local(std::move(reply)); }  // a local error reply
  smtp::ParamOffer param_offer() const;  // what the client was offered, for MAIL/RCPT parameters
  // False: the session is over (a client write failed while flushing before the next hop opened).
  awaitable<bool> handle_mail(std::string_view args);
  // upstream_connect = "mail": the connection is opened when a MAIL is accepted, not at connect.
  [[nodiscard]] bool connect_at_mail() const { return listener_.upstream_connect == conf::UpstreamConnect::mail; }
  void learn_caps();  // connect_at_mail(): what this next-hop connection offers, for later EHLOs
  // A next-hop connection opened at MAIL could not be set up: the reply for that MAIL.
  std::string mail_open_failed_reply() const;
  void handle_rcpt(std::string_view args);
  void handle_rset(bool reply);
  void reset_transaction();
  void count_message(const std::string& reply, std::uint64_t size);
  std::string relay_reply(const smtp::Reply& r) const;
  std::string upstream_failure_reply() const;
  // The client's reply to the end of a message's content (final dot, BDAT chunk): the next hop's
  // reply relayed, or, without one, the failure reply (counted at `stage`; the connection closed).
  std::string verdict_reply(const std::optional<smtp::Reply>& r, UpstreamStage stage);
  bool has_complete_line() const;
  std::string_view unread_input() const;  // in_[in_begin_, in_end_): read, not yet consumed
  std::string_view phase_name() const;
  std::string_view end_name() const;

  Stream client_;
  SessionContext ctx_;
  std::shared_ptr<const Runtime> rt_;  // snapshot for the whole session
  const conf::Config& cfg_;
  const conf::Listener& listener_;
  Upstream up_;

  InputBuffer in_;                 // client input, bounded
  std::size_t in_begin_ = 0, in_end_ = 0;
  std::string out_;                // client replies not yet written
  Pipeline pipeline_;              // pipelined commands for the next hop, replies in order

  ReadFailure read_failure_ = ReadFailure::closed;
  Phase phase_ = Phase::connect;
  End end_ = End::none;
  bool helo_seen_ = false;
  bool esmtp_ = false;
  Transaction tx_;
  std::atomic<bool> stop_requested_{false};
  bool awaiting_verdict_ = false;  // the final dot (or last BDAT) is sent; its reply is awaited
  Clock::time_point command_deadline_{};
  Clock::time_point session_deadline_ = Clock::time_point::max();

  // Advertised to the client (what we and the next hop both do).
  bool adv_pipelining_ = false, adv_8bitmime_ = false, adv_smtputf8_ = false, adv_dsn_ = false,
       adv_chunking_ = false, adv_enhanced_ = false;
  std::uint64_t adv_size_ = 0;

  int errors_ = 0;
  int commands_outside_tx_ = 0;
  int messages_ = 0, recipients_ = 0, signed_ = 0, unsigned_ = 0, refused_ = 0;
  std::int64_t invalid_recipients_ = 0;
  bool client_exempt_ = false;   // inbound.accept_untagged_from
  std::string client_helo_;      // the client's HELO/EHLO argument, for XCLIENT
  std::string preamble_;         // PROXY header for every next-hop connection
  std::uint16_t client_port_ = 0;
  std::string tls_error_;
  bool authenticated_ = false;
  bool auth_attempted_ = false;
  std::string upstream_detail_;
  int upstream_opens_ = 0;       // next-hop connections this session opened or reused
};

}  // namespace batv::relay
