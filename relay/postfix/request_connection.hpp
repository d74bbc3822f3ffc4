// request_connection: the connection loop the policy service and the socketmap share (internal to
// relay/postfix). Both protocols are "request in, answer out, many per connection, in order"; they
// differ only in how a request is framed and answered, which a subclass supplies in process().
//
// The loop: read what the peer sends into a bounded buffer; hand every whole request at its front
// to process(), which appends their answers to one output buffer; write that at once (pipelined
// requests cost one write per read, answers stay in request order); repeat. process() may ask to
// close (oversized or malformed request): the answers before it are written, the bad request gets
// none, and the connection closes, so the MTA applies its own default action, never an accept.
//
// Timeouts (the watchdog of relay/io.hpp, without its TCP-only Stream): every read and write has a
// deadline of min(now + idle, first byte of the request in progress + request); between requests
// only the idle part applies. One timer per connection wakes at most every min(idle, request)
// seconds and never needs cancelling: deadlines only move later (see arm()).
// Shutdown: stop() cancels a read at once (between requests, or a request not yet whole); a write
// in progress finishes, then the connection ends with reason "shutdown".
// Logs: session_start and session_end (role, sid, peer, reason, requests; error detail when
// process() gave one); metrics session_started / session_ended with the role.
#pragma once

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "relay/connection.hpp"
#include "relay/session_end.hpp"

namespace batv::relay::postfix {

class RequestConnection : public Connection, public std::enable_shared_from_this<RequestConnection> {
 public:
  struct Options {
    conf::Role role = conf::Role::policy;
    Clock::duration idle{};
    Clock::duration request{};
    std::size_t max_request = 0;  // the largest whole request process() can be given
  };
  RequestConnection(LocalSocket sock, ConnContext ctx, Options opt);
  ~RequestConnection() override;

  awaitable<void> run() override;
  void stop() override;
  [[nodiscard]] bool stops_when_shutdown_begins() const override { return true; }
  asio::any_io_executor executor() override { return sock_.get_executor(); }

 protected:
  struct Step {
    std::size_t consumed = 0;   // bytes of whole requests taken from the front
    bool close = false;         // end after writing `out`
    SessionEnd reason = SessionEnd::protocol_error;  // when close: request_too_large or protocol_error
    std::string detail;         // when close: what was wrong, for session_end
  };
  // Takes the whole requests at the front of `in`, appends their answers to `out`. `in` starts at
  // a request boundary and holds at most max_request + a read's worth of bytes.
  virtual Step process(std::string_view in, std::string& out) = 0;

  const ConnContext& context() const { return ctx_; }
  // The runtime for the requests being processed: the current one (ConnContext::current), taken
  // again for each batch of requests, so that a reload (a rotated key) applies to open
  // connections too. Timeouts and limits stay those of the snapshot taken at accept.
  const Runtime& runtime() const { return *rt_; }
  std::uint64_t requests_ = 0;  // answered, for session_end

 private:
  awaitable<void> serve();
  awaitable<void> watchdog();
  void arm(Clock::time_point deadline);
  void note_timeout();

  LocalSocket sock_;
  ConnContext ctx_;
  std::shared_ptr<const Runtime> rt_;
  Options opt_;
  asio::steady_timer timer_;
  Clock::time_point deadline_{};
  bool timed_out_ = false;
  bool done_ = false;
  bool writing_ = false;
  bool stop_requested_ = false;
  std::vector<char> buf_;
  std::size_t head_ = 0, tail_ = 0;  // pending bytes are buf_[head_, tail_)
  std::string out_;
  SessionEnd end_ = SessionEnd::none;
  std::string detail_;
};

}  // namespace batv::relay::postfix
