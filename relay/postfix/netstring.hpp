// netstring: D. J. Bernstein's netstrings (http://cr.yp.to/proto/netstrings.txt), the framing of
// the Sendmail/Postfix socketmap protocol (Postfix socketmap_table(5)): "<length>:<bytes>,".
//
// Contract: pure functions over std::string_view; no I/O, no logging, no clock, never throw
// (except std::bad_alloc in encode). Input is untrusted and may hold any byte.
//   - decode_netstring looks at the start of a receive buffer and says whether one whole netstring
//     is there (its payload as a view into the buffer, and how many bytes it took), whether more
//     bytes are needed, or why the buffer can never start a valid netstring within `max_payload`.
//     It is incremental in the sense a reader needs: call it again with the grown buffer; it only
//     re-reads the length prefix (at most digits(max_payload) + 1 bytes) before the payload.
//   - The length is decimal digits without leading zeros ("0:," is the empty string, "01:" is an
//     error, as the definition says), at most `max_payload`. An over-long length is refused as
//     soon as its digits say so: a client cannot make the reader buffer more than
//     max_payload + digits + 2 bytes.
//   - encode_netstring / append_netstring frame any bytes.
// Limits: the caller passes max_payload; the socketmap uses conf::fixed::socketmap_max_query for
// what it reads and never writes more than conf::fixed::socketmap_max_reply.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace batv::relay::postfix {

enum class NetstringError {
  none,
  empty_length,   // ":" with no digits before it
  not_a_digit,    // something other than a digit or ":" in the length
  leading_zero,   // "0" followed by another digit
  too_long,       // the length (or its number of digits) is over max_payload
  missing_comma,  // the payload is not followed by ","
};
std::string_view to_string(NetstringError e);  // snake_case name

struct NetstringResult {
  enum class Status { complete, need_more, error };
  Status status = Status::need_more;
  std::string_view payload;   // when complete: points into the input
  std::size_t consumed = 0;   // when complete: bytes of the whole netstring (prefix, payload, ",")
  NetstringError error = NetstringError::none;  // when error
  [[nodiscard]] bool complete() const { return status == Status::complete; }
};

// The netstring at the start of `buffer`.
NetstringResult decode_netstring(std::string_view buffer, std::size_t max_payload);

// "<len>:<payload>,".
std::string encode_netstring(std::string_view payload);
void append_netstring(std::string& out, std::string_view payload);

}  // namespace batv::relay::postfix
