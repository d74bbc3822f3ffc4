// tests/session_fixture.hpp: the setup shared by the harnesses that run a real relay::Session in
// process over loopback sockets: the dialogue tier (tests/dialogue/runner.cpp) and the fuzz
// target fuzz_session (tests/fuzz/fuzz_session.cpp). One place builds the throwaway TLS
// certificate, the base Config of one proxy listener, the Runtime around it and the
// SessionContext of an accepted connection, so that the two harnesses cannot drift apart in how
// they stand a session up; each then sets what it varies (limits, modes, policy, timeouts).
//
// Header-only: the fuzz tree (clang, -DBATV_FUZZ=ON) builds fuzz_session from its own source
// and the relay libraries, with no test library to link. Never used by production code. Errors
// (OpenSSL, keyring) throw std::runtime_error naming what failed; nothing here logs or does I/O
// beyond OpenSSL's in-memory key generation.
#pragma once

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/ssl/context.hpp>

#include "conf/config.hpp"
#include "crypto/keyring.hpp"
#include "relay/io.hpp"
#include "relay/policy.hpp"
#include "relay/runtime.hpp"
#include "relay/session.hpp"
#include "relay/tls.hpp"

namespace batv::test {

// The relay's smtp.hostname in both harnesses, and the CN of the test certificate.
inline constexpr const char* kSessionHostname = "relay.test";

// A TLS server context with a fresh self-signed P-256 certificate for CN=kSessionHostname, valid
// for a day from now (a client that does not verify accepts it; the harnesses' clients do not).
inline std::shared_ptr<boost::asio::ssl::context> make_test_server_tls() {
  auto ctx = std::make_shared<boost::asio::ssl::context>(boost::asio::ssl::context::tls_server);
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  if (key == nullptr || x == nullptr) {
    X509_free(x);
    EVP_PKEY_free(key);
    throw std::runtime_error("session fixture: cannot make a test certificate");
  }
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 86400);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(kSessionHostname), -1,
                             -1, 0);
  X509_set_issuer_name(x, name);
  const bool ok = X509_sign(x, key, EVP_sha256()) != 0 && SSL_CTX_use_certificate(ctx->native_handle(), x) == 1 &&
                  SSL_CTX_use_PrivateKey(ctx->native_handle(), key) == 1;
  X509_free(x);
  EVP_PKEY_free(key);
  if (!ok) throw std::runtime_error("session fixture: cannot install the test certificate");
  return ctx;
}

// The Config of one proxy listener (`role`) on loopback: clients from 127.0.0.0/8 allowed, the
// next hop at 127.0.0.1:upstream_port without TLS, no client forwarding, connecting at MAIL
// (inbound) or at once (outbound) as the config's defaults do, plaintext AUTH allowed on loopback;
// `domains` signed and verified; smtp.hostname kSessionHostname. Every timeout is `timeout` (the
// harnesses wait for no relay timer unless a test asks for one: these only bound a relay bug),
// and upstream_idle is 0: each run is a world of its own, no next-hop connection passes from one
// session to the next (reuse is tested end to end, test_outbound).
inline conf::Config session_config(std::string source, conf::Role role, std::uint16_t upstream_port,
                                   std::vector<std::string> domains, std::chrono::seconds timeout) {
  conf::Config cfg;
  cfg.source = std::move(source);
  cfg.key_file = "/nonexistent";  // the keys come from session_runtime, never from a file
  cfg.domains.sign = domains;
  cfg.domains.verify = std::move(domains);
  conf::Listener l;
  l.role = role;
  l.listen = {"127.0.0.1", 10025, false, true};  // not bound: the harness accepts for the relay
  l.upstream = {"127.0.0.1", upstream_port, false, true};
  l.allow_clients = {*conf::parse_cidr("127.0.0.0/8")};
  l.forward_client = conf::ForwardClient::none;
  l.upstream_connect = role == conf::Role::inbound ? conf::UpstreamConnect::mail : conf::UpstreamConnect::connect;
  l.upstream_tls = conf::UpstreamTls::none;
  l.plaintext_auth_loopback = true;
  cfg.listeners.push_back(l);
  cfg.smtp.hostname = kSessionHostname;
  auto& t = cfg.timeouts;
  for (auto* x : {&t.idle, &t.command, &t.data, &t.session, &t.upstream_connect, &t.upstream_reply,
                  &t.upstream_data_reply})
    *x = timeout;
  t.upstream_idle = std::chrono::seconds(0);
  return cfg;
}

// The Runtime a Session of `cfg` runs with: the default ring built from `keys` (exactly one of
// them signing), the prvs parameters of cfg, `server_tls` (may be null: no STARTTLS) as listener
// 0's certificate, and `clock` (a default WallClock is the system time; a dialogue fixes it).
inline std::shared_ptr<const relay::Runtime> session_runtime(conf::Config cfg, std::vector<crypto::KeyMaterial> keys,
                                                             std::shared_ptr<boost::asio::ssl::context> server_tls,
                                                             relay::WallClock clock = {}) {
  std::string err;
  auto ring = crypto::Keyring::build(keys, err);
  if (!ring) throw std::runtime_error("session fixture: keyring: " + err);
  const crypto::PrvsParams params = relay::prvs_params(cfg);
  std::vector<relay::ListenerTls> tls(cfg.listeners.size());
  if (!tls.empty()) tls[0].server = std::move(server_tls);
  std::string hostname = cfg.smtp.hostname;
  relay::Runtime rt{std::move(cfg), std::move(*ring), params, std::move(hostname), std::move(tls), {}};
  rt.clock = std::move(clock);
  return std::make_shared<const relay::Runtime>(std::move(rt));
}

// The context of a Session on `accepted` (listener 0, admitted), as Server::start_session fills
// it for a direct client: its address as "ip:port" and as an IP, both endpoints of the socket
// (the IP as the socket gives it: the harnesses connect over IPv4 loopback, never v4-mapped).
// needs_auth and admission stay at their defaults for the caller to set.
inline relay::SessionContext session_context(std::shared_ptr<const relay::Runtime> rt, std::string id,
                                             const relay::tcp::socket& accepted) {
  relay::SessionContext ctx;
  const auto remote = accepted.remote_endpoint();
  ctx.runtime = std::move(rt);
  ctx.id = std::move(id);
  ctx.client = relay::to_string(remote);
  ctx.client_ip = remote.address().to_string();
  ctx.remote = remote;
  ctx.local = accepted.local_endpoint();
  return ctx;
}

}  // namespace batv::test
