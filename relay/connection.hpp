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
  virtual asio::any_io_executor executor() = 0;
};

// The socket of a no-hop role: TCP or Unix-domain, as one type.
using LocalSocket = asio::generic::stream_protocol::socket;
using LocalAcceptor = asio::basic_socket_acceptor<asio::generic::stream_protocol>;

// What the server hands a no-hop connection at its start.
struct ConnContext {
  std::shared_ptr<const Runtime> runtime;  // snapshot taken at accept; kept to the end
  std::size_t listener = 0;                // index into runtime->config.listeners
  std::string id;                          // session id for logs (the SMTP sessions' scheme)
  std::string peer;                        // "ip:port", or "unix:/path" for a unix listener
};

using ConnectionFactory = std::shared_ptr<Connection> (*)(LocalSocket, ConnContext);

// The factory of a no-hop role (relay/roles.cpp); nullptr for the proxy roles.
ConnectionFactory connection_factory(conf::Role role);

}  // namespace batv::relay
