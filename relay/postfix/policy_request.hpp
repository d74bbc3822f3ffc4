// policy_request: the requests of Postfix's SMTP access policy delegation protocol
// (SMTPD_POLICY_README, "Protocol description"): "name=value" lines, each ended by LF, the request
// ended by an empty line. Postfix sends LF; a CR before the LF is accepted and removed, so that a
// CRLF client (a test with a telnet-like tool) works the same.
//
// Contract: pure functions over std::string_view; no I/O, no logging, no clock, never throw
// (except std::bad_alloc). Input is untrusted and may hold any byte.
//   - PolicyFramer finds where one request ends in a receive buffer (the first empty line), or
//     says that none can end within limits.request_size. It remembers how far it has looked, so a
//     request trickling in byte by byte is scanned once, not once per byte.
//   - parse_policy_request splits one whole request (as framed, empty line included) into its
//     attributes: views into the input, in the order sent. The value is everything after the
//     first "=" (values may hold "="). Unknown names are kept (the service ignores them, as the
//     README asks); the service looks up the ones it needs with find().
// Errors (typed, first one found): a line without "=", an empty name, a name byte outside
// [A-Za-z0-9_.-], a NUL byte anywhere, a name given twice, more than limits.attributes lines, a
// line longer than limits.attribute_length (its LF excluded, its CR included). Postfix never sends
// any of these; the service answers none of them (it closes the connection, so Postfix applies
// smtpd_policy_service_default_action instead of anything we could say).
// Limits: PolicyLimits comes from conf/limits.hpp rows limits.policy_request_size,
// limits.policy_attributes and limits.policy_attribute_length.
#pragma once

#include <cstddef>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace batv::relay::postfix {

struct PolicyLimits {
  std::size_t request_size = 65536;     // octets, the whole request with its empty line
  std::size_t attributes = 100;         // name=value lines in one request
  std::size_t attribute_length = 4096;  // octets in one line, LF excluded
};

enum class PolicyError {
  none,
  request_too_large,     // no empty line within request_size octets (framer)
  too_many_attributes,
  attribute_too_long,
  missing_equals,        // a line that is not name=value
  empty_name,
  bad_name,              // a name byte outside [A-Za-z0-9_.-]
  nul_byte,
  duplicate_attribute,
};
std::string_view to_string(PolicyError e);  // snake_case name

struct PolicyFrame {
  enum class Status { complete, need_more, too_large };
  Status status = Status::need_more;
  std::size_t length = 0;  // when complete: octets of the request, its empty line included
};

class PolicyFramer {
 public:
  explicit PolicyFramer(std::size_t max_request) : max_(max_request) {}
  // `buffer` starts at the first byte of the request being framed and only grows between calls;
  // after a complete frame is consumed, call reset() before framing the next one.
  PolicyFrame next(std::string_view buffer);
  void reset() {
    scanned_ = 0;
    in_line_ = false;
  }

 private:
  std::size_t max_;
  std::size_t scanned_ = 0;  // where to look next: a line start, or (in_line_) inside a line
  bool in_line_ = false;
};

struct PolicyRequest {
  std::vector<std::pair<std::string_view, std::string_view>> attributes;  // in the order sent
  // The value of `name` (exact, names are lowercase in Postfix), or nullopt when absent.
  [[nodiscard]] std::optional<std::string_view> find(std::string_view name) const;
};

struct PolicyParse {
  PolicyRequest request;
  PolicyError error = PolicyError::none;
  std::size_t line = 0;  // 1-based line of the error, when error != none
  [[nodiscard]] bool ok() const { return error == PolicyError::none; }
};

// `request`: one framed request (PolicyFramer), its final empty line included; a request without
// the empty line is parsed as if it ended there. Views in the result point into `request`.
PolicyParse parse_policy_request(std::string_view request, const PolicyLimits& limits);

}  // namespace batv::relay::postfix
