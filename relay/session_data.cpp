// Session, DATA and BDAT (RFC 5321 4.1.1.4, RFC 3030): the body streams to the next hop in
// constant memory, bytes forwarded as received; the client gets the next hop's verdict.
#include "relay/session.hpp"

#include "relay/log.hpp"
#include "relay/metrics.hpp"
#include "relay/replies.hpp"
#include "relay/smtp/data.hpp"

namespace batv::relay {

// --- DATA and BDAT ---------------------------------------------------------------------------------

std::string Session::monitor_header() const {
  return "X-BATV-Status: " + std::string(crypto::to_string(tx_.monitor_verdict.value_or(crypto::Verdict::valid))) +
         "\r\n";
}

void Session::count_message(const std::string& reply, std::uint64_t size) {
  const bool accepted = !reply.empty() && reply[0] == '2';
  metrics().message(listener_.role, accepted);
  if (accepted) metrics().bytes(listener_.role, size);
  if (accepted) {
    ++messages_;
    commands_outside_tx_ = 0;
    if (listener_.role == conf::Role::outbound) ++(tx_.decision.sign ? signed_ : unsigned_);
  }
  std::string first = reply.substr(0, reply.find('\r'));
  log(accepted ? Level::info : Level::warning, "message")
      .kv("sid", ctx_.id)
      .kv("from", "<" + tx_.sender + ">")
      .kv("upstream_from", "<" + tx_.decision.upstream_from + ">")
      .kv("recipients", tx_.shared->rcpt_accepted)
      .kv("size", size)
      .kv("result", accepted ? "accepted" : "rejected")
      .kv("reply", first);
}

awaitable<bool> Session::do_data() {
  // Flushed, and legal now (smtp::check): a next hop accepted a recipient.
  phase_ = Phase::data;
  std::optional<smtp::Reply> r;
  if (co_await up_.send("DATA\r\n")) r = co_await up_.read_reply();
  if (!r) {
    out_ += upstream_failure_reply();  // DATA's own reply, then the 421
    co_return co_await next_hop_lost(UpstreamStage::data);
  }
  if (r->code != 354) {
    // Named, not a ?: temporary inside co_await (g++ 12 destroys such a temporary twice).
    std::string reply = r->code / 100 == 2 ? replies::upstream_garbled() : relay_reply(*r);
    co_return co_await reply_now(std::move(reply));
  }
  if (!co_await write_client(replies::start_data())) {
    co_return false;
  }
  bool upstream_broke = false;
  if (tx_.monitored) {
    // Inbound monitor mode: the verdict goes in front of the message, as the first header line.
    upstream_broke = !co_await up_.send(monitor_header());
  }

  // Stream the body: constant memory, bytes forwarded exactly as received.
  resize_input(conf::fixed::stream_buffer_bytes);
  const auto data_deadline = Clock::now() + cfg_.timeouts.data;
  const auto max_size = static_cast<std::uint64_t>(cfg_.limits.message_size);
  smtp::DataScanner scanner;
  std::uint64_t size = 0;
  bool forwarding = !upstream_broke, too_big = false, done = false;
  while (!done) {
    if (in_begin_ == in_end_ && !co_await fill(data_deadline)) {
      up_.close();  // the next hop discards an unterminated message
      co_return co_await finish(read_end(read_failure_, data_deadline, End::data_timeout));
    }
    const char* p = in_.data() + in_begin_;
    const std::size_t n = scanner.scan(p, in_end_ - in_begin_, done);
    size += n;
    if (size > max_size + 5) too_big = true;  // + the terminator's 5 octets at most
    if (forwarding && (scanner.bare_newline || too_big)) {
      forwarding = false;
      up_.close();
    }
    if (forwarding && !co_await up_.send(std::string_view(p, n))) {
      forwarding = false;
      upstream_broke = true;
    }
    in_begin_ += n;
  }

  const auto t_end_of_data = Clock::now();
  Clock::duration upstream_wait{};
  std::string reply;
  if (scanner.bare_newline) {
    reply = replies::bare_newline();
  } else if (too_big) {
    reply = replies::size_exceeded();
  } else if (upstream_broke) {
    metrics().upstream_error(UpstreamStage::data);
    reply = upstream_failure_reply();
  } else {
    const auto t_wait = Clock::now();
    awaiting_verdict_ = true;
    auto fin = co_await up_.read_reply(/*final_dot=*/true);
    awaiting_verdict_ = false;
    upstream_wait = Clock::now() - t_wait;
    reply = verdict_reply(fin, UpstreamStage::dot);
  }
  if (!up_.connected() && upstream_detail_.empty() && up_.failure() != Upstream::Failure::none)
    upstream_detail_ = std::string(to_string(up_.failure())) + ": " + up_.detail();
  metrics().latency(std::chrono::duration<double>(Clock::now() - t_end_of_data - upstream_wait).count());
  count_message(reply, size);
  reset_transaction();
  resize_input(conf::fixed::command_buffer_bytes);
  co_return co_await reply_now(std::move(reply));
}

std::string Session::verdict_reply(const std::optional<smtp::Reply>& r, UpstreamStage stage) {
  if (!r) {  // no reply (or no send): the next hop is gone, and the message is not acknowledged
    metrics().upstream_error(stage);
    std::string reply = upstream_failure_reply();  // by the failure seen, before the close
    up_.close();
    return reply;
  }
  if (r->code / 100 == 3) return replies::upstream_garbled();  // 3xx after the content: nonsense
  return relay_reply(*r);
}

awaitable<bool> Session::skip_bytes(std::uint64_t n) {
  const auto deadline = Clock::now() + cfg_.timeouts.data;
  while (n > 0) {
    if (in_begin_ == in_end_ && !co_await fill(deadline))  // the chunk's deadline, or timeouts.idle
      co_return co_await finish(read_end(read_failure_, deadline, End::data_timeout));
    const std::uint64_t take = std::min<std::uint64_t>(n, in_end_ - in_begin_);
    in_begin_ += static_cast<std::size_t>(take);
    n -= take;
  }
  co_return true;
}

awaitable<bool> Session::do_bdat(std::string_view args) {
  const auto bdat = smtp::parse_bdat(args);
  if (!bdat) {
    refuse(replies::bdat_syntax());
    co_return true;
  }
  std::optional<std::string> refuse;
  if (const auto no = smtp::check(facts(), smtp::Verb::bdat)) refuse = replies::refusal(*no);
  // A next-hop connection opened after the client's EHLO (a reconnect) may not offer CHUNKING:
  // its 5xx to BDAT would fail the message for good, for a trouble of ours.
  if (!refuse && !up_.caps().chunking) refuse = replies::upstream_no_chunking();
  const auto max_size = static_cast<std::uint64_t>(cfg_.limits.message_size);
  // Subtracted, not added: a chunk size near 2^64 would wrap the sum (bdat_bytes <= max_size).
  if (!refuse && bdat->size > max_size - tx_.bdat_bytes) {
    refuse = replies::size_exceeded();
    if (tx_.bdat_used) up_.close();  // a partly sent message must not be completed
    tx_.bdat_failed = true;
  }
  if (refuse) {
    if (!co_await skip_bytes(bdat->size)) co_return false;
    // The transaction ends here: abort it at the next hop too (RSET), or its MAIL stays open
    // and the client's next MAIL reaches it as a nested MAIL.
    if (bdat->last && tx_.active) handle_rset(/*reply=*/false);
    co_return co_await reply_now(std::move(*refuse));
  }
  phase_ = Phase::bdat;
  tx_.bdat_used = true;
  resize_input(conf::fixed::stream_buffer_bytes);
  tx_.bdat_bytes += bdat->size;

  // Inbound monitor mode: the X-BATV-Status line travels in front of the first chunk.
  std::string prefix;
  if (tx_.monitored && !tx_.header_sent) {
    prefix = monitor_header();
    tx_.header_sent = true;
  }
  std::string cmd = "BDAT " + std::to_string(bdat->size + prefix.size()) + (bdat->last ? " LAST\r\n" : "\r\n");
  bool ok = co_await up_.send(cmd + prefix);
  const auto deadline = Clock::now() + cfg_.timeouts.data;
  std::uint64_t left = bdat->size;
  while (left > 0) {
    if (in_begin_ == in_end_ && !co_await fill(deadline)) {
      up_.close();
      co_return co_await finish(read_end(read_failure_, deadline, End::data_timeout));
    }
    const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(left, in_end_ - in_begin_));
    if (ok) ok = co_await up_.send(std::string_view(in_.data() + in_begin_, take));
    in_begin_ += take;
    left -= take;
  }
  std::string reply;
  std::optional<smtp::Reply> r;
  if (ok) {
    awaiting_verdict_ = bdat->last;  // the last chunk's reply is the verdict on the message (see stop)
    r = co_await up_.read_reply(bdat->last);
    awaiting_verdict_ = false;
  }
  reply = verdict_reply(r, UpstreamStage::bdat);
  if (reply[0] != '2') tx_.bdat_failed = true;
  if (bdat->last) {
    count_message(reply, tx_.bdat_bytes);
    reset_transaction();
    resize_input(conf::fixed::command_buffer_bytes);
  }
  co_return co_await reply_now(std::move(reply));
}

}  // namespace batv::relay
