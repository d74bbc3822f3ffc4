// The milter codec and handler: framing bounds, negotiation, signing, 452 split, verify, order.
#include <doctest/doctest.h>

#include <memory>
#include <string>

#include "relay/milter/codec.hpp"
#include "relay/milter/handler.hpp"
#include "relay/policy.hpp"
#include "tests/unit/fixtures.hpp"

using namespace batv;
using namespace batv::relay::milter;

namespace {

std::shared_ptr<const relay::Runtime> runtime(const std::string& listener_extra, const std::string& extra = "") {
  const std::string text = "key_file = \"k\"\n[domains]\nsign = [\"example.com\"]\nverify = [\"example.com\"]\n" + extra +
                           "[[listener]]\nrole = \"milter\"\nlisten = \"127.0.0.1:0\"\n" + listener_extra;
  auto r = conf::load_config_string(text, "t.toml", "");
  REQUIRE_MESSAGE(r.config.has_value(), (r.errors.empty() ? "" : conf::format(r.errors[0])));
  const auto params = relay::prvs_params(*r.config);
  return std::make_shared<const relay::Runtime>(relay::Runtime{std::move(*r.config), test::spec_ring(), params, "mx.test", {}, {}});
}

std::string str(std::initializer_list<std::string_view> parts) {
  std::string d;
  for (auto p : parts) d.append(p).push_back('\0');
  return d;
}
std::string be32(std::uint32_t v) { return {char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; }

struct Driver {
  Handler h;
  explicit Driver(std::shared_ptr<const relay::Runtime> rt) : h(std::move(rt), 0, "t", [] { return test::T1; }) {}
  std::vector<Reply> send(char cmd, std::string data = {}) {
    const std::string wire = encode(cmd, data);
    auto f = parse_packet(wire, 65536);
    REQUIRE(f.ok);
    std::string out;
    h.on_packet(f.packet, out);
    return split_replies(out);
  }
  void negotiate() { REQUIRE(send('O', be32(6) + be32(0x1ff) + be32(0x1fffff)).at(0).cmd == 'O'); }
  void macros(const std::string& addr, const std::string& auth = "", const std::string& daemon = "smtpd",
              const std::string& name = "client.example") {
    send('D', "M" + str({"{client_addr}", addr, "{auth_authen}", auth, "{daemon_name}", daemon, "{client_name}", name}));
  }
};

}  // namespace

TEST_CASE("milter codec: framing bounds and malformed packets") {
  CHECK(parse_packet(std::string("\0\0", 2), 100).error == Error::incomplete);
  CHECK(parse_packet(std::string("\0\0\0\0", 4), 100).error == Error::empty);
  CHECK(parse_packet(be32(101) + "x", 100).error == Error::too_large);
  auto f = parse_packet(encode('H', str({"mx"})) + "tail", 100);
  REQUIRE(f.ok);
  CHECK(f.packet.consumed == 8);
  struct Case { char cmd; std::string data; bool ok; };
  const Case cases[] = {
      {'O', be32(6) + be32(1), false},
      {'C', str({"h"}) + "4" + std::string("\0\x19", 2) + str({"192.0.2.1"}), true},
      {'C', str({"h"}) + "6" + std::string("\0\x19", 2) + str({"2001:db8::1"}), true},
      {'C', str({"h"}) + "U", true},
      {'C', str({"h"}) + "L" + std::string("\0\0", 2) + str({"/tmp/s"}), true},
      {'C', str({"h"}) + "X", false},
      {'C', str({"h"}) + "4", false},
      {'M', str({"<a@b>", "SIZE=1"}), true},
      {'M', "<a@b>", false},
      {'D', "M" + str({"i"}), false},
      {'Q', "x", false},
      {'Z', "", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.cmd);
    Packet p{c.cmd, c.data, 0};
    CHECK(parse_command(p).ok == c.ok);
  }
  CHECK(split_replies(encode_replycode("550 5.7.1 100% bad\r\n")).at(0).data == std::string("550 5.7.1 100%% bad\0", 20));
}

TEST_CASE("milter MAIL: answered with continue when the MTA cannot skip the reply") {
  Driver d(runtime(""));
  REQUIRE(d.send('O', be32(6) + be32(0x1ff) + be32(0x3fff)).at(0).cmd == 'O');  // no SMFIP_NR_MAIL
  d.macros("127.0.0.1");
  const auto m = d.send('M', str({"<user@example.com>"}));
  REQUIRE(m.size() == 1);
  CHECK(m[0].cmd == 'c');
}

TEST_CASE("milter negotiation: only the steps and actions needed; macros by stage") {
  Driver d(runtime(""));
  auto r = d.send('O', be32(6) + be32(0x1ff) + be32(0x1fffff));
  REQUIRE(r.size() == 1);
  const std::string& o = r[0].data;
  REQUIRE(o.size() > 12);
  const auto u32 = [&](std::size_t at) {
    return (std::uint32_t(std::uint8_t(o[at])) << 24) | (std::uint32_t(std::uint8_t(o[at + 1])) << 16) |
           (std::uint32_t(std::uint8_t(o[at + 2])) << 8) | std::uint8_t(o[at + 3]);
  };
  CHECK(u32(0) == 6);
  CHECK(u32(4) == (act::chgfrom | act::setsymlist));
  CHECK((u32(8) & proto::nohdrs));
  CHECK((u32(8) & proto::nobody));
  CHECK_FALSE((u32(8) & proto::nomail));
  CHECK_FALSE((u32(8) & proto::norcpt));
  CHECK((u32(8) & proto::nr_mail));   // MAIL is never refused: no reply, one round trip fewer
  CHECK_FALSE((u32(8) & proto::nr_rcpt));
  CHECK(o.find("{client_addr} {client_name} {auth_authen} {daemon_name} i") != std::string::npos);

  Driver mon(runtime("verify = true\n", "[inbound]\nmode = \"monitor\"\n"));
  auto m = mon.send('O', be32(6) + be32(0x1ff) + be32(0x1fffff));
  CHECK((u32(8) & proto::nohdrs));  // the first one
  const std::string& o2 = m.at(0).data;
  const std::uint32_t p2 = (std::uint32_t(std::uint8_t(o2[8])) << 24) | (std::uint32_t(std::uint8_t(o2[9])) << 16) |
                           (std::uint32_t(std::uint8_t(o2[10])) << 8) | std::uint8_t(o2[11]);
  CHECK_FALSE((p2 & proto::nohdrs));

  Driver old(runtime(""));
  CHECK(old.send('O', be32(2) + be32(0x1ff) + be32(0x3f)).at(0).cmd == 't');
  CHECK(old.h.state() == Handler::State::closed);
  Driver noact(runtime(""));
  CHECK(noact.send('O', be32(6) + be32(0x3f) + be32(0x3f)).at(0).cmd == 't');
}

TEST_CASE("milter signing: ours by client, auth or daemon name; CHGFROM keeps ESMTP args") {
  struct Case { std::string addr, auth, daemon; bool sign; };
  const Case cases[] = {
      {"127.0.0.1", "", "smtpd", true},
      {"192.0.2.9", "alice", "smtpd", true},
      {"192.0.2.9", "", "ORIGINATING", true},
      {"192.0.2.9", "", "smtpd", false},
  };
  for (const auto& c : cases) {
    CAPTURE(c.addr);
    CAPTURE(c.daemon);
    Driver d(runtime(""));
    d.negotiate();
    d.macros(c.addr, c.auth, c.daemon);
    CHECK(d.send('M', str({"<user@example.com>", "SIZE=10", "BODY=8BITMIME"})).empty());  // SMFIP_NR_MAIL
    CHECK(d.send('R', str({"<x@elsewhere.org>"})).at(0).cmd == 'c');
    auto e = d.send('E');
    REQUIRE_FALSE(e.empty());
    CHECK(e.back().cmd == 'a');
    if (c.sign) {
      REQUIRE(e.size() == 2);
      CHECK(e[0].cmd == 'e');
      CHECK(e[0].data == str({"<prvs=368291fcbb=user@example.com>", "SIZE=10 BODY=8BITMIME"}));
    } else {
      CHECK(e.size() == 1);
    }
  }
}

TEST_CASE("milter: a later recipient with a different decision gets 452, except non-smtpd") {
  const std::string extra = "[signing]\nexempt_destinations = [\"@lists.example.org\"]\n";
  Driver d(runtime("", extra));
  d.negotiate();
  d.macros("127.0.0.1");
  d.send('M', str({"<user@example.com>"}));
  CHECK(d.send('R', str({"<x@elsewhere.org>"})).at(0).cmd == 'c');
  auto r = d.send('R', str({"<l@lists.example.org>"}));
  CHECK(r.at(0).cmd == 'y');
  CHECK(r.at(0).data.rfind("452 4.5.3 ", 0) == 0);

  Driver local(runtime("", extra));
  local.negotiate();
  local.macros("127.0.0.1", "", "host.example", "localhost");
  local.send('M', str({"<user@example.com>"}));
  CHECK(local.send('R', str({"<x@elsewhere.org>"})).at(0).cmd == 'c');
  CHECK(local.send('R', str({"<l@lists.example.org>"})).at(0).cmd == 'c');
  CHECK(local.send('E').at(0).cmd == 'e');
}

TEST_CASE("milter verify: bounce to an untagged address refused; tagged one stripped at EOM") {
  Driver d(runtime("verify = true\n"));
  d.negotiate();
  d.macros("192.0.2.9");
  d.send('M', str({"<>"}));
  auto r = d.send('R', str({"<user@example.com>"}));
  CHECK(r.at(0).cmd == 'y');
  CHECK(r.at(0).data.rfind("550 5.7.1 bounce refused: address not tagged", 0) == 0);
  CHECK(d.send('R', str({"<prvs=368291fcbb=user@example.com>", "NOTIFY=NEVER", "ORCPT=rfc822;x@y"})).at(0).cmd == 'c');
  auto e = d.send('E');
  REQUIRE(e.size() == 3);
  CHECK(e[0].cmd == '-');
  CHECK(e[0].data == str({"<prvs=368291fcbb=user@example.com>"}));
  CHECK(e[1].cmd == '2');
  CHECK(e[1].data == str({"<user@example.com>", "NOTIFY=NEVER ORCPT=rfc822;x@y"}));
  CHECK(e[2].cmd == 'a');
}

TEST_CASE("milter verify monitor: sender's X-BATV-Status removed, ours added") {
  Driver d(runtime("verify = true\n", "[inbound]\nmode = \"monitor\"\n"));
  d.negotiate();
  d.macros("192.0.2.9");
  d.send('M', str({"<>"}));
  CHECK(d.send('R', str({"<user@example.com>"})).at(0).cmd == 'c');
  d.send('L', str({"X-BATV-Status", "valid"}));
  d.send('L', str({"x-batv-status", "valid"}));
  auto e = d.send('E');
  REQUIRE(e.size() == 4);
  CHECK(e[0].cmd == 'm');  // the sender's two headers deleted, last first
  CHECK(e[0].data == be32(2) + str({"X-BATV-Status", ""}));
  CHECK(e[1].data == be32(1) + str({"X-BATV-Status", ""}));
  CHECK(e[2].cmd == 'h');
  CHECK(e[2].data == str({"X-BATV-Status", "untagged"}));
  CHECK(e[3].cmd == 'a');
}

TEST_CASE("milter: out-of-order commands tempfail; Abort and new MAIL reset the message") {
  Driver d(runtime(""));
  CHECK(d.send('M', str({"<a@example.com>"})).at(0).cmd == 't');  // before negotiation: closes
  CHECK(d.h.state() == Handler::State::closed);
  Driver e(runtime(""));
  e.negotiate();
  CHECK(e.send('R', str({"<x@y.org>"})).at(0).cmd == 't');
  CHECK(e.send('E').at(0).cmd == 't');
  e.macros("127.0.0.1");
  e.send('M', str({"<user@example.com>"}));
  e.send('R', str({"<x@y.org>"}));
  e.send('A');
  CHECK(e.send('E').at(0).cmd == 't');
  CHECK(e.send('O', be32(6) + be32(0x1ff) + be32(0x3f)).at(0).cmd == 't');  // negotiation repeated
}
