#include "relay/session.hpp"

#include <algorithm>
#include <cstring>

#include "conf/ascii.hpp"
#include "relay/client_identity.hpp"
#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/nexthop_caps.hpp"
#include "relay/replies.hpp"

namespace batv::relay {

namespace {

// The input buffer is small while the session reads commands and grows for a message body only:
// held-open sessions then cost a few KiB each, and a body still streams in 64 KiB reads.
constexpr std::size_t command_buffer = conf::fixed::command_buffer_bytes;
constexpr std::size_t max_pending = conf::fixed::max_pipelined_commands;  // then a forced flush

}  // namespace

Session::Session(tcp::socket client, SessionContext ctx)
    : client_(std::move(client)),
      ctx_(std::move(ctx)),
      rt_(ctx_.runtime),
      cfg_(rt_->config),
      listener_(cfg_.listeners.at(ctx_.listener)),
      up_(client_.get_executor(), cfg_.limits, cfg_.timeouts),
      in_(std::max<std::size_t>(command_buffer, static_cast<std::size_t>(cfg_.limits.line_length) + 2)) {
  tx_.shared = std::make_shared<TxShared>();
}

void Session::stop() {
  auto self = shared_from_this();
  asio::post(client_.get_executor(), [self] {
    self->stop_requested_ = true;
    self->client_.cancel();
    // A message already handed over waits for the next hop's verdict (bounded by
    // timeouts.upstream_data_reply): cancelling it would tell the client 421 for mail the next hop
    // may accept, and the client's retry would deliver it twice. The session ends right after.
    if (!self->awaiting_verdict_) self->up_.cancel();
  });
}

awaitable<void> Session::run() {
  metrics().session_started(listener_.role);
  try {
    co_await serve();
  } catch (const std::exception& e) {
    end_ = End::io_error;
    log(Level::error, "session_error").kv("sid", ctx_.id).kv("error", e.what());
  }
  up_.close();
  client_.close();
  metrics().session_ended(listener_.role, end_);
  auto line = log(Level::info, "session_end");
  line.kv("sid", ctx_.id)
      .kv("client", ctx_.client)
      .kv("role", conf::to_string(listener_.role))
      .kv("reason", end_name())
      .kv("phase", phase_name())
      .kv("messages", messages_)
      .kv("recipients", recipients_)
      .kv("signed", signed_)
      .kv("unsigned", unsigned_)
      .kv("refused", refused_)
      .kv("errors", errors_)
      .kv("tls", client_.protocol());
  if (!tls_error_.empty()) line.kv("tls_error", tls_error_);
  if (!upstream_detail_.empty()) line.kv("upstream_error", upstream_detail_);
}

awaitable<void> Session::serve() {
  const std::string& host = rt_->hostname;
  {
    auto line = log(Level::info, "connect");
    line.kv("sid", ctx_.id).kv("client", ctx_.client).kv("role", conf::to_string(listener_.role));
    if (!ctx_.via.empty()) line.kv("via", ctx_.via);
  }
  switch (ctx_.admission) {
    case SessionContext::Admission::ok: break;
    case SessionContext::Admission::denied: co_await finish(End::access_denied); co_return;
    case SessionContext::Admission::too_many: co_await finish(End::too_many_sessions); co_return;
    case SessionContext::Admission::too_many_from_client:
      co_await finish(End::too_many_sessions, replies::too_many_from_client(host));
      co_return;
  }

  phase_ = Phase::greeting;
  for (const auto& net : cfg_.inbound.accept_untagged_from)
    if (net.contains(std::string_view(ctx_.client_ip))) client_exempt_ = true;
  if (listener_.forward_client == conf::ForwardClient::proxy_v1) preamble_ = proxy_v1_header(ctx_.remote, ctx_.local);
  if (listener_.forward_client == conf::ForwardClient::proxy_v2) preamble_ = proxy_v2_header(ctx_.remote, ctx_.local);
  client_port_ = ctx_.remote.port();
  // Implicit TLS (port 465 style): the handshake comes before anything else.
  if (listener_.implicit_tls) {
    const IoResult h = co_await client_.handshake(*rt_->tls.at(ctx_.listener).server,
                                                  asio::ssl::stream_base::server, cfg_.timeouts.idle);
    if (!h) {
      tls_error_ = h.timed_out ? "handshake timed out" : h.ec.message();
      co_await finish_silently(h.timed_out ? End::idle_timeout : End::tls_failed);
      co_return;
    }
  }
  if (!connect_at_mail() && !co_await open_upstream()) {
    if (up_.failure() != Upstream::Failure::tls) co_await finish(End::upstream_unavailable);
    else if (strict_upstream_tls()) co_await finish(End::upstream_unavailable, replies::upstream_tls_unavailable(host));
    else co_await finish(End::upstream_unavailable, replies::upstream_tls_failed(host));
    co_return;
  }
  // upstream_connect = "mail": nothing is open yet; EHLO/HELO will offer what the next hop
  // offered last (a MAIL needs one of them first).
  if (!connect_at_mail()) offer(up_.caps());

  session_deadline_ = Clock::now() + cfg_.timeouts.session;
  if (!co_await write_client(replies::greeting(host))) co_return;
  phase_ = Phase::command;

  std::string line;
  for (;;) {
    // Flush replies (and relay pipelined commands) once the batch the client sent is consumed.
    if (!has_complete_line() || pipeline_.size() >= max_pending) {
      if (!co_await flush()) co_return;
      if (const auto end = over_limit()) {  // the next hop's refusals count too
        co_await finish(*end);
        co_return;
      }
    }
    command_deadline_ = std::min(Clock::now() + cfg_.timeouts.command, session_deadline_);
    const LineStatus st = co_await read_line(line);
    switch (st) {
      case LineStatus::ok:
        if (!co_await process(line)) co_return;
        break;
      case LineStatus::too_long:
        refuse(replies::line_too_long());
        break;
      case LineStatus::closed:
      case LineStatus::timeout:
      case LineStatus::stopped:
        co_await finish(read_end(failure_of(st), session_deadline_, End::session_timeout));
        co_return;
    }
    if (const auto end = over_limit()) {
      co_await finish(*end);
      co_return;
    }
  }
}

// --- How the session ends ------------------------------------------------------------------------

awaitable<bool> Session::finish(End e) {
  co_return co_await finish(e, replies::final_reply(e, rt_->hostname, ctx_.client_ip));
}

awaitable<bool> Session::finish(End e, std::string reply) {
  end_ = e;
  // The replies owed go out first. A flush that loses the next hop ends the session itself
  // (upstream_lost, with its own final reply): one final reply, never two.
  // (Kept as a named bool: `if (!co_await flush()) co_return false;` here, in a coroutine with a
  // by-value string parameter, is miscompiled by g++ 12: the frame is read uninitialised.)
  const bool flushed = co_await flush();
  if (flushed) co_await write_client(reply);
  co_return false;
}

awaitable<bool> Session::finish_silently(End e) {
  end_ = e;
  co_return false;
}

awaitable<bool> Session::next_hop_lost(UpstreamStage stage) {
  metrics().upstream_error(stage);
  upstream_detail_ = std::string(to_string(up_.failure())) + ": " + up_.detail();
  co_return co_await finish(End::upstream_lost);
}

Session::ReadFailure Session::failure_of(LineStatus st) {
  switch (st) {
    case LineStatus::stopped: return ReadFailure::stopped;
    case LineStatus::timeout: return ReadFailure::timeout;
    default: return ReadFailure::closed;
  }
}

Session::End Session::read_end(ReadFailure f, Clock::time_point deadline, End at_deadline) const {
  switch (f) {
    case ReadFailure::stopped: return End::shutdown;
    case ReadFailure::timeout: return Clock::now() >= deadline ? at_deadline : End::idle_timeout;
    case ReadFailure::closed: break;
  }
  return End::client_closed;
}

std::optional<Session::End> Session::over_limit() const {
  if (errors_ >= cfg_.limits.errors_per_session) return End::too_many_errors;
  if (invalid_recipients_ >= cfg_.limits.invalid_recipients_per_session) return End::too_many_invalid_recipients;
  if (commands_outside_tx_ > cfg_.limits.commands_before_mail) return End::too_many_commands;
  return std::nullopt;
}

void Session::offer(const smtp::Capabilities& caps) {
  adv_pipelining_ = caps.pipelining;
  adv_8bitmime_ = caps.eightbitmime;
  adv_smtputf8_ = caps.smtputf8;
  adv_dsn_ = caps.dsn;
  adv_chunking_ = caps.chunking;
  adv_enhanced_ = caps.enhancedstatuscodes;
  adv_size_ = static_cast<std::uint64_t>(cfg_.limits.message_size);
  if (caps.size && *caps.size > 0) adv_size_ = std::min(adv_size_, *caps.size);
}

// Every reply the client gets for a command passes here or through Pipeline::flush, and counts
// toward limits.errors_per_session by one rule (Answer::counts). Local replies count when queued,
// so that the limit stops a pipelined batch of bad commands where it is reached.
void Session::queue_local(std::string reply, bool own_limit) {
  if (Answer::counted(reply, own_limit)) ++errors_;
  pipeline_.local(std::move(reply));
}

awaitable<bool> Session::reply_now(std::string reply) {
  if (Answer::counted(reply)) ++errors_;
  co_return co_await write_client(reply);
}

awaitable<bool> Session::start_tls(std::string_view args) {
  const auto& server = rt_->tls.at(ctx_.listener).server;  // offered: smtp::check said so
  if (!args.empty()) {
    refuse(replies::starttls_syntax());
    co_return true;
  }
  if (!co_await write_client(replies::ready_for_tls())) co_return false;
  // CVE-2011-0411: whatever the client pipelined after STARTTLS came in the clear and must not
  // be executed inside the TLS session.
  in_begin_ = in_end_ = 0;
  const IoResult h = co_await client_.handshake(*server, asio::ssl::stream_base::server, cfg_.timeouts.idle);
  if (!h) {
    tls_error_ = h.timed_out ? "handshake timed out" : h.ec.message();
    co_return co_await finish_silently(h.timed_out ? End::idle_timeout : End::tls_failed);
  }
  // RFC 3207 4.2: discard all knowledge from before TLS; the client starts again with EHLO.
  handle_rset(/*reply=*/false);
  helo_seen_ = false;
  esmtp_ = false;
  client_helo_.clear();
  authenticated_ = false;
  log(Level::info, "tls").kv("sid", ctx_.id).kv("protocol", client_.protocol()).kv("cipher", client_.cipher());
  if (up_.connected() && !up_.encrypted()) log_downgrade();
  co_return true;
}

awaitable<bool> Session::flush() {
  bool lost = false;
  if (!pipeline_.empty()) {
    const bool up_ok = !pipeline_.needs_next_hop() || co_await ensure_upstream();
    Pipeline::Flushed f = co_await pipeline_.flush(up_, up_ok);
    out_ += f.text;
    errors_ += f.errors;  // the next hop's refusals, relayed (Answer::counts)
    lost = f.lost;
  }
  std::string text = std::move(out_);
  out_.clear();
  if (!co_await write_client(text)) co_return false;
  if (lost) {
    const UpstreamStage stage = phase_ == Phase::mail   ? UpstreamStage::mail
                              : phase_ == Phase::rcpt ? UpstreamStage::rcpt
                                                      : UpstreamStage::reply;
    if (!stop_requested_) co_return co_await next_hop_lost(stage);
    metrics().upstream_error(stage);  // the stop cancelled it
    co_return co_await finish(End::shutdown);
  }
  co_return true;
}

// --- Commands (MAIL, RCPT and RSET: session_transaction.cpp) ------------------------------------------------------------------------------------------

awaitable<bool> Session::process(const std::string& line) {
  if (line.find('\0') != std::string::npos) {
    refuse(replies::nul_in_command());
    co_return true;
  }
  const smtp::Command cmd = smtp::parse_command(line);
  using smtp::Verb;
  const smtp::VerbFlags flags = smtp::verb_flags(cmd.verb);
  // Junk commands (Postfix smtpd_junk_command_limit): the count restarts when a message is delivered.
  if (flags.junk) ++commands_outside_tx_;
  if (cmd.verb == Verb::quit) phase_ = Phase::quit;  // a next hop lost in this flush is lost at "reply"
  if (flags.flush_first && !co_await flush()) co_return false;
  // BDAT is checked once its size is parsed: a refused chunk is still read (do_bdat).
  if (cmd.verb != Verb::bdat) {
    if (const auto no = smtp::check(facts(), cmd.verb)) {
      refuse(replies::refusal(*no));
      co_return true;
    }
  }
  switch (cmd.verb) {
    case Verb::ehlo:
    case Verb::helo: co_return co_await do_helo(cmd);
    case Verb::mail: co_return co_await handle_mail(cmd.args);
    case Verb::rcpt: handle_rcpt(cmd.args); co_return true;
    case Verb::data: co_return co_await do_data();
    case Verb::bdat: co_return co_await do_bdat(cmd.args);
    case Verb::rset: handle_rset(/*reply=*/true); co_return true;
    case Verb::noop: queue_local(replies::ok()); co_return true;
    case Verb::vrfy:
    case Verb::expn:
      if (cfg_.smtp.vrfy == conf::VrfyReply::cannot_verify) queue_local(replies::vrfy_cannot());
      else refuse(replies::vrfy_disabled());
      co_return true;
    case Verb::help: queue_local(replies::help()); co_return true;
    case Verb::quit: co_return co_await do_quit();
    case Verb::starttls: co_return co_await start_tls(cmd.args);
    case Verb::auth: co_return co_await do_auth(cmd.args);
    case Verb::unknown: refuse(replies::unknown_command()); co_return true;
  }
  co_return true;
}

smtp::PhaseFacts Session::facts() const {
  smtp::PhaseFacts f;
  f.helo_seen = helo_seen_;
  f.in_transaction = tx_.active;
  f.bdat_used = tx_.bdat_used;
  f.bdat_failed = tx_.bdat_failed;
  f.recipients_accepted = tx_.shared->rcpt_accepted > 0;
  f.recipients_tried = tx_.rcpt_tried > 0;
  f.tls_missing = listener_.require_tls && !client_.tls();
  f.auth_missing = ctx_.needs_auth && !authenticated_;
  f.chunking_offered = adv_chunking_;
  f.tls_offered = rt_->tls.at(ctx_.listener).server && !listener_.implicit_tls;
  f.tls_active = client_.tls();
  f.auth_offered = auth_offered();
  f.auth_needs_tls = listener_.role == conf::Role::outbound && !up_.caps().auth.empty();
  f.authenticated = authenticated_;
  return f;
}

awaitable<bool> Session::do_helo(const smtp::Command& cmd) {
  using smtp::Verb;
  if (cmd.args.empty()) {
    refuse(replies::helo_syntax(cmd.verb == Verb::ehlo));
    co_return true;
  }
  handle_rset(/*reply=*/false);  // RFC 5321 4.1.4: EHLO/HELO reset the transaction
  helo_seen_ = true;
  esmtp_ = cmd.verb == Verb::ehlo;
  client_helo_ = clean_helo(cmd.args, rt_->hostname);
  // Connecting at MAIL with nothing open yet: XCLIENT goes when the connection opens.
  if (listener_.forward_client == conf::ForwardClient::xclient && (!connect_at_mail() || up_.connected())) {
    if (!co_await flush()) co_return false;  // any RSET for the next hop goes first
    // XCLIENT and the EHLO after it count as the EHLO stage of the next hop.
    if (!co_await forward_client_identity()) co_return co_await next_hop_lost(UpstreamStage::ehlo);
    // The EHLO after XCLIENT may offer other extensions (Postfix looks at the client it
    // now sees): the client is offered what the next hop offers from here on.
    offer(up_.caps());
    learn_caps();
  } else if (connect_at_mail()) {
    // The live connection when there is one (a later EHLO), else what was learned last.
    offer(up_.connected() ? up_.caps() : NextHopCaps::global().get(NextHopCaps::key_of(listener_)).caps);
  }
  if (!esmtp_) {
    queue_local(replies::helo(rt_->hostname));
    co_return true;
  }
  replies::EhloOffer offer;
  offer.pipelining = adv_pipelining_;
  offer.size = adv_size_;
  offer.eightbitmime = adv_8bitmime_;
  offer.smtputf8 = adv_smtputf8_;
  offer.enhancedstatuscodes = adv_enhanced_;
  offer.dsn = adv_dsn_;
  offer.chunking = adv_chunking_;
  offer.starttls = rt_->tls.at(ctx_.listener).server && !client_.tls() && !listener_.implicit_tls;
  if (auth_offered()) offer.auth = up_.caps().auth;
  queue_local(replies::ehlo(rt_->hostname, offer));
  co_return true;
}

awaitable<bool> Session::do_quit() {
  co_await finish(End::quit);
  // A clean next hop (no transaction open, never authenticated as this client) waits for
  // the next session instead of being closed.
  const bool clean = pipeline_.empty() && !auth_attempted_ && !(tx_.decided && tx_.shared->upstream_open);
  if (up_.connected() && clean && upstream_reusable()) {
    UpstreamCache::local().put(rt_.get(), ctx_.listener, rt_, up_.release(), cfg_.timeouts.upstream_idle,
                               static_cast<std::size_t>(cfg_.limits.upstream_idle_connections));
  } else if (up_.connected()) {
    co_await up_.send("QUIT\r\n");
  }
  co_return false;
}

// --- Names for logs -----------------------------------------------------------------------------------

std::string_view Session::phase_name() const {
  switch (phase_) {
    case Phase::connect: return "connect";
    case Phase::greeting: return "greeting";
    case Phase::command: return "command";
    case Phase::mail: return "mail";
    case Phase::rcpt: return "rcpt";
    case Phase::data: return "data";
    case Phase::bdat: return "bdat";
    case Phase::quit: return "quit";
  }
  return "?";
}

std::string_view Session::end_name() const { return to_string(end_); }

}  // namespace batv::relay
