// milter codec: the Sendmail milter wire protocol, version 6, as pure functions (no I/O, no clock).
//
// A packet is a 4-byte big-endian length (of what follows), one command byte, then data; strings
// are NUL-terminated. parse_packet() frames one packet out of a byte stream, parse_command()
// decodes the MTA's commands, and the encode_* functions build our replies. Everything is bounded
// by limits.milter_packet (conf/limits.hpp): a longer length field is a clean error before any
// byte of the body is buffered.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace batv::relay::milter {

inline constexpr std::uint32_t kVersion = 6;

// Actions (SMFIF_*) a filter may request.
namespace act {
inline constexpr std::uint32_t addhdrs = 0x01, chgbody = 0x02, addrcpt = 0x04, delrcpt = 0x08, chghdrs = 0x10,
                               quarantine = 0x20, chgfrom = 0x40, addrcpt_par = 0x80, setsymlist = 0x100;
}
// Protocol steps (SMFIP_*): the events the filter does not want, and the ones it will not answer.
namespace proto {
inline constexpr std::uint32_t noconnect = 0x1, nohelo = 0x2, nomail = 0x4, norcpt = 0x8, nobody = 0x10,
                               nohdrs = 0x20, noeoh = 0x40, nr_hdr = 0x80, nounknown = 0x100, nodata = 0x200,
                               skip = 0x400, rcpt_rej = 0x800, nr_conn = 0x1000, nr_helo = 0x2000,
                               nr_mail = 0x4000, nr_rcpt = 0x8000, nr_data = 0x10000, nr_unkn = 0x20000,
                               nr_eoh = 0x40000, nr_body = 0x80000, hdr_leadspc = 0x100000;
}
// Macro stages of SETSYMLIST (SMFIM_*).
enum class Stage : std::uint32_t { connect = 0, helo = 1, envfrom = 2, envrcpt = 3, data = 4, eom = 5, eoh = 6 };

enum class Error {
  incomplete,    // need more bytes (not an error of the peer: read on)
  too_large,     // length field above the limit
  empty,         // length 0: no command byte
  unknown_command,
  malformed,     // missing NUL, short field, bad family, ...
};
std::string_view to_string(Error e);

// One framed packet: the command byte and its data (a view into the input).
struct Packet {
  char cmd = 0;
  std::string_view data;
  std::size_t consumed = 0;  // bytes of input this packet took, header included
};
struct FrameResult {
  Packet packet;
  Error error = Error::incomplete;
  bool ok = false;
};
// Frames the first packet of `in`. `max_packet`: the largest length field accepted.
FrameResult parse_packet(std::string_view in, std::size_t max_packet);

// --- Decoded MTA commands ------------------------------------------------------------------------
struct OptNeg { std::uint32_t version = 0, actions = 0, protocol = 0; };
struct Macros { char for_cmd = 0; std::vector<std::pair<std::string, std::string>> values; };
struct Connect {
  std::string hostname;
  char family = 'U';  // 'U' unknown, 'L' unix, '4' IPv4, '6' IPv6
  std::uint16_t port = 0;
  std::string address;
};
struct Helo { std::string name; };
// MAIL (sender) or RCPT (recipient): the address as sent (with its <>), then ESMTP arguments.
struct Envelope { bool rcpt = false; std::string address; std::vector<std::string> args; };
struct Header { std::string name, value; };
struct Body { std::string_view chunk; };
struct Simple { char cmd = 0; };  // T data, N end of headers, E end of message, A abort, Q quit, K quit_nc
struct Unknown { std::string line; };
using Command = std::variant<OptNeg, Macros, Connect, Helo, Envelope, Header, Body, Simple, Unknown>;

struct CommandResult {
  Command command;
  Error error = Error::malformed;
  bool ok = false;
};
CommandResult parse_command(const Packet& p);

// --- Our replies (wire form, header included) -----------------------------------------------------
std::string encode(char cmd, std::string_view data = {});
struct SymList { Stage stage; std::string macros; };  // space-separated macro names
std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol,
                          const std::vector<SymList>& lists);
inline std::string encode_continue() { return encode('c'); }
inline std::string encode_accept() { return encode('a'); }
inline std::string encode_tempfail() { return encode('t'); }
inline std::string encode_reject() { return encode('r'); }
// SMFIR_REPLYCODE: "550 5.7.1 text". '%' doubled: the MTA runs the text through a printf-like
// expansion (libmilter's smfi_setreply rules, and Postfix checks the reply the same way).
std::string encode_replycode(std::string_view code_and_text);
std::string encode_chgfrom(std::string_view from, std::string_view args);
std::string encode_delrcpt(std::string_view rcpt);
std::string encode_addrcpt_par(std::string_view rcpt, std::string_view args);
std::string encode_addheader(std::string_view name, std::string_view value);
// SMFIR_CHGHEADER with an empty value deletes the index-th (1-based) header of that name.
std::string encode_chgheader(std::uint32_t index, std::string_view name, std::string_view value);

// Decodes one of our replies (for tests and the fuzz targets): command byte and data.
struct Reply { char cmd = 0; std::string data; };
std::vector<Reply> split_replies(std::string_view wire);

}  // namespace batv::relay::milter
