#include "relay/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace batv::relay {

namespace ssl = boost::asio::ssl;

namespace {

std::string openssl_error(const boost::system::error_code& ec) {
  std::string msg = ec.message();
  if (const unsigned long e = ERR_peek_last_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    msg = buf;
  }
  ERR_clear_error();
  return msg;
}

void base_options(ssl::context& ctx, conf::TlsVersion min) {
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3 |
                  ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 | ssl::context::single_dh_use);
  SSL_CTX_set_min_proto_version(ctx.native_handle(),
                                min == conf::TlsVersion::tls1_3 ? TLS1_3_VERSION : TLS1_2_VERSION);
}

}  // namespace

std::vector<ListenerTls> build_tls(const conf::Config& cfg, std::vector<std::string>& errors) {
  std::vector<ListenerTls> out;
  const std::size_t before = errors.size();
  for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
    const conf::Listener& l = cfg.listeners[i];
    const std::string where = (l.tls_where.empty() ? cfg.source : l.tls_where) + ": listener[" + std::to_string(i) + "]";
    ListenerTls t;
    if (!l.tls_cert.empty()) {
      auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
      base_options(*ctx, l.tls_min_version);
      boost::system::error_code ec;
      ctx->use_certificate_chain_file(l.tls_cert, ec);
      if (ec) errors.push_back(where + ".tls_cert: cannot use " + l.tls_cert + ": " + openssl_error(ec));
      if (!ec) {
        ctx->use_private_key_file(l.tls_key, ssl::context::pem, ec);
        if (ec) errors.push_back(where + ".tls_key: cannot use " + l.tls_key + ": " + openssl_error(ec));
      }
      if (!ec && SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
        errors.push_back(where + ".tls_key: " + l.tls_key + " does not match the certificate in " + l.tls_cert);
        ERR_clear_error();
      }
      if (!l.tls_ciphers.empty() && SSL_CTX_set_cipher_list(ctx->native_handle(), l.tls_ciphers.c_str()) != 1) {
        errors.push_back(where + ".tls_ciphers: OpenSSL accepts none of '" + l.tls_ciphers + "'");
        ERR_clear_error();
      }
      t.server = std::move(ctx);
    }
    if (l.upstream_tls != conf::UpstreamTls::none) {
      auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
      base_options(*ctx, conf::TlsVersion::tls1_2);
      boost::system::error_code ec;
      if (l.upstream_tls == conf::UpstreamTls::verify) {
        if (!l.upstream_ca.empty()) ctx->load_verify_file(l.upstream_ca, ec);
        else ctx->set_default_verify_paths(ec);
        if (ec)
          errors.push_back(where + ".upstream_ca: cannot load " +
                           (l.upstream_ca.empty() ? std::string("the system store") : l.upstream_ca) + ": " +
                           openssl_error(ec));
      }
      t.client = std::move(ctx);
    }
    out.push_back(std::move(t));
  }
  if (errors.size() != before) out.clear();
  return out;
}

}  // namespace batv::relay
