// Fuzz the milter codec: framing never reads past the input or accepts a length over the limit;
// a decoded command never throws.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "relay/milter/codec.hpp"

using namespace batv::relay::milter;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  constexpr std::size_t max = 4096;
  while (!in.empty()) {
    const FrameResult f = parse_packet(in, max);
    if (!f.ok) break;
    if (f.packet.consumed > in.size() || f.packet.data.size() + 1 > max) std::abort();
    (void)parse_command(f.packet);
    in.remove_prefix(f.packet.consumed);
  }
  return 0;
}
