// tls: the OpenSSL contexts of one listener, built once per runtime (and again on reload).
//
// Server side: certificate chain and key from the listener's tls_cert/tls_key, TLS 1.2 minimum
// (tls_min_version), optional cipher list; the key is checked against the certificate at load
// time so a mismatch is a start-up error, not a failed handshake later. Client side (towards the
// next hop): TLS 1.2 minimum, peer verification against upstream_ca or the system store, used only
// in "verify" mode (opportunistic/required encrypt without authenticating, as RFC 7435 allows).
#pragma once

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>
#include <vector>

#include "conf/config.hpp"

namespace batv::relay {

struct ListenerTls {
  std::shared_ptr<boost::asio::ssl::context> server;  // null when the listener has no certificate
  std::shared_ptr<boost::asio::ssl::context> client;  // towards the next hop
};

// Builds the contexts of every listener; on failure appends errors naming the key and where it
// was set, and returns an empty vector.
std::vector<ListenerTls> build_tls(const conf::Config& cfg, std::vector<std::string>& errors);

}  // namespace batv::relay
