// roles: the factory of each no-hop role, in one table.
#include "relay/connection.hpp"

namespace batv::relay {

ConnectionFactory connection_factory(conf::Role role) {
  switch (role) {
    case conf::Role::outbound:
    case conf::Role::inbound:
      return nullptr;  // SMTP sessions: the server builds a Session
    case conf::Role::milter:
    case conf::Role::policy:
    case conf::Role::socketmap:
      return nullptr;  // filled in as each role lands
  }
  return nullptr;
}

}  // namespace batv::relay
