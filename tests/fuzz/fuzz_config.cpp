// Fuzz target: the relay config loader. Invariants: no crash; config set iff no errors; every
// error names the file.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "conf/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const auto r = batv::conf::load_config_string(in, "fuzz.toml", "/etc/batv-relay");
  if (r.config.has_value() == !r.errors.empty()) std::abort();
  for (const auto& e : r.errors)
    if (e.file != "fuzz.toml") std::abort();
  return 0;
}
