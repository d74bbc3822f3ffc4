// proxy_header: the receiving side of the HAProxy PROXY protocol (haproxy doc/proxy-protocol.txt),
// for listeners behind a load balancer (listener.accept_proxy_from). Pure: bytes in, a value or a
// typed error out; no I/O, no clock, no logging. The sending side is relay/client_identity.hpp.
//
// parse_proxy_header() looks at the bytes received so far and answers one of:
// - need_more, with `need`: how many more bytes are certainly part of the header, so that a reader
//   can ask the socket for exactly that many and never consume a byte of the protocol behind it
//   (SMTP) — v2 is read as 16 bytes and then its length, v1 up to its CRLF;
// - error, as soon as the bytes cannot start a valid header (the spec says to abort at once);
// - done: the header and how many bytes it took.
//
// What is accepted (section numbers of proxy-protocol.txt):
// - v1 (2.1): "PROXY TCP4|TCP6 src dst sport dport\r\n", single spaces, IPv4 as exactly four
//   decimal numbers 0-255 without leading zeros, IPv6 as the textual form of inet_pton(3) (no zone
//   index), ports 0-65535 without leading zeros, the address family matching the keyword; at most
//   107 bytes with the CRLF, a lone CR or LF is an error. "PROXY UNKNOWN" ignores the rest of the
//   line (any bytes but CR/LF) and yields Command::unknown.
// - v2 (2.2): the 12-byte signature, version 2, command LOCAL or PROXY. LOCAL is accepted with any
//   valid family byte and its address block skipped. PROXY needs TCP over IPv4 (0x11) or IPv6
//   (0x21) with a length that holds the addresses; bytes beyond them (TLVs, 2.2.x) are skipped
//   unread. PROXY with UNSPEC, UDP or AF_UNIX is refused (Error::unsupported_family): the spec
//   lets a receiver fall back to the real connection's addresses, but here that would give a
//   client we cannot name the load balancer's own address — and with it the load balancer's
//   place in allow_clients and inbound.accept_untagged_from. 16 + length must not exceed
//   `max_size` (limits.proxy_header_size): Error::too_large.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include <boost/asio/ip/address.hpp>

namespace batv::relay {

struct ProxyHeader {
  enum class Command { proxy, local, unknown };  // local: v2 LOCAL; unknown: v1 "PROXY UNKNOWN"
  enum class Family { unspec, inet, inet6, unix_socket };
  int version = 1;
  Command command = Command::unknown;
  Family family = Family::unspec;  // of the addresses below (unspec: none given or skipped)
  boost::asio::ip::address src, dst;  // set for Command::proxy only
  std::uint16_t src_port = 0, dst_port = 0;
  std::size_t length = 0;  // bytes of the header, TLVs included: what the reader consumes
};

enum class ProxyError {
  not_proxy,           // neither the v1 "PROXY " nor the v2 signature
  line_too_long,       // v1: no CRLF within 107 bytes
  bad_line,            // v1: wrong keyword, spacing, field count, or a lone CR / LF
  bad_address,         // v1: an address not in its canonical form, or of the other family
  bad_port,            // v1: not a decimal 0-65535 without leading zeros
  bad_version,         // v2: version nibble not 2
  bad_command,         // v2: command nibble neither LOCAL nor PROXY
  bad_family,          // v2: family or transport nibble outside the spec's values
  unsupported_family,  // v2 PROXY for anything but TCP over IPv4 / IPv6
  short_addresses,     // v2: length smaller than the family's address block
  too_large,           // v2: 16 + length above max_size
};

struct ProxyParse {
  enum class Status { need_more, error, done };
  Status status = Status::need_more;
  std::size_t need = 0;  // need_more: at least 1; received + need never exceeds the header
  ProxyError error = ProxyError::not_proxy;
  ProxyHeader header;    // done
};

// The v1 line limit with its CRLF (2.1) and the v2 fixed part (2.2).
inline constexpr std::size_t proxy_v1_max_line = 107;
inline constexpr std::size_t proxy_v2_fixed_size = 16;

// `in`: every byte received on the connection so far. `max_size`: the largest v2 header accepted
// (v1 is bounded by the spec's 107 bytes on its own).
ProxyParse parse_proxy_header(std::string_view in, std::size_t max_size);

constexpr std::string_view to_string(ProxyError e) {
  switch (e) {
    case ProxyError::not_proxy: return "not_proxy";
    case ProxyError::line_too_long: return "line_too_long";
    case ProxyError::bad_line: return "bad_line";
    case ProxyError::bad_address: return "bad_address";
    case ProxyError::bad_port: return "bad_port";
    case ProxyError::bad_version: return "bad_version";
    case ProxyError::bad_command: return "bad_command";
    case ProxyError::bad_family: return "bad_family";
    case ProxyError::unsupported_family: return "unsupported_family";
    case ProxyError::short_addresses: return "short_addresses";
    case ProxyError::too_large: return "too_large";
  }
  return "other";
}
std::string_view to_string(ProxyHeader::Command c);

// Why the PROXY header reader closed a connection from listener.accept_proxy_from before its
// session: the reason= of event=proxy_header_failed and the reason label of
// batv_proxy_header_errors_total (relay/metrics.hpp counts by value). Every ProxyError first, in
// its order and under its name (from_parse), then the reader's own.
enum class ProxyHeaderError {
  not_proxy, line_too_long, bad_line, bad_address, bad_port, bad_version, bad_command, bad_family,
  unsupported_family, short_addresses, too_large,  // = ProxyError
  timeout,   // timeouts.proxy_header passed before the header was complete
  closed,    // the load balancer closed (or reset) within the header
  io_error,  // any other read error
};
// One more than the last value (checked below, and -Wswitch makes to_string name a new one).
inline constexpr std::size_t proxy_header_error_count = static_cast<std::size_t>(ProxyHeaderError::io_error) + 1;
static_assert(static_cast<int>(ProxyHeaderError::too_large) == static_cast<int>(ProxyError::too_large),
              "ProxyHeaderError starts with every ProxyError, in the same order");

constexpr ProxyHeaderError from_parse(ProxyError e) { return static_cast<ProxyHeaderError>(e); }

constexpr std::string_view to_string(ProxyHeaderError e) {
  switch (e) {
    case ProxyHeaderError::not_proxy:
    case ProxyHeaderError::line_too_long:
    case ProxyHeaderError::bad_line:
    case ProxyHeaderError::bad_address:
    case ProxyHeaderError::bad_port:
    case ProxyHeaderError::bad_version:
    case ProxyHeaderError::bad_command:
    case ProxyHeaderError::bad_family:
    case ProxyHeaderError::unsupported_family:
    case ProxyHeaderError::short_addresses:
    case ProxyHeaderError::too_large: return to_string(static_cast<ProxyError>(e));
    case ProxyHeaderError::timeout: return "timeout";
    case ProxyHeaderError::closed: return "closed";
    case ProxyHeaderError::io_error: return "io_error";
  }
  return "?";
}
static_assert(to_string(static_cast<ProxyHeaderError>(proxy_header_error_count)) == "?" &&
                  to_string(static_cast<ProxyHeaderError>(proxy_header_error_count - 1)) != "?",
              "proxy_header_error_count must be one more than the last ProxyHeaderError");
static_assert(to_string(from_parse(ProxyError::bad_port)) == "bad_port" &&
              to_string(ProxyHeaderError::unsupported_family) == "unsupported_family");

}  // namespace batv::relay
