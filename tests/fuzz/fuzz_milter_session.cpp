// Fuzz the real milter handler with packet sequences after a valid negotiation. Invariants: a
// malformed or unframeable packet never gets an accept (its reply is a tempfail and the
// connection closes); output stays bounded; nothing is answered once closed.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>

#include "conf/config.hpp"
#include "relay/milter/codec.hpp"
#include "relay/milter/handler.hpp"
#include "relay/policy.hpp"

using namespace batv;
using namespace batv::relay::milter;

namespace {
std::shared_ptr<const relay::Runtime> make_runtime() {
  const std::string text =
      "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\nverify = [\"example.com\"]\n"
      "[inbound]\nmode = \"monitor\"\n[[listener]]\nrole = \"milter\"\nlisten = \"127.0.0.1:0\"\nverify = true\n";
  auto r = conf::load_config_string(text, "f.toml", "");
  if (!r.config) std::abort();
  std::vector<crypto::KeyMaterial> m;
  m.push_back({3, true, crypto::Secret(std::string_view("secretkey"))});
  std::string err;
  auto ring = crypto::Keyring::build(m, err);
  if (!ring) std::abort();
  const auto params = relay::prvs_params(*r.config);
  return std::make_shared<const relay::Runtime>(
      relay::Runtime{std::move(*r.config), std::move(*ring), params, "mx.test", {}, {}});
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const auto rt = make_runtime();
  Handler h(rt, 0, "f", [] { return std::int64_t{1700000000}; });
  std::string out;
  const std::string neg = encode('O', std::string("\0\0\0\6\0\0\1\xff\0\x1f\xff\xff", 12));
  h.on_packet(parse_packet(neg, 4096).packet, out);
  std::string_view in(reinterpret_cast<const char*>(data), size);
  while (!in.empty() && h.state() != Handler::State::closed) {
    out.clear();
    const FrameResult f = parse_packet(in, 4096);
    if (!f.ok) {
      if (f.error == Error::incomplete) break;
      h.on_frame_error(f.error, out);
      if (split_replies(out).size() != 1 || split_replies(out)[0].cmd != 't') std::abort();
      break;
    }
    const bool malformed = !parse_command(f.packet).ok;
    h.on_packet(f.packet, out);
    const auto replies = split_replies(out);
    if (malformed && (replies.size() != 1 || replies[0].cmd != 't' || h.state() != Handler::State::closed))
      std::abort();
    if (out.size() > 64 * 1024) std::abort();  // per command: bounded by recipients kept, each < packet
    in.remove_prefix(f.packet.consumed);
  }
  return 0;
}
