// Fuzz target: the key-file parser. Invariants: no crash; an accepted file has exactly one signer
// and survives serialize -> parse unchanged.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "conf/keyfile.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto r = batv::conf::parse_keyfile(in, "fuzz.toml");
  if (r.file) {
    if (!r.errors.empty() || !r.file->signer()) std::abort();
    const std::string text = batv::conf::serialize_keyfile(*r.file);
    const auto again = batv::conf::parse_keyfile(text, "again.toml");
    if (!again.file || batv::conf::serialize_keyfile(*again.file) != text) std::abort();
  } else if (r.errors.empty()) {
    std::abort();
  }
  return 0;
}
