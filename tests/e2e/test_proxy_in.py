#!/usr/bin/env python3
"""batv-relay behind a load balancer: listener.accept_proxy_from, end to end with raw sockets.

Usage: test_proxy_in.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

The test plays the load balancer from 127.0.0.1 (in accept_proxy_from) and writes PROXY protocol
headers itself (haproxy doc/proxy-protocol.txt, v1 text and v2 binary), naming clients from the
documentation ranges (203.0.113.0/24, 198.51.100.0/24, 2001:db8::/32) that never connect
themselves. The next hop is harness.ScriptedUpstream offering XCLIENT (without NAME: no DNS), so
what the relay sends onward (forward_client = "xclient") is recorded. Checked:

  - v1 TCP4 and v2 TCP6 (with a TLV) headers: the named client is the session's client in the
    connect log (with via=<load balancer>), in XCLIENT ADDR/PORT, in allow_clients (the load
    balancer itself is not allowed), in limits.sessions_per_client and in
    inbound.accept_untagged_from; SMTP bytes sent in the same segment as the header are not lost;
  - health checks (v2 LOCAL as HAProxy 2.6 sends with `check`, v1 UNKNOWN): "221 2.0.0 ... health
    check", closed, no session, no next-hop connection, batv_proxy_health_checks_total;
  - garbage, a bad v1 address, an oversize v2 header, a header that never completes
    (timeouts.proxy_header) and an early close: no greeting, a warning naming the peer and the
    reason, batv_proxy_header_errors_total{reason};
  - a peer outside accept_proxy_from is never parsed: its "PROXY ..." line is an unknown command
    (500 5.5.1) and its own address is the client.
"""
import os
import re
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, SmtpClient, scaled, wait_until  # noqa: E402

RELAY = KEYS = None

XCLIENT_CAPS = ["PIPELINING", "8BITMIME", "XCLIENT ADDR PORT HELO PROTO"]
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, dst, sport, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def v2(src, dst, sport, dport, tlvs=b""):
    if ":" in src:
        addrs = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        fam = 0x21
    else:
        addrs = socket.inet_aton(src) + socket.inet_aton(dst)
        fam = 0x11
    body = addrs + struct.pack("!HH", sport, dport) + tlvs
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


V2_LOCAL = V2_SIG + b"\x20\x00\x00\x00"   # what HAProxy 2.6 `check` sends with send-proxy-v2


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


class ProxyInTest(cases.RelayTestCase):
    CHECK_CONFIG = True
    METRICS = True
    TIMEOUTS = {"upstream_idle": 0}

    def upstream(self):
        return super().upstream(caps=XCLIENT_CAPS)

    def relay(self, up, role="inbound", accept_proxy_from=("127.0.0.1",), allow_clients=None,
              timeouts=None, limits=None, inbound=None, debug=False):
        li = {"role": role, "forward_client": "xclient"}
        if accept_proxy_from is not None:
            li["accept_proxy_from"] = list(accept_proxy_from)
        if allow_clients is not None:
            li["allow_clients"] = list(allow_clients)
        r = self.start_relay(up, timeouts=timeouts, limits=limits, inbound=inbound,
                             extra_toml='[logging]\nlevel = "debug"\n' if debug else "", **li)
        # Inbound connects at MAIL and first probes the next hop's EHLO (one connection without a
        # client behind it): the sessions' next-hop connections are the ones after it.
        r.probes = len(r.wait_probes()) if role == "inbound" else 0
        wait_until(lambda: len(up.connections()) >= r.probes, scaled(5))
        return r

    def session_conns(self, up, r, n=0):
        """The next-hop connections of client sessions (the probe's left out); waits for n."""
        wait_until(lambda: len(up.connections()) >= r.probes + n, scaled(5))
        return up.connections()[r.probes:]

    def metrics(self, r):
        return parse_metrics(harness.metrics_text(r.metrics_port))

    def metric(self, r, name, **labels):
        return self.metrics(r).get((name, frozenset(labels.items())), 0.0)

    def lb(self, r, header, timeout=10.0):
        """A connection from the 'load balancer' (127.0.0.1) that has sent `header` (bytes)."""
        c = self.client(r, timeout)
        if header:
            c.send(header)
        return c

    def assert_closed_silently(self, c, within=5.0):
        """The relay closes without writing a byte (no greeting)."""
        c.sock.settimeout(scaled(within))
        try:
            data = c.sock.recv(4096)
        except ConnectionResetError:
            data = b""
        self.assertEqual(data, b"", "the relay wrote %r before closing" % data)

    def send_mail(self, c, sender="<alice@remote.example>", rcpt="bob@example.com", helo="client.example"):
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.cmd("EHLO " + helo).code, 250)
        self.assertEqual(c.cmd("MAIL FROM:%s" % sender).code, 250)
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        self.assertEqual(r.code, 250, r)
        self.assertEqual(c.cmd("DATA").code, 354)
        self.assertEqual(c.cmd(b"Subject: proxied\r\n\r\nhello\r\n.").code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)

    # -- the client a header names --------------------------------------------------------------

    def test_v1_header_names_the_client_everywhere(self):
        up = self.upstream()
        r = self.relay(up)
        # The header and the client's first command in one segment (a client that does not wait
        # for the greeting): the reader must leave EHLO in the socket for the session.
        c = self.lb(r, v1("203.0.113.7", "192.0.2.25", 40001, 25))
        self.send_mail(c)
        conn = self.session_conns(up, r, 1)[0]
        wait_until(lambda: conn.xclient is not None, scaled(5))
        self.assertIn("ADDR=203.0.113.7", conn.xclient)
        self.assertIn("PORT=40001", conn.xclient)
        self.assertIn("HELO=client.example", conn.xclient)
        rec = r.wait_log(lambda x: x.get("event") == "connect")
        self.assertEqual(rec.get("client"), "203.0.113.7:40001", rec["_raw"])
        self.assertEqual(rec.get("via"), "%s:%d" % (HOST, c.local_port), rec["_raw"])
        end = r.wait_log("session_end")
        self.assertEqual(end.get("client"), "203.0.113.7:40001", end["_raw"])
        self.assertEqual(end.get("reason"), "quit", end["_raw"])

    def test_v1_header_in_the_same_segment_as_ehlo(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.lb(r, v1("203.0.113.8", "192.0.2.25", 40002, 25) + b"EHLO early.example\r\n")
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.read_reply().code, 250)  # the EHLO that came with the header
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertEqual(r.wait_log("connect").get("client"), "203.0.113.8:40002")

    def test_v2_tcp6_with_tlv(self):
        up = self.upstream()
        r = self.relay(up)
        tlv = b"\x04\x00\x03abc"  # PP2_TYPE_NOOP, skipped
        c = self.lb(r, v2("2001:db8::25", "2001:db8::1", 1234, 25, tlv))
        self.send_mail(c)
        conn = self.session_conns(up, r, 1)[0]
        wait_until(lambda: conn.xclient is not None, scaled(5))
        self.assertIn("ADDR=IPV6:2001:db8::25", conn.xclient)
        self.assertIn("PORT=1234", conn.xclient)
        self.assertEqual(r.wait_log("connect").get("client"), "[2001:db8::25]:1234")

    def test_admission_uses_the_real_client(self):
        up = self.upstream()
        # Only 203.0.113.0/24 may connect: the load balancer's own 127.0.0.1 may not.
        r = self.relay(up, allow_clients=["203.0.113.0/24"], limits={"sessions_per_client": 1})
        ok = self.lb(r, v2("203.0.113.9", "192.0.2.25", 5000, 25))
        self.assertEqual(ok.read_reply().code, 220)
        # A second session of the same client is over sessions_per_client...
        again = self.lb(r, v1("203.0.113.9", "192.0.2.25", 5001, 25))
        rep = again.read_reply()
        self.assertEqual(rep.code, 421, rep)
        # ...another client of the allowed network is not.
        other = self.lb(r, v1("203.0.113.10", "192.0.2.25", 5002, 25))
        self.assertEqual(other.read_reply().code, 220)
        # A client outside allow_clients is refused, by its own address.
        denied = self.lb(r, v1("198.51.100.9", "192.0.2.25", 5003, 25))
        rep = denied.read_reply()
        self.assertEqual(rep.code, 554, rep)
        self.assertIn("198.51.100.9", rep.text)
        for c in (ok, other):
            self.assertEqual(c.cmd("QUIT").code, 221)

    def test_accept_untagged_from_uses_the_real_client(self):
        up = self.upstream()
        r = self.relay(up, inbound={"accept_untagged_from": ["203.0.113.0/24"]})
        # An untagged bounce to one of our domains: accepted from the exempt client...
        c = self.lb(r, v1("203.0.113.20", "192.0.2.25", 6000, 25))
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.cmd("EHLO mx.remote.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.com>").code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        # ...refused from another one behind the same load balancer.
        d = self.lb(r, v1("198.51.100.20", "192.0.2.25", 6001, 25))
        self.assertEqual(d.read_reply().code, 220)
        self.assertEqual(d.cmd("EHLO mx.remote.example").code, 250)
        self.assertEqual(d.cmd("MAIL FROM:<>").code, 250)
        rep = d.cmd("RCPT TO:<bob@example.com>")
        self.assertEqual(rep.code, 550, rep)
        self.assertEqual(d.cmd("QUIT").code, 221)

    def test_outbound_role_signs_for_the_real_client(self):
        up = self.upstream()
        r = self.relay(up, role="outbound", allow_clients=["203.0.113.0/24"])
        c = self.lb(r, v2("203.0.113.30", "192.0.2.25", 7000, 587))
        self.send_mail(c, sender="<alice@example.com>", rcpt="carol@remote.example")
        tx = up.wait_transactions(1)[0]
        self.assertRegex(tx.mail, r"(?i)^MAIL FROM:<prvs=\d{4}[0-9a-f]{6}=alice@example\.com>")
        conn = self.session_conns(up, r, 1)[0]
        wait_until(lambda: conn.xclient is not None, scaled(5))
        self.assertIn("ADDR=203.0.113.30", conn.xclient)

    # -- health checks ---------------------------------------------------------------------------

    def test_health_checks_are_answered_and_not_sessions(self):
        up = self.upstream()
        r = self.relay(up, debug=True)
        for i, header in enumerate((V2_LOCAL, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 whatever\r\n")):
            c = self.lb(r, header)
            rep = c.read_reply()
            self.assertEqual(rep.code, 221, rep)
            self.assertIn("health check", rep.text)
            c.sock.settimeout(scaled(5))
            self.assertEqual(c.sock.recv(100), b"", "closed after the reply")
            # In order: the debug line of this check before the next one starts.
            r.wait_logs(lambda x: x.get("event") == "proxy_health_check", i + 1)
        # A plain TCP check: connected and gone without a byte (no warning every few seconds).
        c = SmtpClient(r.port(), 10)
        c.close()
        self.assertTrue(wait_until(lambda: self.metric(r, "batv_proxy_health_checks_total") == 4, scaled(5)))
        checks = r.wait_logs(lambda x: x.get("event") == "proxy_health_check", 4)
        self.assertEqual([x.get("command") for x in checks], ["LOCAL", "UNKNOWN", "UNKNOWN", "none"])
        self.assertEqual(r.logs("proxy_header_failed"), [])
        self.assertEqual(self.metric(r, "batv_sessions_total", role="inbound"), 0)
        self.assertEqual(self.session_conns(up, r), [], "a health check opened a next-hop connection")
        self.assertEqual(r.logs("connect"), [])
        self.assertEqual(r.logs("session_end"), [])

    # -- bad headers -----------------------------------------------------------------------------

    def test_bad_headers_close_without_greeting(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"proxy_header": 1})
        cases = [
            ("not_proxy", b"EHLO client.example\r\n"),
            ("bad_address", b"PROXY TCP4 203.0.113.007 192.0.2.25 1 25\r\n"),
            ("bad_port", b"PROXY TCP4 203.0.113.7 192.0.2.25 01 25\r\n"),
            ("too_large", V2_SIG + b"\x21\x11\x02\x09"),              # 16 + 521 > 536
            ("unsupported_family", V2_SIG + b"\x21\x31\x00\xd8"),     # PROXY over AF_UNIX
            ("timeout", b"PROXY TCP4 203.0.113.7 "),                  # never completes
        ]
        for reason, header in cases:
            with self.subTest(reason=reason):
                c = self.lb(r, header)
                t0 = time.monotonic()
                self.assert_closed_silently(c, within=10.0)
                if reason == "timeout":
                    self.assertGreaterEqual(time.monotonic() - t0, 0.8)
                rec = r.wait_log(lambda x, p=c.local_port, why=reason: x.get("event") == "proxy_header_failed"
                                 and x.get("reason") == why and x.get("peer") == "%s:%d" % (HOST, p))
                self.assertIsNotNone(rec, reason)
                self.assertEqual(rec.get("level"), "warning", rec["_raw"])
        # A load balancer that goes away in the middle of a header.
        c = self.lb(r, b"PROXY TCP4 203.0.113.7 192.0.2.25 ")
        c.close()
        self.assertIsNotNone(r.wait_log(lambda x: x.get("event") == "proxy_header_failed" and x.get("reason") == "closed"))
        m = self.metrics(r)
        for reason, _ in cases + [("closed", None)]:
            self.assertEqual(m.get(("batv_proxy_header_errors_total", frozenset({("reason", reason)}))), 1.0, reason)
        self.assertEqual(self.metric(r, "batv_sessions_total", role="inbound"), 0)
        self.assertEqual(self.session_conns(up, r), [])

    # -- peers outside accept_proxy_from ---------------------------------------------------------

    def test_untrusted_peer_is_never_parsed(self):
        up = self.upstream()
        r = self.relay(up, accept_proxy_from=["192.0.2.0/24"])  # not us (127.0.0.1)
        c = self.client(r)
        self.assertEqual(c.read_reply().code, 220)
        rep = c.cmd("PROXY TCP4 203.0.113.7 192.0.2.25 40001 25")
        self.assertEqual(rep.code, 500, rep)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)  # the next hop is opened at MAIL
        self.assertEqual(c.cmd("QUIT").code, 221)
        rec = r.wait_log("connect")
        self.assertEqual(rec.get("client"), "%s:%d" % (HOST, c.local_port), rec["_raw"])
        self.assertIsNone(rec.get("via"), rec["_raw"])
        self.assertEqual(r.logs("proxy_header_failed"), [])
        conn = self.session_conns(up, r, 1)[0]
        wait_until(lambda: conn.xclient is not None, scaled(5))
        self.assertIn("ADDR=%s" % HOST, conn.xclient)

    def test_no_list_means_no_parsing(self):
        up = self.upstream()
        r = self.relay(up, accept_proxy_from=None)
        c = self.client(r)
        c.send(v1("203.0.113.7", "192.0.2.25", 1, 25))  # before the greeting: just early input
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.read_reply().code, 500)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertEqual(r.wait_log("connect").get("client"), "%s:%d" % (HOST, c.local_port))


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
