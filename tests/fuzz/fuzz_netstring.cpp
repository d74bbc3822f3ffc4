// Fuzz target: the socketmap's query path as the connection runs it (relay/postfix:
// decode_netstring, decide_socketmap, append_netstring) on an arbitrary byte stream, whole and in
// chunks, and the netstring codec on its own.
// Invariants:
//  - decoding is incremental and canonical: the stream fed in chunks (sizes from the input's first
//    byte) gives the same netstrings as the whole buffer; a complete one re-encodes to exactly the
//    bytes it took; need_more only for a prefix of some valid netstring within the limit; an error
//    stays an error whatever follows (a reader can give up at once);
//  - encode/decode round-trips any payload;
//  - the answer to a query is "OK <data>", "NOTFOUND " or "PERM <reason>"; OK only for a query
//    "strip <key>" whose key is one of our domains with a tag crypto::verify parses, and its data
//    (the address without the tag) has no control byte; a broken netstring gets no answer (the
//    stream stops there).
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "postfix_checks.hpp"
#include "relay/postfix/netstring.hpp"
#include "relay/postfix/socketmap.hpp"

using namespace batv::relay::postfix;

namespace {

constexpr std::size_t kMax = 10000;

bool digits_prefix_ok(std::string_view s) {
  // What may precede a complete netstring of at most kMax: "", or digits without a leading zero
  // (unless the length is "0"), worth at most kMax, optionally ":" and part of the payload.
  std::size_t i = 0, len = 0;
  for (; i < s.size() && s[i] != ':'; ++i) {
    if (s[i] < '0' || s[i] > '9') return false;
    if (i == 1 && s[0] == '0') return false;
    len = len * 10 + static_cast<std::size_t>(s[i] - '0');
    if (len > kMax || i >= 5) return false;
  }
  if (i == s.size()) return true;
  if (i == 0) return false;
  return s.size() - (i + 1) <= len;  // the payload and its comma are not all there
}

void check_answer(std::string_view query, const SocketmapDecision& d) {
  const std::string_view r = d.reply;
  if (r.size() > 100000) std::abort();
  switch (d.answer) {
    case MapAnswer::notfound:
      if (r != "NOTFOUND ") std::abort();
      return;
    case MapAnswer::perm:
      if (r.rfind("PERM ", 0) != 0) std::abort();
      if (query.rfind("strip ", 0) == 0) std::abort();  // a well-formed strip query is never PERM
      return;
    case MapAnswer::found: break;
  }
  if (r.rfind("OK ", 0) != 0 || query.rfind("strip ", 0) != 0) std::abort();
  const std::string_view key = query.substr(6);
  const std::string_view data = r.substr(3);
  if (data.empty() || fuzz::has_control(data)) std::abort();
  const auto at = key.rfind('@');
  if (at == std::string_view::npos || !batv::relay::domain_in(fuzz::maps_config().domains.verify, key.substr(at + 1)))
    std::abort();
  const auto v = batv::crypto::verify(fuzz::maps_ring(), key, fuzz::kNow);
  if (v.verdict == batv::crypto::Verdict::untagged || v.verdict == batv::crypto::Verdict::malformed) std::abort();
  if (data != v.original) std::abort();
}

std::string serve(std::string_view in, std::size_t chunk, std::vector<std::string>& seen) {
  const auto& cfg = fuzz::maps_config();
  const auto params = batv::relay::prvs_params(cfg);
  std::string out;
  std::size_t head = 0;
  std::size_t have = chunk == 0 ? in.size() : std::min(chunk, in.size());
  for (;;) {
    const std::string_view buf = in.substr(head, have - head);
    const NetstringResult r = decode_netstring(buf, kMax);
    if (r.status == NetstringResult::Status::error) {
      // An error stays an error whatever follows.
      for (const char* tail : {"", ",", "0", ":", "x"})
        if (decode_netstring(std::string(buf) + tail, kMax).status != NetstringResult::Status::error) std::abort();
      return out;
    }
    if (r.status == NetstringResult::Status::need_more) {
      if (!digits_prefix_ok(buf)) std::abort();
      if (have >= in.size()) return out;
      have = std::min(in.size(), have + chunk);
      continue;
    }
    if (r.payload.size() > kMax || r.consumed > buf.size()) std::abort();
    if (encode_netstring(r.payload) != buf.substr(0, r.consumed)) std::abort();
    seen.emplace_back(r.payload);
    const SocketmapDecision d = decide_socketmap(cfg, fuzz::maps_ring(), params, r.payload, fuzz::kNow);
    check_answer(r.payload, d);
    append_netstring(out, d.reply);
    head += r.consumed;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string> whole, pieces;
  const std::string a = serve(in, 0, whole);
  const std::size_t chunk = size == 0 ? 1 : 1 + static_cast<unsigned char>(in[0]) % 32;
  const std::string b = serve(in, chunk, pieces);
  if (a != b || whole != pieces) std::abort();
  // The codec on its own: any bytes round-trip.
  const std::string enc = encode_netstring(in.substr(0, std::min(in.size(), kMax)));
  const NetstringResult r = decode_netstring(enc, kMax);
  if (!r.complete() || r.payload != in.substr(0, std::min(in.size(), kMax)) || r.consumed != enc.size()) std::abort();
  // Each answer is itself a well-formed netstring.
  std::string_view rest = a;
  while (!rest.empty()) {
    const NetstringResult x = decode_netstring(rest, 100000);
    if (!x.complete()) std::abort();
    rest.remove_prefix(x.consumed);
  }
  return 0;
}
