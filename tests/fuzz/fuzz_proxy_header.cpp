// Fuzz target: the PROXY protocol header parser (relay/proxy_header) on arbitrary bytes, as the
// whole input received so far and as every prefix of it, the way relay/server.cpp reads.
// Invariants: no crash; need_more asks for at least one byte and never for more than the header
// (a prefix of a header that parses asks for at most what is left of it, so the reader never
// consumes a byte behind the header); errors are sticky (a longer input with the same start never
// parses); a parsed header takes at most the input, at most 107 bytes for v1 and max_size for v2,
// has addresses of its family, and parses to the same value from exactly its own bytes; a parsed
// PROXY header re-encoded by our sender (relay/client_identity) parses back to the same endpoints.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "relay/client_identity.hpp"
#include "relay/proxy_header.hpp"

using namespace batv::relay;

namespace {

constexpr std::size_t kMax = 536;

bool same(const ProxyHeader& a, const ProxyHeader& b) {
  return a.version == b.version && a.command == b.command && a.family == b.family && a.src == b.src &&
         a.dst == b.dst && a.src_port == b.src_port && a.dst_port == b.dst_port && a.length == b.length;
}

void check_done(const ProxyHeader& h, std::string_view in) {
  if (h.length == 0 || h.length > in.size()) std::abort();
  if (h.version == 1 && h.length > proxy_v1_max_line) std::abort();
  if (h.version == 2 && (h.length > kMax || h.length < proxy_v2_fixed_size)) std::abort();
  if (h.version != 1 && h.version != 2) std::abort();
  if (h.command == ProxyHeader::Command::proxy) {
    if (h.family == ProxyHeader::Family::inet && (!h.src.is_v4() || !h.dst.is_v4())) std::abort();
    if (h.family == ProxyHeader::Family::inet6 && (!h.src.is_v6() || !h.dst.is_v6())) std::abort();
    if (h.family != ProxyHeader::Family::inet && h.family != ProxyHeader::Family::inet6) std::abort();
    // Our own sender's headers for these endpoints read back to them.
    const boost::asio::ip::tcp::endpoint src(h.src, h.src_port), dst(h.dst, h.dst_port);
    for (const auto& wire : {proxy_v1_header(src, dst), proxy_v2_header(src, dst)}) {
      const ProxyParse back = parse_proxy_header(wire, kMax);
      if (back.status != ProxyParse::Status::done || back.header.length != wire.size()) std::abort();
      if (back.header.command == ProxyHeader::Command::proxy &&
          (back.header.src_port != h.src_port || back.header.dst_port != h.dst_port))
        std::abort();
    }
  } else if (h.command == ProxyHeader::Command::unknown && h.version != 1) {
    std::abort();
  } else if (h.command == ProxyHeader::Command::local && h.version != 2) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const ProxyParse whole = parse_proxy_header(in, kMax);
  if (whole.status == ProxyParse::Status::done) {
    check_done(whole.header, in);
    const ProxyParse exact = parse_proxy_header(in.substr(0, whole.header.length), kMax);
    if (exact.status != ProxyParse::Status::done || !same(exact.header, whole.header)) std::abort();
  }
  if (whole.status == ProxyParse::Status::need_more && whole.need == 0) std::abort();
  // Every prefix, as a reader sees the bytes arrive.
  bool errored = false;
  for (std::size_t n = 0; n <= in.size(); ++n) {
    const ProxyParse p = parse_proxy_header(in.substr(0, n), kMax);
    switch (p.status) {
      case ProxyParse::Status::need_more:
        if (errored || p.need == 0) std::abort();
        if (whole.status == ProxyParse::Status::done && n + p.need > whole.header.length) std::abort();
        break;
      case ProxyParse::Status::error:
        errored = true;
        if (to_string(p.error) == "other") std::abort();
        break;
      case ProxyParse::Status::done:
        if (errored) std::abort();
        if (whole.status != ProxyParse::Status::done || !same(p.header, whole.header)) std::abort();
        return 0;  // longer prefixes only add bytes behind the header
    }
  }
  if (errored && whole.status != ProxyParse::Status::error) std::abort();
  return 0;
}
