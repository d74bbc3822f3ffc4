// milter connection: the Asio side of role = "milter" (relay/milter/handler.hpp decides).
#pragma once

#include <memory>

#include "relay/connection.hpp"

namespace batv::relay {

std::shared_ptr<Connection> make_milter_connection(LocalSocket socket, ConnContext ctx);

}  // namespace batv::relay
