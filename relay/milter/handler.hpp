// milter handler: one milter connection's state machine, without sockets. Decoded commands in,
// reply bytes out; the runtime (config, keyring) and the clock are injected.
//
// It signs like the outbound proxy: decide_sender (relay/policy.hpp) at the first recipient of a
// transaction that is ours ({client_addr} in the listener's allow_clients, {auth_authen} set, or
// {daemon_name} in originating_daemons); a later recipient whose decision differs gets 452 4.5.3
// (a separate transaction), and at end of message CHGFROM carries the tagged sender with the
// ESMTP arguments kept. With verify = true it also checks bounce recipients (decide_recipient):
// 550 at RCPT via SMFIR_REPLYCODE, tags stripped at end of message (DELRCPT + ADDRCPT_PAR keeping
// the arguments), and in monitor mode X-BATV-Status replaces any such header the sender wrote.
//
// Locally submitted mail (Postfix non_smtpd_milters): Postfix's cleanup(8) emulates connect,
// helo and mail "from localhost/127.0.0.1" and treats a milter's RCPT rejection as a server
// configuration error. We recognise that emulation by its macros ({client_name} "localhost",
// {client_addr} 127.0.0.1, no {auth_authen}) and then never reject nor tempfail: a recipient
// whose decision differs from the first is signed (or not) like the first. A real SMTP client
// on loopback named localhost is treated the same way, which only costs that split.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "relay/milter/codec.hpp"
#include "relay/policy.hpp"
#include "relay/runtime.hpp"

namespace batv::relay::milter {

class Handler {
 public:
  using Clock = std::function<std::int64_t()>;  // unix seconds
  Handler(std::shared_ptr<const Runtime> rt, std::size_t listener, std::string sid, Clock clock);

  enum class State { start, ready, closed };
  // Feeds one framed packet; appends reply packets to `out`. After an error or Quit, state() is
  // closed and `error()` says why (empty for a Quit).
  void on_packet(const Packet& p, std::string& out);
  // The stream could not be framed (oversized, zero length): tempfail and close.
  void on_frame_error(Error e, std::string& out);

  State state() const { return state_; }
  const std::string& error() const { return error_; }
  bool in_request() const { return in_message_; }
  std::uint64_t messages() const { return messages_; }
  std::uint64_t signed_count() const { return signed_; }
  std::uint64_t refused() const { return refused_; }

 private:
  struct Rcpt {
    std::string original;   // as the MTA sent it, with <>
    std::string upstream;   // untagged form
    std::string args;       // ESMTP arguments, space-separated
  };
  void negotiate(const OptNeg& o, std::string& out);
  void on_mail(const Envelope& e, std::string& out);
  void on_rcpt(const Envelope& e, std::string& out);
  void on_header(const Header& h, std::string& out);
  void on_eom(std::string& out);
  void fail(std::string why, std::string& out);
  void tempfail(std::string& out);
  void reset_message();
  std::string macro(std::string_view name) const;
  bool ours() const;
  bool non_smtpd() const;
  bool needs_headers() const;

  std::shared_ptr<const Runtime> rt_;
  const conf::Listener& listener_;
  std::string sid_;
  Clock clock_;
  State state_ = State::start;
  std::string error_;
  std::uint32_t actions_ = 0;
  std::uint32_t protocol_ = 0;
  std::vector<std::pair<std::string, std::string>> macros_;

  // per message
  bool in_message_ = false;
  std::string sender_;          // without <>
  std::string mail_args_;
  bool bounce_ = false;
  bool is_ours_ = false;
  bool local_ = false;
  bool decided_ = false;
  SenderDecision decision_;
  std::size_t rcpts_ = 0;
  std::vector<Rcpt> strip_;
  bool monitor_ = false;
  crypto::Verdict monitor_verdict_ = crypto::Verdict::valid;
  std::uint32_t status_headers_ = 0;  // X-BATV-Status headers the sender wrote

  std::uint64_t messages_ = 0, signed_ = 0, refused_ = 0;
};

// The macros requested per stage (SETSYMLIST), and the header name of monitor mode.
inline constexpr std::string_view kMailMacros = "{client_addr} {client_name} {auth_authen} {daemon_name} i";
inline constexpr std::string_view kEomMacros = "i";
inline constexpr std::string_view kStatusHeader = "X-BATV-Status";

}  // namespace batv::relay::milter
