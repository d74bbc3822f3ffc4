// roles: the factory of each no-hop role, in one table.
#include "relay/connection.hpp"
#include "relay/milter/connection.hpp"
#include "relay/postfix/policy_service.hpp"
#include "relay/postfix/socketmap.hpp"

namespace batv::relay {

ConnectionFactory connection_factory(conf::Role role) {
  switch (role) {
    case conf::Role::outbound:
    case conf::Role::inbound:
      return nullptr;  // SMTP sessions: the server builds a Session
    case conf::Role::milter: return make_milter_connection;
    case conf::Role::policy: return postfix::make_policy_connection;
    case conf::Role::socketmap: return postfix::make_socketmap_connection;
  }
  return nullptr;
}

}  // namespace batv::relay
