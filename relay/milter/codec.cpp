#include "relay/milter/codec.hpp"

namespace batv::relay::milter {

std::string_view to_string(Error e) {
  switch (e) {
    case Error::incomplete: return "incomplete";
    case Error::too_large: return "packet_too_large";
    case Error::empty: return "empty_packet";
    case Error::unknown_command: return "unknown_command";
    case Error::malformed: return "malformed_packet";
  }
  return "?";
}

namespace {
std::uint32_t be32(std::string_view s) {
  return (std::uint32_t(std::uint8_t(s[0])) << 24) | (std::uint32_t(std::uint8_t(s[1])) << 16) |
         (std::uint32_t(std::uint8_t(s[2])) << 8) | std::uint32_t(std::uint8_t(s[3]));
}
void put32(std::string& out, std::uint32_t v) {
  out.push_back(char(v >> 24));
  out.push_back(char(v >> 16));
  out.push_back(char(v >> 8));
  out.push_back(char(v));
}
// Takes one NUL-terminated string off the front of `in`; false when there is no NUL.
bool take_string(std::string_view& in, std::string& out) {
  const auto nul = in.find('\0');
  if (nul == std::string_view::npos) return false;
  out.assign(in.substr(0, nul));
  in.remove_prefix(nul + 1);
  return true;
}
}  // namespace

FrameResult parse_packet(std::string_view in, std::size_t max_packet) {
  FrameResult r;
  if (in.size() < 4) return r;
  const std::uint32_t len = be32(in);
  if (len == 0) { r.error = Error::empty; return r; }
  if (len > max_packet) { r.error = Error::too_large; return r; }
  if (in.size() - 4 < len) return r;
  r.packet.cmd = in[4];
  r.packet.data = in.substr(5, len - 1);
  r.packet.consumed = 4 + std::size_t(len);
  r.ok = true;
  return r;
}

CommandResult parse_command(const Packet& p) {
  CommandResult r;
  std::string_view d = p.data;
  auto fail = [&](Error e) { r.error = e; r.ok = false; return r; };
  auto done = [&](Command c) { r.command = std::move(c); r.ok = true; return r; };
  switch (p.cmd) {
    case 'O': {
      if (d.size() < 12) return fail(Error::malformed);
      return done(OptNeg{be32(d), be32(d.substr(4)), be32(d.substr(8))});
    }
    case 'D': {
      if (d.empty()) return fail(Error::malformed);
      Macros m;
      m.for_cmd = d[0];
      d.remove_prefix(1);
      while (!d.empty()) {
        std::string name, value;
        if (!take_string(d, name) || !take_string(d, value) || name.empty()) return fail(Error::malformed);
        m.values.emplace_back(std::move(name), std::move(value));
      }
      return done(std::move(m));
    }
    case 'C': {
      Connect c;
      if (!take_string(d, c.hostname) || d.empty()) return fail(Error::malformed);
      c.family = d[0];
      d.remove_prefix(1);
      if (c.family == 'U') {
        if (!d.empty()) return fail(Error::malformed);
        return done(std::move(c));
      }
      if (c.family != 'L' && c.family != '4' && c.family != '6') return fail(Error::malformed);
      if (d.size() < 2) return fail(Error::malformed);
      c.port = std::uint16_t((std::uint8_t(d[0]) << 8) | std::uint8_t(d[1]));
      d.remove_prefix(2);
      if (!take_string(d, c.address) || !d.empty()) return fail(Error::malformed);
      return done(std::move(c));
    }
    case 'H': {
      Helo h;
      if (!take_string(d, h.name) || !d.empty()) return fail(Error::malformed);
      return done(std::move(h));
    }
    case 'M':
    case 'R': {
      Envelope e;
      e.rcpt = p.cmd == 'R';
      if (!take_string(d, e.address)) return fail(Error::malformed);
      while (!d.empty()) {
        std::string a;
        if (!take_string(d, a)) return fail(Error::malformed);
        if (!a.empty()) e.args.push_back(std::move(a));
      }
      return done(std::move(e));
    }
    case 'L': {
      Header h;
      if (!take_string(d, h.name) || !take_string(d, h.value) || !d.empty()) return fail(Error::malformed);
      return done(std::move(h));
    }
    case 'B': return done(Body{d});
    case 'T': case 'N': case 'E': case 'A': case 'Q': case 'K':
      // E may carry a last body chunk: we never ask for the body, and ignore it.
      if (p.cmd != 'E' && !d.empty()) return fail(Error::malformed);
      return done(Simple{p.cmd});
    case 'U': {
      Unknown u;
      if (!take_string(d, u.line) || !d.empty()) return fail(Error::malformed);
      return done(std::move(u));
    }
    default: return fail(Error::unknown_command);
  }
}

std::string encode(char cmd, std::string_view data) {
  std::string out;
  out.reserve(5 + data.size());
  put32(out, std::uint32_t(data.size() + 1));
  out.push_back(cmd);
  out.append(data);
  return out;
}

std::string encode_optneg(std::uint32_t version, std::uint32_t actions, std::uint32_t protocol,
                          const std::vector<SymList>& lists) {
  std::string d;
  put32(d, version);
  put32(d, actions);
  put32(d, protocol);
  for (const SymList& l : lists) {
    put32(d, static_cast<std::uint32_t>(l.stage));
    d.append(l.macros).push_back('\0');
  }
  return encode('O', d);
}

std::string encode_replycode(std::string_view text) {
  std::string d;
  for (char c : text) {
    if (c == '\r' || c == '\n' || c == '\0') continue;  // one line, never a NUL inside
    d.push_back(c);
    if (c == '%') d.push_back('%');
  }
  d.push_back('\0');
  return encode('y', d);
}

namespace {
std::string strings(std::initializer_list<std::string_view> parts) {
  std::string d;
  for (std::string_view p : parts) d.append(p).push_back('\0');
  return d;
}
}  // namespace

std::string encode_chgfrom(std::string_view from, std::string_view args) {
  return encode('e', args.empty() ? strings({from}) : strings({from, args}));
}
std::string encode_delrcpt(std::string_view rcpt) { return encode('-', strings({rcpt})); }
std::string encode_addrcpt_par(std::string_view rcpt, std::string_view args) {
  return encode('2', strings({rcpt, args}));
}
std::string encode_addheader(std::string_view name, std::string_view value) {
  return encode('h', strings({name, value}));
}
std::string encode_chgheader(std::uint32_t index, std::string_view name, std::string_view value) {
  std::string d;
  put32(d, index);
  d += strings({name, value});
  return encode('m', d);
}

std::vector<Reply> split_replies(std::string_view wire) {
  std::vector<Reply> out;
  while (wire.size() >= 5) {
    const std::uint32_t len = be32(wire);
    if (len == 0 || wire.size() - 4 < len) break;
    out.push_back(Reply{wire[4], std::string(wire.substr(5, len - 1))});
    wire.remove_prefix(4 + len);
  }
  return out;
}

}  // namespace batv::relay::milter
