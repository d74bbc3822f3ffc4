// connection: what the server knows of one accepted connection, whatever its role.
//
// The SMTP proxy roles (outbound, inbound) run a Session (relay/session.hpp); the no-hop roles
// answer an MTA in place: the milter (relay/milter/connection.hpp), the Postfix policy service
// (relay/postfix/policy_service.hpp) and the socketmap table (relay/postfix/socketmap.hpp). The
// server keeps a weak reference to each for shutdown, counts it against limits.sessions, and
// never looks inside. A connection owns its metrics (session_started / session_ended with its
// role) and its one session_start / session_end log pair.
#pragma once

#include <boost/asio/generic/stream_protocol.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "conf/config.hpp"
#include "relay/io.hpp"
#include "relay/runtime.hpp"

namespace batv::relay {

class Connection {
 public:
  virtual ~Connection() = default;
  // The whole connection, to its end. Never throws.
  virtual awaitable<void> run() = 0;
  // Shutdown: end at once when idle between requests, let a request in progress finish (or, for
  // an SMTP session, answer 421 4.3.2). Thread-safe: posts to executor().
  virtual void stop() = 0;
  // True for connections the MTA keeps open between requests (policy, socketmap): nothing is in
  // flight between two requests, so shutdown stops them when it begins instead of after
  // timeouts.shutdown_grace (Postfix would hold them for up to 1000 s). SMTP sessions and milter
  // connections (one per SMTP session of the MTA) get the grace.
  [[nodiscard]] virtual bool stops_when_shutdown_begins() const { return false; }
  virtual asio::any_io_executor executor() = 0;
};

// The socket of a no-hop role: TCP or Unix-domain, as one type.
using LocalSocket = asio::generic::stream_protocol::socket;
using LocalAcceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

// What the server hands a no-hop connection at its start.
struct ConnContext {
  std::shared_ptr<const Runtime> runtime;  // snapshot taken at accept; kept to the end
  // The runtime in force now (after any reload), for connections that live for many requests:
  // the policy and socketmap connections of a Postfix stay open for up to 1000 s
  // (smtpd_policy_service_max_ttl), and a key rotated in meanwhile must verify at once (the
  // milter signs with it from the reload on). Empty: keep `runtime`.
  std::function<std::shared_ptr<const Runtime>()> current;
  std::size_t listener = 0;                // index into runtime->config.listeners
  std::string id;                          // session id for logs (the SMTP sessions' scheme)
  std::string peer;                        // "ip:port", or "unix:/path" for a unix listener
};

using ConnectionFactory = std::shared_ptr<Connection> (*)(LocalSocket, ConnContext);

// The factory of a no-hop role (relay/roles.cpp); nullptr for the proxy roles.
ConnectionFactory connection_factory(conf::Role role);

}  // namespace batv::relay
