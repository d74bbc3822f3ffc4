// config: loads the relay's TOML configuration into one immutable, fully validated value.
//
// Contract
// - Input: a TOML file (load_config_file) or text (load_config_string). The only I/O is reading
//   that one file. The key file is NOT opened: its path is stored, a relative path resolved
//   against the config file's directory. No network I/O, no DNS (upstream hostnames are checked
//   for syntax only).
// - Output: LoadResult. `config` is set iff `errors` is empty. Every problem in the file is
//   reported (the loader never stops at the first), sorted by position, each with the file,
//   line:column (1-based, from toml++) and the dotted key path: "listener[1].listen",
//   "limits.line_length", "domains.sign[0]". Array indexes are 0-based.
// - Rejected: TOML syntax errors; unknown keys anywhere (with a "did you mean" for typos within
//   edit distance 2 or abbreviations of a known name); wrong value types; numbers outside the
//   conf/limits.hpp ranges; unknown enum values; bad CIDR, host:port or domain syntax; missing
//   required keys (reported at the enclosing table, 1:1 for the top level); duplicate or
//   overlapping listen addresses (metrics.listen included); an upstream equal to its own listen
//   address; limits.sessions_per_client above limits.sessions; a [[domain_keys]] domain that is
//   in neither domains.sign nor domains.verify, listed in two entries (the message names the
//   other entry's line), or a key file shared by two rings.
// - Values echoed in messages are cut at 100 characters and non-printable bytes shown as \xNN.
// - Immutability: Config is a plain value; the relay holds it as `const Config` (or
//   shared_ptr<const Config>) and swaps whole values on reload.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "conf/limits.hpp"
#include "conf/net.hpp"

namespace batv::conf {

// outbound/inbound: SMTP proxy roles (sign MAIL FROM / check bounces, a next hop behind them).
// milter/policy/socketmap: the no-hop roles that answer a Postfix (or Sendmail) in place.
enum class Role { outbound, inbound, milter, policy, socketmap };
// True for the proxy roles (an SMTP listener with a next hop).
constexpr bool is_proxy(Role r) { return r == Role::outbound || r == Role::inbound; }
enum class InboundMode { enforce, monitor, off };
enum class LogLevel { debug, info, warning, error };
enum class LogTarget { stderr_, syslog };
enum class SyslogFacility { mail, daemon, local0, local1, local2, local3, local4, local5, local6, local7 };
enum class HashSetting { exact, lowercase_local };             // mirrors crypto::HashMode
enum class VrfyReply { cannot_verify, disabled };              // "252" | "502"
enum class ForwardClient { none, xclient, proxy_v1, proxy_v2 };  // "none" | "xclient" | "proxy-v1" | "proxy-v2"
enum class BadSignatureAction { strip, keep, reject };          // non-bounce mail to a bad tag
enum class UpstreamTls { none, opportunistic, required, verify };
enum class TlsVersion { tls1_2, tls1_3 };                       // "1.2" | "1.3"
enum class UpstreamConnect { mail, connect };                   // "mail" | "connect"

// The spelling used in the config file: "outbound", "lowercase-local", "stderr", "local3", ...
std::string_view to_string(Role v);
std::string_view to_string(InboundMode v);
std::string_view to_string(LogLevel v);
std::string_view to_string(LogTarget v);
std::string_view to_string(SyslogFacility v);
std::string_view to_string(HashSetting v);
std::string_view to_string(VrfyReply v);
std::string_view to_string(ForwardClient v);
std::string_view to_string(BadSignatureAction v);
std::string_view to_string(UpstreamTls v);
std::string_view to_string(UpstreamConnect v);
std::string_view to_string(TlsVersion v);

// An exemption entry: "user@example.com" (that address) or "@example.com" (the whole domain).
// The domain is lowercased; the local part is kept as written and compared byte for byte,
// matching the spec's rule that local parts are never case-folded. Subdomains do not match.
struct AddressPattern {
  std::string local_part;  // empty = any local part in `domain`
  std::string domain;      // lowercase
  // `address` is "local@domain" (split at the last '@'); domain compared case-insensitively.
  bool matches(std::string_view address) const;
  std::string to_string() const;
  friend bool operator==(const AddressPattern&, const AddressPattern&) = default;
};

struct Listener {
  Role role = Role::outbound;
  HostPort listen;                  // IP literal; port 0 = kernel-chosen (tests); empty when unix_path is set
  // listen = "unix:/path" (no-hop roles only): a Unix-domain stream socket at this absolute path,
  // created at start-up (a stale socket file is replaced, any other file refused), given
  // socket_mode and, when set, socket_owner / socket_group, and removed at shutdown.
  std::string unix_path;
  std::uint32_t socket_mode = 0660;
  std::string socket_owner, socket_group;
  HostPort upstream;                // hostname or IP literal; port 1..65535 (proxy roles only)
  // Proxy roles: who may connect (default: outbound = loopback only, inbound = everyone).
  // milter: the SMTP clients ({client_addr} macro) whose mail is ours to sign (default loopback).
  std::vector<Cidr> allow_clients;
  // Proxy roles: load balancers (HAProxy send-proxy / send-proxy-v2) whose connections must
  // start with a PROXY protocol v1 or v2 header; the client it names is the client for
  // allow_clients, the per-client limits, accept_untagged_from, the logs and forward_client.
  // Peers outside it are never parsed for one. Default empty.
  std::vector<Cidr> accept_proxy_from;
  // No-hop roles on TCP: who may connect to the socket (default loopback). The MTA asking the
  // questions runs on this host in the usual set-up; a unix socket's file mode does this job.
  std::vector<Cidr> allow_peers;
  // milter: {daemon_name} values whose mail is ours (Postfix's master.cf convention sets
  // milter_macro_daemon_name=ORIGINATING on submission and smtps), and whether the milter also
  // verifies tagged recipients (for MTAs whose recipients reach the milter tagged).
  std::vector<std::string> originating_daemons{"ORIGINATING"};
  bool milter_verify = false;
  // The configured listen address as written: "127.0.0.1:10025" or "unix:/run/batv/milter.sock".
  std::string listen_text() const { return unix_path.empty() ? listen.to_string() : "unix:" + unix_path; }
  // How the next hop learns the real client (Postfix XCLIENT, HAProxy PROXY v1/v2).
  // Default: inbound = xclient (when the next hop offers it), outbound = none.
  ForwardClient forward_client = ForwardClient::none;
  // When a session opens its next-hop connection (inbound only): at the client's first MAIL, as
  // Postfix's smtpd_proxy does (default), or at connect. With "mail" the greeting and EHLO are
  // answered from the next hop's capabilities as last learned (relay/nexthop_caps.hpp).
  UpstreamConnect upstream_connect = UpstreamConnect::connect;
  // TLS towards clients (RFC 3207 STARTTLS, or implicit TLS). Paths resolved against the config
  // file's directory; the files are read when the relay builds its TLS context, not here.
  std::string tls_cert, tls_key;
  std::string tls_where;            // "file:line:col" of tls_cert, for errors found later
  bool require_tls = false;         // MAIL before STARTTLS -> 530 5.7.0
  bool implicit_tls = false;        // handshake at connect (port 465 style)
  TlsVersion tls_min_version = TlsVersion::tls1_2;
  std::string tls_ciphers;          // OpenSSL cipher list for TLS <= 1.2; empty = default
  // TLS towards the next hop.
  UpstreamTls upstream_tls = UpstreamTls::opportunistic;
  std::string upstream_ca;          // PEM CA file for verify; empty = the system store
  std::string upstream_tls_name;    // expected name for verify; empty = the upstream host
  // AUTH pass-through (outbound): offered when the next hop offers AUTH and the client session
  // is encrypted, or is on loopback with plaintext_auth_loopback. allow_authenticated admits
  // clients outside allow_clients, who must then authenticate before MAIL.
  bool allow_authenticated = false;
  bool plaintext_auth_loopback = false;
};

struct Domains {
  std::vector<std::string> sign;    // lowercase, at least one
  std::vector<std::string> verify;  // lowercase; defaults to `sign`
};

// [[domain_keys]]: a keyring of its own for some domains (a hosting customer's), beside the
// default key_file. Signing and verification of an address in `domains` use this entry's key file
// and nothing else; every other domain uses key_file. Domains are compared exactly (any case), as
// [domains] compares them: a subdomain is not matched.
struct DomainKeys {
  std::vector<std::string> domains;  // lowercase, at least one, each in domains.sign or domains.verify
  std::string key_file;              // resolved like key_file; never opened by conf
  std::string where;                 // "file:line:col" of the entry, for errors found reading the file
};

struct Signing {
  std::vector<AddressPattern> exempt_senders;
  std::vector<AddressPattern> exempt_destinations;
};

struct Inbound {
  InboundMode mode = InboundMode::enforce;
  // Lowercased; compare lowercased local parts. Always contains "postmaster" (RFC 5321 4.5.1
  // requires it to work), even when the file leaves it out.
  std::vector<std::string> exempt_local_parts{"postmaster", "abuse"};
  std::vector<Cidr> accept_untagged_from;
  bool mailer_daemon_is_bounce = false;
  // Mail with a normal sender to one of our tagged addresses whose tag is bad_signature or
  // unknown_key: strip the tag and deliver (default, logged), keep it, or reject at RCPT.
  BadSignatureAction bad_signature = BadSignatureAction::strip;
  // [inbound.domain_mode]: per-domain override of `mode` (domains from domains.verify, lowercase).
  std::vector<std::pair<std::string, InboundMode>> domain_mode;
  InboundMode mode_for(std::string_view domain) const;
};

struct Logging {
  LogLevel level = LogLevel::info;
  LogTarget target = LogTarget::stderr_;
  SyslogFacility syslog_facility = SyslogFacility::mail;
};

struct Smtp {
  // Our name in the greeting, in EHLO replies and in the EHLO we send upstream. Empty = the
  // system host name (the relay fills it in; conf does no lookups).
  std::string hostname;
  // VRFY and EXPN: 252 ("cannot verify, will attempt delivery", RFC 5321 3.5.3) or 502 (disabled).
  VrfyReply vrfy = VrfyReply::cannot_verify;
};
struct Process {
  // After binding listeners and reading keys and certificates as root, switch to this user (and
  // group: default the user's primary group). Empty = stay who we are.
  std::string user, group;
  // Still root after start-up (no user set, started as root): refused unless this is true.
  bool run_as_root = false;
};
struct Metrics {
  std::optional<HostPort> listen;   // absent = metrics off; IP literal only
};

struct Config {
  std::string source;               // the config file name, as given (for logs)
  std::string key_file;             // resolved path; never opened by conf
  int lifetime_days = static_cast<int>(limit("", "lifetime_days").def);
  HashSetting hash = HashSetting::exact;
  int threads = static_cast<int>(limit("", "threads").def);  // 0 = one per core (relay decides)
  Domains domains;
  // TOML [[domain_keys]], in file order: no domain in two entries, no key file used twice (the
  // default key_file included), at most fixed::max_domain_keys entries.
  std::vector<DomainKeys> domain_keys;
  std::vector<Listener> listeners;  // TOML [[listener]]; at least one
  Signing signing;
  Inbound inbound;
  Limits limits;
  Timeouts timeouts;
  Logging logging;
  Smtp smtp;
  Process process;
  Metrics metrics;
};

struct ConfigError {
  std::string file;
  int line = 0;      // 0 = unknown (e.g. the file could not be read)
  int column = 0;
  std::string key;   // dotted path; empty for syntax and file errors
  std::string message;
};

// "FILE:LINE:COL: KEY: MESSAGE"; "FILE: KEY: MESSAGE" when the line is unknown; the "KEY: " part
// is left out when the key is empty.
std::string format(const ConfigError& e);

// Printable ASCII kept, every other byte shown as \xNN, nothing cut: for text that quotes the file
// without our own escaping (the TOML parser's error descriptions echo the offending character).
std::string escape_nonprintable(std::string_view text);

struct LoadResult {
  std::optional<Config> config;     // set iff errors is empty
  std::vector<ConfigError> errors;
};

// Every key the loader accepts, in the order of the documentation (top level, then each table),
// with its default as it would be written in the file (`7`, `"exact"`, `["postmaster", "abuse"]`)
// or, where no literal value is the default, a phrase in parentheses: `(required)`, `(none)`,
// `(domains.sign)`. Keys of [[listener]] tables are "listener.KEY" (of [[domain_keys]],
// "domain_keys.KEY"); [inbound.domain_mode], whose
// keys are domains, is the single entry "inbound.domain_mode". Built from the same key lists the
// loader checks files against and from kLimits, so it cannot drift from what the loader accepts;
// a key without a documented default has an empty `default_value` (a unit test forbids that).
// The manual page batv-relay.toml(5) is checked against this list (tests/unit/manpage_test.cpp).
struct KeyInfo {
  std::string key;            // dotted path: "limits.line_length", "listener.role"
  std::string default_value;  // "2048", "\"exact\"", "(required)"
  const Limit* limit = nullptr;  // its kLimits row, for numeric keys
};
std::vector<KeyInfo> config_keys();

// Reads at most fixed::max_config_file_bytes from `path`; relative key_file paths are resolved
// against the directory of `path` made absolute.
LoadResult load_config_file(const std::string& path);

// `name_for_errors` becomes ConfigError::file and Config::source; a relative key_file is joined
// to `base_dir` (left relative when base_dir is empty).
LoadResult load_config_string(std::string_view toml_text, const std::string& name_for_errors,
                              const std::string& base_dir);

}  // namespace batv::conf
