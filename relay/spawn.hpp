// spawn: the completion handler for the relay's own coroutines, in place of asio::detached.
//
//   asio::co_spawn(ex, accept_loop(l), log_exceptions("accept_loop"));
//
// With asio::detached an exception that escapes a coroutine vanishes: an accept loop, the signal
// loop or a session's bookkeeping would stop without a word. This handler logs it as
//   level=error event=internal_error coroutine=NAME error=WHAT
// (WHAT is what() of a std::exception, "unknown exception" otherwise) and returns: the coroutine
// is over either way, and the rest of the process goes on. It takes no lock, allocates only for
// the log line, and never throws. `name` must outlive the handler (pass a string literal).
#pragma once

#include <exception>
#include <string_view>

#include "relay/log.hpp"

namespace batv::relay {

struct LogExceptions {
  std::string_view coroutine;
  void operator()(std::exception_ptr e) const noexcept {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      log(Level::error, "internal_error").kv("coroutine", coroutine).kv("error", x.what());
    } catch (...) {
      log(Level::error, "internal_error").kv("coroutine", coroutine).kv("error", "unknown exception");
    }
  }
};

// The handler for co_spawn of an awaitable<void>.
constexpr LogExceptions log_exceptions(std::string_view coroutine) { return LogExceptions{coroutine}; }

}  // namespace batv::relay
