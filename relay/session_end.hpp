// session_end: how a client connection ended, one value per way, shared by every role (the SMTP
// sessions, the milter, the policy and socketmap connections). Its name is the reason= of the
// connection's one event=session_end log line and the reason label of batv_session_end_total
// (relay/metrics.hpp counts by the value itself, so a new value is a new series, never "other").
// Pure: no I/O.
#pragma once

#include <cstddef>
#include <string_view>

namespace batv::relay {

enum class SessionEnd {
  none,                         // not set (a bug): logged as "none", counted as "other"
  quit,                         // QUIT answered; a no-hop peer closed between requests
  client_closed,                // the client went away (or stopped reading: a write failed)
  idle_timeout,                 // timeouts.idle (no-hop roles: their idle timeouts)
  data_timeout,                 // timeouts.data (milter: the rest of a packet)
  too_many_errors,              // limits.errors_per_session
  too_many_commands,            // limits.commands_before_mail
  too_many_invalid_recipients,  // limits.invalid_recipients_per_session
  session_timeout,              // timeouts.session
  tls_failed,                   // the client's TLS handshake failed
  upstream_lost,                // the next hop went away mid-session
  upstream_unavailable,         // the next hop could not be reached at connect
  shutdown,                     // SIGTERM: stopped
  access_denied,                // the client is outside allow_clients
  too_many_sessions,            // limits.sessions or limits.sessions_per_client
  io_error,                     // an unexpected error (an exception, a failed read)
  protocol_error,               // no-hop roles: a request that does not parse
  request_too_large,            // no-hop roles: a request over its size limit
};
// One more than the last value. A value appended without raising it fails the static_assert below
// (and -Wswitch makes to_string name it).
inline constexpr std::size_t session_end_count = static_cast<std::size_t>(SessionEnd::request_too_large) + 1;

constexpr std::string_view to_string(SessionEnd e) {
  switch (e) {
    case SessionEnd::none: return "none";
    case SessionEnd::quit: return "quit";
    case SessionEnd::client_closed: return "client_closed";
    case SessionEnd::idle_timeout: return "idle_timeout";
    case SessionEnd::data_timeout: return "data_timeout";
    case SessionEnd::too_many_errors: return "too_many_errors";
    case SessionEnd::too_many_commands: return "too_many_commands";
    case SessionEnd::too_many_invalid_recipients: return "too_many_invalid_recipients";
    case SessionEnd::session_timeout: return "session_timeout";
    case SessionEnd::tls_failed: return "tls_failed";
    case SessionEnd::upstream_lost: return "upstream_lost";
    case SessionEnd::upstream_unavailable: return "upstream_unavailable";
    case SessionEnd::shutdown: return "shutdown";
    case SessionEnd::access_denied: return "access_denied";
    case SessionEnd::too_many_sessions: return "too_many_sessions";
    case SessionEnd::io_error: return "io_error";
    case SessionEnd::protocol_error: return "protocol_error";
    case SessionEnd::request_too_large: return "request_too_large";
  }
  return "?";
}
static_assert(to_string(static_cast<SessionEnd>(session_end_count)) == "?" &&
                  to_string(static_cast<SessionEnd>(session_end_count - 1)) != "?",
              "session_end_count must be one more than the last SessionEnd");

}  // namespace batv::relay
