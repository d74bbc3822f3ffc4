// reply: SMTP replies read from the next hop, and the wire form of replies we send (RFC 5321 4.2).
//
// Contract: pure code over std::string_view. Never does I/O, never logs, never throws (except
// std::bad_alloc), never reads a clock.
//   - ReplyReader assembles one (possibly multi-line, RFC 5321 4.2.1) reply from lines the caller
//     has already split off the stream. The next hop is untrusted (Postfix smtpd_proxy.c): every
//     line is checked, bounded in length and count, and its text sanitised before it is stored,
//     so Reply::lines are printable ASCII and safe to log and to relay.
//   - parse_enhanced reads an RFC 3463 status code; parse_ehlo reads EHLO keywords (RFC 5321
//     4.1.1.1) into Capabilities; format_reply builds the wire form of a reply.
// Errors: ReplyReader::feed returns Status::error with a short reason in error(); the other
// functions return std::nullopt or an empty/default value, never fail otherwise.
// Limits: the reader's line length and line count come from the caller (limits.reply_line_length,
// limits.reply_lines); sanitize cuts at max_len.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace batv::relay::smtp {

struct Reply {
  int code = 0;                    // 200..599
  std::vector<std::string> lines;  // text after "ddd-" / "ddd " of each line, sanitised; "" for a bare "ddd"
};

// Reads one reply a line at a time. Reply-line = *( Reply-code "-" [ textstring ] CRLF )
// Reply-code [ SP textstring ] CRLF (RFC 5321 4.2). Accepted:
//   ddd            (bare code: a final line with empty text; tolerated, as Postfix does)
//   ddd SP text    final line
//   ddd "-" text   continuation
// with ddd in 200..599 (first digit 2-5, RFC 5321 4.2.1; 1yz is not used by SMTP) and the same
// code on every line of the reply (RFC 5321 4.2.1). Anything else is an error; the reader then
// stays in error until take() or reset(). Copyable and assignable (a value, like the reply).
class ReplyReader {
 public:
  // max_line_length counts the line including its CRLF, as limits.reply_line_length does
  // (RFC 5321 4.5.3.1.5: at least 512). max_lines bounds the lines of one reply.
  ReplyReader(std::size_t max_line_length, std::size_t max_lines);

  enum class Status { need_more, complete, error };
  // `line` WITHOUT its CRLF (or LF). After `complete`, call take() before feeding the next reply;
  // feeding a completed reader is an error ("reply not taken").
  Status feed(std::string_view line);
  // The completed reply; resets the reader for the next one. After an error it returns what was
  // read so far (code 0 when no line was valid) and resets too.
  Reply take();
  void reset();
  // Why the last feed() failed, for logs: "reply line too long", "malformed reply line",
  // "inconsistent reply codes", "too many reply lines", "reply not taken"; "" when no error.
  [[nodiscard]] std::string_view error() const { return error_; }
  [[nodiscard]] Status status() const { return status_; }

 private:
  Status fail(std::string_view why);

  std::size_t max_line_length_;
  std::size_t max_lines_;
  Status status_ = Status::need_more;
  std::string_view error_;  // always a string literal
  Reply reply_;
};

// RFC 3463 2: status-code = class "." subject "." detail; class = "2" / "4" / "5";
// subject = 1*3digit; detail = 1*3digit.
struct EnhancedCode {
  int cls = 0;
  int subject = 0;
  int detail = 0;
  friend bool operator==(const EnhancedCode&, const EnhancedCode&) = default;
};
// A status code at the START of `text`, followed by a space or the end of text (RFC 3463 and
// RFC 2034 3: it starts the text of each reply line). std::nullopt otherwise.
std::optional<EnhancedCode> parse_enhanced(std::string_view text);
std::string to_string(const EnhancedCode& c);  // "2.1.0"

// Every byte outside printable ASCII (0x20-0x7E) becomes '?'; the result has at most max_len
// bytes (Postfix printable(): untrusted text is made safe before it is logged or relayed).
std::string sanitize(std::string_view text, std::size_t max_len = 400);

// Wire form: "250-a\r\n250 b\r\n". An empty vector gives one line "250 \r\n". Line text is passed
// through sanitize (without a length cut) so that no text can break the CRLF framing.
// `code` should be 200..599; it is clamped into 0..999 so that it is always written as digits.
std::string format_reply(int code, const std::vector<std::string>& lines);
std::string format_reply(int code, std::string_view text);  // a single line
std::string format_reply(const Reply& r);

// What the next hop offers, from its EHLO reply (RFC 5321 4.1.1.1): the first line is the
// greeting, each later line one ehlo-keyword followed by its parameters; keywords are
// case-insensitive (RFC 5321 2.4). Unknown keywords are ignored. A non-2xx reply gives no
// capabilities.
struct Capabilities {
  bool pipelining = false;           // RFC 2920
  bool eightbitmime = false;         // RFC 6152
  bool smtputf8 = false;             // RFC 6531
  bool enhancedstatuscodes = false;  // RFC 2034
  bool dsn = false;                  // RFC 3461
  bool chunking = false;             // RFC 3030
  bool binarymime = false;           // RFC 3030
  bool starttls = false;             // RFC 3207
  bool xclient = false;              // Postfix XCLIENT_README
  bool size_advertised = false;      // RFC 1870: the SIZE parameter may be used
  std::optional<std::uint64_t> size;  // RFC 1870 4: SIZE n; "SIZE", "SIZE 0" or a bad number = no fixed limit
  std::vector<std::string> auth;          // RFC 4954 3 AUTH mechanisms, upper-cased, without repeats
  std::vector<std::string> xclient_attrs; // XCLIENT attribute names, upper-cased, without repeats
};
Capabilities parse_ehlo(const Reply& r);

}  // namespace batv::relay::smtp
