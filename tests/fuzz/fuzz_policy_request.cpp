// Fuzz target: the policy service's request path as the connection runs it (relay/postfix:
// PolicyFramer, parse_policy_request, decide_policy, append_policy_answer) on an arbitrary byte
// stream, whole and in chunks.
// Invariants:
//  - framing is incremental: the stream fed in chunks (sizes from the input's first byte) gives
//    the same frames as the whole buffer; a frame ends with its (first) empty line and is no
//    longer than the limit; too_large only when no frame fits;
//  - an accepted request has names of [A-Za-z0-9_.-], no NUL, no duplicate, at most the limit of
//    lines of at most the limit of octets, and re-serialised it parses to the same attributes;
//  - a request that fails to parse, or breaks the protocol, gets no answer at all (the stream
//    stops there); an answer is one "action=..." line plus the empty line, never with a CR/LF
//    inside, and is DUNNO, a 550 5.7.1 or a PREPEND X-BATV-Status: never an accept (OK);
//  - a bounce (sender=) at RCPT to one of our domains whose tag does not verify, outside the
//    exempt local parts, is refused (enforce mode, no exempt networks).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "postfix_checks.hpp"
#include "relay/postfix/policy_request.hpp"
#include "relay/postfix/policy_service.hpp"

using namespace batv::relay::postfix;

namespace {

const PolicyLimits kLimits{2048, 16, 256};

bool name_ok(std::string_view n) {
  if (n.empty()) return false;
  for (const char c : n)
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
          c == '-'))
      return false;
  return true;
}

void check_parse(const PolicyParse& p) {
  if (!p.ok()) {
    if (!p.request.attributes.empty() || p.line == 0) std::abort();
    return;
  }
  const auto& a = p.request.attributes;
  if (a.size() > kLimits.attributes) std::abort();
  std::string again;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (!name_ok(a[i].first)) std::abort();
    if (a[i].first.size() + 1 + a[i].second.size() > kLimits.attribute_length) std::abort();
    if (a[i].second.find('\0') != std::string_view::npos || a[i].second.find('\n') != std::string_view::npos)
      std::abort();
    for (std::size_t j = 0; j < i; ++j)
      if (a[j].first == a[i].first) std::abort();
    if (p.request.find(a[i].first) != a[i].second) std::abort();
    again.append(a[i].first).append("=").append(a[i].second).append("\n");
  }
  again.append("\n");
  // A value that ends in CR loses it on the way back (the parser takes CR LF as the line end):
  // compare only when no value does.
  for (const auto& [k, v] : a)
    if (!v.empty() && v.back() == '\r') return;
  const PolicyParse q = parse_policy_request(again, kLimits);
  if (!q.ok() || q.request.attributes.size() != a.size()) std::abort();
  for (std::size_t i = 0; i < a.size(); ++i)
    if (q.request.attributes[i] != a[i]) std::abort();
}

bool iequal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x + 32);
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y + 32);
    if (x != y) return false;
  }
  return true;
}

void check_decision(const PolicyRequest& req, const PolicyDecision& d) {
  if (!d.error.empty()) return;  // nothing is sent
  if (d.action.find('\n') != std::string::npos || d.action.find('\r') != std::string::npos) std::abort();
  switch (d.answer) {
    case PolicyAnswer::dunno:
      if (d.action != "DUNNO") std::abort();
      break;
    case PolicyAnswer::reject:
      if (d.action.rfind("550 5.7.1 ", 0) != 0) std::abort();
      break;
    case PolicyAnswer::prepend:
      if (d.action.rfind("PREPEND X-BATV-Status: ", 0) != 0) std::abort();
      break;
  }
  // The oracle: a bounce to our domain with a tag that does not verify is refused.
  const auto state = req.find("protocol_state");
  const auto sender = req.find("sender");
  const auto rcpt = req.find("recipient");
  if (!state || !iequal(*state, "RCPT") || !sender || !sender->empty() || !rcpt) return;
  const auto at = rcpt->rfind('@');
  if (at == std::string_view::npos || !batv::relay::domain_in(fuzz::maps_config().domains.verify, rcpt->substr(at + 1)))
    return;
  const auto v = batv::crypto::verify(fuzz::maps_ring(), *rcpt, fuzz::kNow);
  const std::string original = v.original.empty() ? std::string(*rcpt) : v.original;
  const std::string_view local = std::string_view(original).substr(0, original.rfind('@'));
  if (iequal(local, "postmaster") || iequal(local, "abuse")) return;
  if (v.verdict != batv::crypto::Verdict::valid && d.answer != PolicyAnswer::reject) std::abort();
  if (v.verdict == batv::crypto::Verdict::valid && d.answer == PolicyAnswer::reject) {
    // Only when the stripped address is no mailbox (the proxy calls that malformed).
    if (d.recipient_decision.verdict != batv::crypto::Verdict::malformed) std::abort();
  }
}

// Frames, parses and decides the whole stream as the connection does; returns the output and the
// frame lengths seen.
std::string serve(std::string_view in, std::size_t chunk, std::vector<std::size_t>& frames) {
  const auto& cfg = fuzz::maps_config();
  const auto params = batv::relay::prvs_params(cfg);
  PolicyFramer framer(kLimits.request_size);
  std::string out;
  std::size_t head = 0;
  std::size_t have = chunk == 0 ? in.size() : 0;
  for (;;) {
    const std::string_view buf = in.substr(head, (chunk == 0 ? in.size() : std::min(have, in.size())) - head);
    const PolicyFrame f = framer.next(buf);
    if (f.status == PolicyFrame::Status::too_large) {
      if (buf.size() < kLimits.request_size) std::abort();
      return out;
    }
    if (f.status == PolicyFrame::Status::need_more) {
      if (chunk == 0 || have >= in.size()) return out;
      have += chunk;
      continue;
    }
    if (f.length == 0 || f.length > kLimits.request_size || f.length > buf.size()) std::abort();
    const std::string_view frame = buf.substr(0, f.length);
    if (frame.back() != '\n') std::abort();
    // The first empty line ends the frame: no earlier one inside it.
    const std::string_view body = frame.substr(0, frame.size() - (frame.size() >= 2 && frame[frame.size() - 2] == '\r' ? 2 : 1));
    if (!body.empty() && (body.front() == '\n' || body.find("\n\n") != std::string_view::npos ||
                          body.find("\n\r\n") != std::string_view::npos || body.rfind("\r\n", 0) == 0))
      std::abort();
    if (!body.empty() && body.back() != '\n') std::abort();
    frames.push_back(f.length);
    framer.reset();
    const PolicyParse p = parse_policy_request(frame, kLimits);
    check_parse(p);
    if (!p.ok()) return out;
    const PolicyDecision d = decide_policy(cfg, fuzz::maps_ring(), params, p.request, fuzz::kNow);
    check_decision(p.request, d);
    if (!d.error.empty()) return out;
    append_policy_answer(out, d.action);
    head += f.length;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::size_t> whole, pieces;
  const std::string a = serve(in, 0, whole);
  const std::size_t chunk = size == 0 ? 1 : 1 + static_cast<unsigned char>(in[0]) % 64;
  const std::string b = serve(in, chunk, pieces);
  if (a != b || whole != pieces) std::abort();
  // Every answer is "action=" + one line + an empty line; never "OK" / accept-type actions.
  std::size_t pos = 0;
  while (pos < a.size()) {
    const std::size_t end = a.find("\n\n", pos);
    if (end == std::string::npos || a.compare(pos, 7, "action=") != 0) std::abort();
    const std::string_view action = std::string_view(a).substr(pos + 7, end - pos - 7);
    if (action.find('\n') != std::string_view::npos || iequal(action.substr(0, 2), "OK")) std::abort();
    pos = end + 2;
  }
  return 0;
}
