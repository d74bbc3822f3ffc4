// limits: the ONE place for every numeric bound of batv-relay (Postfix mail_params.h style).
//
// Contract: a constexpr table, one row per configurable number, with default, minimum, maximum,
// unit and a note on where the number comes from. The config loader (conf/config.cpp) validates
// [limits], [timeouts] and the two numeric top-level keys against this table and nothing else;
// conf/batv-relay.example.toml lists every row with its default (a unit test checks both).
// `Limits` and `Timeouts` below are filled from the table's defaults, so a default-constructed
// value is the documented default configuration. Fixed (non-configurable) bounds live in
// `batv::conf::fixed` at the end. No I/O, no allocation: include it anywhere.
//
// Timeout minimums are 1 second so that tests can exercise expiry quickly; production values
// should respect the RFC 5321 4.5.3.2 figures cited in each row.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string_view>

namespace batv::conf {

struct Limit {
  std::string_view section;  // TOML table the key lives in; "" = top level
  std::string_view key;
  std::int64_t def, min, max;
  std::string_view unit;     // for messages: "octets", "seconds", ...
  std::string_view why;
};

inline constexpr std::array kLimits = std::to_array<Limit>({
    // --- top level ---------------------------------------------------------------------------
    {"", "lifetime_days", 7, 1, 30, "days",
     "How long a tag stays valid. MTAs give up on a message after 4-5 days (RFC 5321 4.5.4.1), "
     "so 7 lets every bounce of a signed message come back. The DDD field wraps at 1000 days "
     "(draft-levine-smtp-batv-01); 30 keeps a leaked tag's replay window short."},
    {"", "threads", 0, 0, 256, "threads",
     "I/O threads; 0 = one per CPU core. Sessions are coroutines, threads only add CPU "
     "parallelism, so 256 is a sanity cap."},

    // --- [limits] ----------------------------------------------------------------------------
    {"limits", "line_length", 2048, 512, 65536, "octets",
     "Longest client command line, CRLF included. RFC 5321 4.5.3.1.4: at least 512; ESMTP "
     "parameters and extensions raise it (RFC 4954 4: AUTH lines up to 12288). 2048 = Postfix "
     "line_length_limit. Longer lines are skipped to the next LF and answered 500."},
    {"limits", "reply_line_length", 2048, 512, 65536, "octets",
     "Longest reply line read from the next hop, CRLF included. RFC 5321 4.5.3.1.5: at least "
     "512. The next hop is untrusted: a longer line fails the command with a generic 451."},
    {"limits", "reply_lines", 100, 10, 1000, "lines",
     "Most lines in one multi-line reply from the next hop. RFC 5321 4.2.1 sets no bound; an "
     "EHLO reply listing every common extension is about 20 lines. Bounds memory per reply."},
    {"limits", "recipients_per_message", 1000, 100, 100000, "recipients",
     "RCPTs accepted per transaction. RFC 5321 4.5.3.1.8: a server MUST accept at least 100; "
     "1000 = Postfix smtpd_recipient_limit. Extra RCPTs get 452 (RFC 5321 4.5.3.1.10)."},
    {"limits", "message_size", 67108864, 65536, 2147483648, "bytes",
     "Largest message body (advertised as EHLO SIZE, RFC 1870). RFC 5321 4.5.3.1.7: at least "
     "64K octets. 64 MiB default sits above common next-hop limits (Postfix 10 MB, large "
     "providers 25-50 MB) so the next hop decides. Oversize: read to the dot, then 552."},
    {"limits", "errors_per_session", 20, 1, 1000, "errors",
     "Error replies (4xx/5xx to the client, the next hop's refusals relayed to it included) before "
     "the session is closed with 421. Not counted: recipients refused for their tag (their own "
     "limit, invalid_recipients_per_session) and 452 for recipients past recipients_per_message "
     "or needing a separate transaction (RFC 5321 4.5.3.1.10: the client goes on). "
     "20 = Postfix smtpd_hard_error_limit."},
    {"limits", "sessions", 500, 1, 100000, "sessions",
     "Concurrent sessions over all listeners; each also holds one next-hop connection. Excess "
     "connections get 421 and are closed. Postfix default_process_limit is 100 processes; "
     "coroutines are cheaper, so 500."},
    {"limits", "sessions_per_client", 50, 1, 100000, "sessions",
     "Concurrent sessions from one client IP address; must not exceed limits.sessions. "
     "50 = Postfix smtpd_client_connection_count_limit."},
    {"limits", "commands_before_mail", 100, 10, 10000, "commands",
     "Commands other than MAIL, RCPT, DATA, BDAT and QUIT (EHLO, NOOP, RSET, VRFY, ...) before "
     "421, inside a transaction too (a MAIL/RSET loop); the count restarts when a message is "
     "delivered. 100 = Postfix smtpd_junk_command_limit."},
    {"limits", "invalid_recipients_per_session", 50, 1, 100000, "recipients",
     "Rejected RCPTs (bad, expired or missing tag) per session before 421: slows dictionary "
     "probing for valid tags and backscatter floods. Postfix analogue: "
     "smtpd_hard_error_limit."},
    {"limits", "client_names_cached", 4096, 0, 1000000, "entries",
     "Forward-confirmed client names (XCLIENT NAME) kept per I/O thread, so a sender that "
     "reconnects does not cost two more DNS lookups; 0 = no cache. About 300 bytes each."},
    {"limits", "upstream_idle_connections", 32, 0, 10000, "connections",
     "Idle next-hop connections kept per I/O thread for the next session of the same listener "
     "(Postfix scache), on listeners with forward_client = \"none\"; 0 = never reuse. Each "
     "is one socket (plus its TLS state) on both sides."},
    {"limits", "policy_request_size", 65536, 4096, 1048576, "octets",
     "Largest Postfix policy delegation request (role policy), its empty last line included. "
     "Postfix 3.7 sends about 30 attributes, typically under 1 KiB; values from SMTP are bounded "
     "by its line_length_limit (2048), so 64 KiB never stops a real request. A request without "
     "its empty line within this many octets closes the connection unanswered: Postfix then "
     "applies smtpd_policy_service_default_action (451 4.3.5 by default), never an accept."},
    {"limits", "policy_attributes", 100, 40, 10000, "attributes",
     "Most name=value lines in one policy request. SMTPD_POLICY_README lists about 30 for "
     "Postfix 3.7; newer versions add a few. More closes the connection unanswered."},
    {"limits", "policy_attribute_length", 4096, 512, 65536, "octets",
     "Longest name=value line of a policy request. Values that come from the SMTP client are "
     "bounded by Postfix's line_length_limit (2048) plus the attribute name; certificate "
     "subjects and issuers are far shorter. Longer closes the connection unanswered."},

    // --- [timeouts] (seconds) ----------------------------------------------------------------
    {"limits", "proxy_header_size", 536, 232, 65551, "octets",
     "Largest PROXY protocol v2 header (16 bytes plus its length field) from a load balancer in "
     "listener.accept_proxy_from. proxy-protocol.txt 2: every header is meant to fit the 536-octet "
     "minimum TCP segment (576 - 40), which HAProxy's addresses plus its usual TLVs do; 232 is the "
     "largest header without TLVs (AF_UNIX addresses), 65551 what the length field can say. A "
     "larger header closes the connection. v1 lines have the spec's own bound, 107 octets."},
    {"limits", "milter_packet", 65536, 4096, 16777216, "bytes",
     "Largest milter packet accepted from the MTA (command byte and data; the 4-byte length "
     "excluded). The milter negotiates no body step, so packets are macros, addresses and, in "
     "verify+monitor mode, one header: libmilter's own bound is MILTER_CHUNK_SIZE 65535 plus "
     "framing. Larger: the connection ends with a protocol error (the MTA applies "
     "milter_default_action)."},
    {"timeouts", "idle", 300, 1, 3600, "seconds",
     "Inactivity on any single read or write. RFC 5321 4.5.3.2.7: a server should wait at least "
     "5 minutes for the next command; 300 = Postfix smtpd_timeout."},
    {"timeouts", "command", 300, 1, 3600, "seconds",
     "Overall deadline for receiving one command line, so a byte-a-minute trickle cannot reset "
     "the idle timer forever. 5 minutes, as RFC 5321 4.5.3.2.7."},
    {"timeouts", "session", 3600, 1, 86400, "seconds",
     "Longest a client may stay connected, checked before each command (a message being "
     "transferred is never cut). Bounds what a slow client can hold on the Internet-facing "
     "listener: without it, commands_before_mail NOOPs at the idle limit could last hours."},
    {"timeouts", "data", 1800, 1, 86400, "seconds",
     "Overall deadline for the DATA phase, 354 to the final dot. RFC 5321 4.5.3.2.5 gives 3 "
     "minutes per data block (that is the idle timer) but no bound on the whole body; 30 "
     "minutes carries a 64 MiB message at about 37 KB/s."},
    {"timeouts", "upstream_connect", 30, 1, 300, "seconds",
     "TCP connect to the next hop. 30 = Postfix smtp_connect_timeout; the client meanwhile "
     "waits for our greeting, for which RFC 5321 4.5.3.2.1 allows it 5 minutes."},
    {"timeouts", "upstream_reply", 100, 1, 3600, "seconds",
     "Wait for a next-hop reply (greeting, EHLO, MAIL, RCPT, DATA 354). Must stay below the "
     "client's own wait or the client gives up while the next hop may still accept (duplicate "
     "delivery); the shortest client timeout is DATA initiation, 2 minutes (RFC 5321 4.5.3.2.4), "
     "hence 100 (MAIL and RCPT allow 5 minutes: 4.5.3.2.2, 4.5.3.2.3)."},
    {"timeouts", "upstream_data_reply", 540, 1, 3600, "seconds",
     "Wait for the next hop's reply to the final dot. The client waits 10 minutes for it (RFC "
     "5321 4.5.3.2.6); answering within 9 avoids duplicate delivery (RFC 1047)."},
    {"timeouts", "shutdown_grace", 30, 0, 3600, "seconds",
     "On SIGTERM: stop accepting, let open sessions finish for this long, then close them with "
     "421 (RFC 5321 3.8); a message already with the next hop first gets its verdict "
     "(timeouts.upstream_data_reply). 0 = close at once."},
    {"timeouts", "upstream_idle", 2, 0, 300, "seconds",
     "How long an idle next-hop connection waits for the next session before it is closed. "
     "2 = Postfix smtp_connection_cache_time_limit: long enough to catch a client that sends "
     "one message per connection, far below any server's idle timeout. 0 = never reuse."},
    {"timeouts", "client_name_ttl", 300, 0, 86400, "seconds",
     "How long a cached client name (or its absence) is reused. DNS PTR records commonly live "
     "an hour or more; 5 minutes bounds how stale a name the MX sees can be. 0 = no cache."},
    {"timeouts", "policy_idle", 330, 1, 3600, "seconds",
     "How long a policy connection (role policy) may wait for its next request. Postfix closes "
     "an idle policy connection itself after smtpd_policy_service_max_idle (300 s); 330 lets "
     "Postfix close first, so it never writes to a connection we are closing."},
    {"timeouts", "policy_request", 100, 1, 3600, "seconds",
     "Deadline for one policy request to arrive, from its first byte, and for its answer to be "
     "written. Postfix writes a request at once; 100 = smtpd_policy_service_timeout, after "
     "which Postfix has given up on the answer anyway."},
    {"timeouts", "socketmap_idle", 30, 1, 3600, "seconds",
     "How long a socketmap connection (role socketmap) may wait for its next query. Postfix "
     "closes idle socketmap connections after 10 s (dict_sockmap max_idle, not configurable) "
     "and every one after 100 s; 30 lets Postfix close first and still frees the connections "
     "of clients that went away."},
    {"timeouts", "socketmap_request", 100, 1, 3600, "seconds",
     "Deadline for one socketmap query to arrive, from its first byte, and for its answer to be "
     "written. 100 = Postfix's own socketmap read/write timeout (dict_sockmap, fixed)."},
    {"timeouts", "milter_idle", 3600, 1, 86400, "seconds",
     "Wait between two milter commands. Postfix keeps the milter connection for the whole SMTP "
     "session, and its client may pause up to smtpd_timeout (300) per command, many times: an "
     "hour bounds a forgotten connection without cutting a slow but live one."},
    {"timeouts", "milter_command", 30, 1, 3600, "seconds",
     "Deadline for the rest of a milter packet once its first byte arrived, and for writing our "
     "replies. 30 = Postfix milter_command_timeout: the MTA gives up at the same time."},
    {"timeouts", "proxy_header", 5, 1, 300, "seconds",
     "Deadline for the whole PROXY protocol header from a load balancer in "
     "listener.accept_proxy_from, from accept. The load balancer sends it at once (proxy-protocol.txt "
     "2: in one segment); 5 = Postfix smtpd_upstream_proxy_timeout. Expiry closes the connection "
     "without a greeting."},
});

// Compile-time lookup; an unknown name is a compile error (throw in a consteval function).
consteval const Limit& limit(std::string_view section, std::string_view key) {
  for (const Limit& l : kLimits)
    if (l.section == section && l.key == key) return l;
  throw "batv::conf::limit: no such entry in kLimits";
}

constexpr bool has_limit(std::string_view section, std::string_view key) {
  for (const Limit& l : kLimits)
    if (l.section == section && l.key == key) return true;
  return false;
}

// Runtime lookup; nullptr when absent.
constexpr const Limit* find_limit(std::string_view section, std::string_view key) {
  for (const Limit& l : kLimits)
    if (l.section == section && l.key == key) return &l;
  return nullptr;
}

namespace detail {
constexpr bool limits_table_is_sane() {
  for (std::size_t i = 0; i < kLimits.size(); ++i) {
    const Limit& l = kLimits[i];
    if (l.key.empty() || l.unit.empty() || l.why.empty()) return false;
    if (!(l.min <= l.def && l.def <= l.max)) return false;
    for (std::size_t j = i + 1; j < kLimits.size(); ++j)
      if (kLimits[j].section == l.section && kLimits[j].key == l.key) return false;
  }
  return true;
}
}  // namespace detail
static_assert(detail::limits_table_is_sane(), "kLimits: empty field, default out of range or duplicate");

// [limits]: counts and sizes. Every member corresponds to one kLimits row of section "limits".
struct Limits {
  std::int64_t line_length = limit("limits", "line_length").def;
  std::int64_t reply_line_length = limit("limits", "reply_line_length").def;
  std::int64_t reply_lines = limit("limits", "reply_lines").def;
  std::int64_t recipients_per_message = limit("limits", "recipients_per_message").def;
  std::int64_t message_size = limit("limits", "message_size").def;
  std::int64_t errors_per_session = limit("limits", "errors_per_session").def;
  std::int64_t sessions = limit("limits", "sessions").def;
  std::int64_t sessions_per_client = limit("limits", "sessions_per_client").def;
  std::int64_t commands_before_mail = limit("limits", "commands_before_mail").def;
  std::int64_t invalid_recipients_per_session = limit("limits", "invalid_recipients_per_session").def;
  std::int64_t client_names_cached = limit("limits", "client_names_cached").def;
  std::int64_t upstream_idle_connections = limit("limits", "upstream_idle_connections").def;
  std::int64_t policy_request_size = limit("limits", "policy_request_size").def;
  std::int64_t policy_attributes = limit("limits", "policy_attributes").def;
  std::int64_t policy_attribute_length = limit("limits", "policy_attribute_length").def;
  std::int64_t milter_packet = limit("limits", "milter_packet").def;
  std::int64_t proxy_header_size = limit("limits", "proxy_header_size").def;
  friend bool operator==(const Limits&, const Limits&) = default;
};

// [timeouts]: every member corresponds to one kLimits row of section "timeouts".
struct Timeouts {
  std::chrono::seconds idle{limit("timeouts", "idle").def};
  std::chrono::seconds command{limit("timeouts", "command").def};
  std::chrono::seconds session{limit("timeouts", "session").def};
  std::chrono::seconds data{limit("timeouts", "data").def};
  std::chrono::seconds upstream_connect{limit("timeouts", "upstream_connect").def};
  std::chrono::seconds upstream_reply{limit("timeouts", "upstream_reply").def};
  std::chrono::seconds upstream_data_reply{limit("timeouts", "upstream_data_reply").def};
  std::chrono::seconds shutdown_grace{limit("timeouts", "shutdown_grace").def};
  std::chrono::seconds upstream_idle{limit("timeouts", "upstream_idle").def};
  std::chrono::seconds client_name_ttl{limit("timeouts", "client_name_ttl").def};
  std::chrono::seconds policy_idle{limit("timeouts", "policy_idle").def};
  std::chrono::seconds policy_request{limit("timeouts", "policy_request").def};
  std::chrono::seconds socketmap_idle{limit("timeouts", "socketmap_idle").def};
  std::chrono::seconds socketmap_request{limit("timeouts", "socketmap_request").def};
  std::chrono::seconds milter_idle{limit("timeouts", "milter_idle").def};
  std::chrono::seconds milter_command{limit("timeouts", "milter_command").def};
  std::chrono::seconds proxy_header{limit("timeouts", "proxy_header").def};
  friend bool operator==(const Timeouts&, const Timeouts&) = default;
};

// Fixed bounds: not configurable, named here so that no bare number hides elsewhere.
namespace fixed {
inline constexpr std::int64_t max_config_file_bytes = 1 << 20;  // a config is a few KB; refuse /dev/zero
// --- Mail addresses (RFC 5321 4.5.3.1; the SMTP parser, prvs, the config and the policy use these) --
// A domain name in text form: 253 octets. RFC 5321 4.5.3.1.2 says "255 octets" and RFC 1035
// 2.3.4 "255 octets or less", but the count is the name as DNS carries it, "label octets and
// label length octets" (RFC 1035 3.1): a length octet in front of every label and the root's
// empty label at the end, two octets more than the dotted text. A 254- or 255-octet name cannot
// exist, so the SMTP parser calls it domain_too_long (it said address_too_long before: inside a
// 256-octet path a mailbox's domain has at most 252 octets anyway). An SMTPUTF8 U-label domain is
// counted in its UTF-8 octets (RFC 6531 3.3).
inline constexpr std::size_t max_domain_length = 253;
inline constexpr std::size_t max_label_length = 63;      // RFC 1035 2.3.4; an ASCII label
inline constexpr std::size_t max_local_part_length = 64; // RFC 5321 4.5.3.1.1
// A reverse- or forward-path with its angle brackets (RFC 5321 4.5.3.1.3); the address inside
// them ("local@domain") has two octets fewer. A tag must leave the signed path within it.
inline constexpr std::size_t max_path_length = 256;
inline constexpr std::size_t max_address_length = max_path_length - 2;
// Most esmtp-params accepted on one MAIL or RCPT. RFC 5321 sets no bound; the extensions we know
// use at most 5 on one command (SIZE BODY SMTPUTF8 RET ENVID). Bounds work and memory per command.
inline constexpr std::size_t max_esmtp_params = 32;
// A client's HELO/EHLO argument as passed on in XCLIENT HELO: cut here. 255 = RFC 5321 4.5.3.1.2
// as written (the argument may also be an address literal) and Postfix's VALID_HOSTNAME_LEN, the
// most its XCLIENT takes as a HELO name.
inline constexpr std::size_t max_forwarded_helo_length = 255;

// --- SMTP sessions (relay/session.cpp) ----------------------------------------------------------
// Pipelined commands held before they are relayed in one batch (a forced flush): bounds the
// memory of a client that pipelines without end. RFC 2920 3.1 lets a client send a whole
// transaction at once; 100 covers MAIL, 98 RCPTs and DATA, and the reply order is kept either way.
inline constexpr std::size_t max_pipelined_commands = 100;
// 334 challenges relayed in one AUTH exchange before it is cancelled (501). RFC 4954 sets no
// bound; PLAIN needs 1, LOGIN 2, CRAM-MD5 1, SCRAM 2, GSSAPI a few: 16 is far above any of them.
inline constexpr int max_auth_rounds = 16;
// The "next hop offers no XCLIENT" warning is logged once per listener, for this many listener
// indexes (one flag each, process-wide); a listener beyond them warns on every session.
inline constexpr std::size_t xclient_warning_listeners = 64;

// --- Milter (relay/milter) ------------------------------------------------------------------------
// Macros kept per milter connection (SMFIC_MACRO, the MTA's milter_*_macros): Postfix sends
// about 15 by default; beyond this many the rest are dropped, so an MTA sending macros without
// end cannot grow the connection's memory.
inline constexpr std::size_t max_milter_macros = 64;
// A milter connection reads into at most this much new buffer at a time (the packet itself is
// bounded by limits.milter_packet).
inline constexpr std::size_t milter_read_bytes = 16 * 1024;

// --- Policy and socketmap connections (relay/postfix/request_connection.cpp) ---------------------
// Each read has at least this much free buffer; a connection starts with twice it. Postfix's
// requests are well under 1 KiB, so a connection normally keeps its first 8 KiB; a larger request
// grows the buffer up to limits.policy_request_size (fixed::socketmap_max_query) plus this.
inline constexpr std::size_t request_read_bytes = 4096;

// --- Next hop (relay/upstream.cpp) ----------------------------------------------------------------
// Bytes read from the next hop at a time while a reply is awaited (the reply line itself is
// bounded by limits.reply_line_length).
inline constexpr std::size_t upstream_read_bytes = 4096;

// --- Logs (relay/log.cpp) -------------------------------------------------------------------------
// A logged value is cut after this many characters of input (then "..."): a peer's 64 KiB line
// must not become a 64 KiB log line, and 256 keeps every address (254) and reply line whole.
inline constexpr std::size_t max_log_value_chars = 256;
// A next-hop reply quoted in a warning (a refused XCLIENT) is cut here first: its first line or
// two say what went wrong.
inline constexpr std::size_t max_logged_reply_chars = 200;

// --- The metrics listener (relay/http.cpp; [metrics] listen) --------------------------------------
// A Prometheus scraper sends one small GET every few seconds: these bound what anyone else who
// reaches the port can hold. 5 s per read or write (a scrape's default timeout is 10 s), 64
// connections at once, 8 KiB of request header (Beast's default 8192), 100 requests per
// connection, then Connection: close; request bodies (none expected) up to 4 KiB, then 413.
inline constexpr std::chrono::seconds metrics_idle_timeout{5};
inline constexpr std::size_t metrics_max_connections = 64;
inline constexpr std::size_t metrics_header_bytes = 8 * 1024;
inline constexpr unsigned metrics_max_requests = 100;
inline constexpr std::size_t metrics_body_bytes = 4096;
// The read buffer holds a header and a body plus this much for the request line and framing.
inline constexpr std::size_t metrics_buffer_slack_bytes = 1024;

// --- The server (relay/server.cpp) ----------------------------------------------------------------
// After a failed accept (EMFILE, ENFILE, ENOBUFS): wait this long before the next, so that a
// descriptor shortage does not spin a thread at 100%, and short enough that a freed descriptor is
// used at once. Also the metrics listener's.
inline constexpr std::chrono::milliseconds accept_error_pause{100};
// Shutdown: sessions told to stop get at least this long (and at least
// timeouts.upstream_data_reply + 1 s, for a message with the next hop) to write their 421.
inline constexpr std::chrono::seconds shutdown_stop_minimum{10};
// How often every key file is stat(2)ed for a change (a `batv-keys rotate` reaches the relay
// without a signal): one stat per file per period, see max_domain_keys.
inline constexpr std::chrono::seconds key_file_poll_interval{2};
inline constexpr std::size_t max_echoed_value_chars = 100;  // config values quoted in errors are cut here
// batv-keys rotate --at T: how far ahead T may be. A staged key only waits for the key file to
// reach every relay (minutes to hours); 30 days, the longest tag lifetime, still allows a monthly
// schedule and catches slips such as +90d meant as +90m.
inline constexpr std::int64_t max_key_activation_delay_seconds = 30 * 86400;
// [[domain_keys]] entries (one key file each): the relay stats every key file every
// key_file_poll_interval and
// reads them all on each reload, so the count bounds that work. A hosting relay with a ring per
// customer domain stays far below it (a customer with many domains lists them in one entry).
inline constexpr std::size_t max_domain_keys = 1000;
// Session input buffers: a small one for commands, a large one while a body streams through.
// Freed large buffers are kept for the next body, up to this many per thread (16 x 64 KiB = 1 MiB
// per thread): without them every message allocates and frees 64 KiB, which glibc returns to the
// kernel and faults back in (measured: about 8% of the relay's CPU at 1 KiB messages).
inline constexpr std::size_t command_buffer_bytes = 4 * 1024;
inline constexpr std::size_t stream_buffer_bytes = 64 * 1024;
inline constexpr std::size_t spare_stream_buffers_per_thread = 16;
// Socketmap (role socketmap): the netstring sizes of Postfix's socketmap client, which are not
// configurable in Postfix (socketmap_table(5) BUGS). A query is "strip " plus one address (Postfix
// keys stay under its 2048-octet line_length_limit), so 10000 octets never stops a real query; a
// longer one closes the connection unanswered (Postfix: temporary lookup error). A reply is one
// address: nowhere near the 100000 octets Postfix accepts.
inline constexpr std::size_t socketmap_max_query = 10000;
inline constexpr std::size_t socketmap_max_reply = 100000;  // socketmap_table(5), REPLY FORMAT
}  // namespace fixed

}  // namespace batv::conf
