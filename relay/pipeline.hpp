// pipeline: the commands a session owes the next hop and the replies it owes the client, in the
// client's order (RFC 2920). An entry is either a reply of the session's own, kept in order, or
// next-hop commands with a handler that turns the next hop's replies into the client's reply (an
// Answer: the text, and whether it counts toward limits.errors_per_session). flush() sends the
// commands (in one write when the next hop offers PIPELINING; else one by one, skipping the rest
// of an entry after a non-2xx when it asks for that), reads the replies in order and returns what
// the client gets. It never writes to the client; the session applies the effects (the handlers
// are the session's) and the counting. Bounded by conf::fixed::max_pipelined_commands (the session
// flushes at that many entries).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "relay/io.hpp"
#include "relay/smtp/reply.hpp"
#include "relay/upstream.hpp"

namespace batv::relay {

// One reply to the client. Every 4xx and 5xx counts toward limits.errors_per_session (Postfix
// smtpd_hard_error_limit), the next hop's relayed refusals too, except the replies that have a
// limit of their own: own_limit (a recipient refused for its BATV tag counts toward
// limits.invalid_recipients_per_session; 452 past limits.recipients_per_message, RFC 5321
// 4.5.3.1.10, and 452 for a recipient that needs a separate transaction tell the client to go on).
struct Answer {
  std::string text;  // wire form, CRLF included; empty = nothing for the client
  bool own_limit = false;
  [[nodiscard]] static bool counted(std::string_view text, bool own_limit = false) {
    return !own_limit && !text.empty() && (text[0] == '4' || text[0] == '5');
  }
  [[nodiscard]] bool counts() const { return counted(text, own_limit); }
};

// The client's reply when the next hop went away or misbehaved before answering (451, by the
// kind of failure).
std::string next_hop_failure_reply(const Upstream& up);

class Pipeline {
 public:
  using Handler = std::function<Answer(std::vector<smtp::Reply>&)>;

  // A reply of the session's own, kept in order behind the next-hop commands queued before it.
  void local(std::string reply);
  // Commands (CRLF included) for the next hop; `handler` gets their replies (fewer when an
  // entry with stop_on_failure stopped early without PIPELINING).
  void relay(std::vector<std::string> commands, Handler handler, bool stop_on_failure = false);

  [[nodiscard]] bool empty() const { return entries_.empty(); }
  [[nodiscard]] std::size_t size() const { return entries_.size(); }
  [[nodiscard]] bool needs_next_hop() const;

  struct Flushed {
    std::string text;  // for the client, in order
    int errors = 0;    // Answers that count (Answer::counts) among the relayed ones
    bool lost = false; // the next hop went away: its entries got next_hop_failure_reply
  };
  // Sends and reads what is queued, then forgets it. `up_ok`: the next-hop connection is there
  // (the session opened it when needs_next_hop()); false fails every next-hop entry.
  awaitable<Flushed> flush(Upstream& up, bool up_ok);

 private:
  struct Entry {
    std::string local;
    std::vector<std::string> commands;
    bool stop_on_failure = false;
    Handler handler;
  };
  std::vector<Entry> entries_;
};

}  // namespace batv::relay
