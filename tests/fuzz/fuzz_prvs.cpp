// Fuzz target: the prvs parser, verifier and signer on arbitrary addresses.
// Invariants: no crash; a valid verdict implies a well-formed tag whose re-signing at the same day
// reproduces it; sign never returns a local part over 64 octets.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "crypto/keyring.hpp"
#include "crypto/prvs.hpp"

using namespace batv::crypto;

namespace {
const Keyring& ring() {
  static const Keyring r = [] {
    std::vector<KeyMaterial> m;
    m.push_back({3, true, Secret(std::string_view("secretkey"))});
    m.push_back({5, false, Secret(std::string_view("other"))});
    std::string err;
    return std::move(*Keyring::build(m, err));
  }();
  return r;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::int64_t now = 1700000000;
  const ParseResult p = parse_tag(in);
  const VerifyResult v = verify(ring(), in, now);
  if (v.verdict == Verdict::valid || v.verdict == Verdict::expired ||
      v.verdict == Verdict::bad_signature || v.verdict == Verdict::unknown_key) {
    if (p.status != ParseStatus::ok) std::abort();
    if (v.original.size() + 16 != in.size()) std::abort();
  } else if ((v.verdict == Verdict::malformed) != (p.status == ParseStatus::malformed)) {
    std::abort();
  }
  PrvsParams lc;
  lc.hash = HashMode::lowercase_local;
  (void)verify(ring(), in, now, lc);
  const SignResult s = sign(ring(), in, now);
  if (s.tagged) {
    const auto at = s.tagged->rfind('@');
    if (at == std::string::npos || at > 64 || s.tagged->size() > 254) std::abort();
    if (verify(ring(), *s.tagged, now).verdict != Verdict::valid) std::abort();
  }
  return 0;
}
