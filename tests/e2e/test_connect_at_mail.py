#!/usr/bin/env python3
"""The inbound listener opens its next-hop connection at the first MAIL (upstream_connect).

Usage: test_connect_at_mail.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

Like Postfix's smtpd_proxy, an inbound listener (upstream_connect = "mail", its default) answers
the greeting and EHLO itself and connects to the MX only when a MAIL is accepted, so Internet
clients that never send mail hold no MX connection. EHLO offers the MX's extensions as the relay
last learned them: from a probe connection at start-up and after every reload (event=upstream_probe),
refreshed by every real next-hop connection; a conservative set (PIPELINING, SIZE, ENHANCEDSTATUSCODES)
before anything was learned. Checked here against harness.ScriptedUpstream playing the MX, counting
its connections and the relay's batv_upstream_connections_total{role="inbound"}:
  * EHLO + QUIT sessions open no MX connection (the probe is the only one); with
    upstream_connect = "connect" each one does (the old behaviour);
  * EHLO shows what the probe learned (SIZE of the MX, no CHUNKING when the MX has none);
  * a changed MX is seen after one real connection, and after a reload's probe;
  * a probe that fails does not stop the relay: conservative EHLO, MAIL gets 451 4.4.1, the
    session goes on;
  * MX down at MAIL time: 451 4.4.1 for that MAIL, RSET/NOOP/QUIT still answered;
  * a MAIL parameter the client was offered but the MX reached at MAIL lacks: 451 4.3.3, and the
    next EHLO no longer offers it;
  * XCLIENT goes to the MX when the connection opens, before MAIL; RSET and a second transaction
    use the same MX connection.
"""
import os
import re
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import (DEFAULT_CAPS, closed_port, expected_tag, run_tests,  # noqa: E402
                     wait_until)

RELAY = KEYS = None
CONSERVATIVE = ["PIPELINING", "ENHANCEDSTATUSCODES"]  # plus SIZE <limits.message_size>
NEEDS_MX = ["8BITMIME", "SMTPUTF8", "DSN", "CHUNKING"]


def ehlo_names(reply):
    """The extension keywords of an EHLO reply (first line, the host name, left out)."""
    return [x.split(" ", 1)[0].upper() for x in reply.text.split("\n")[1:]]


def ehlo_size(reply):
    for x in reply.text.split("\n")[1:]:
        if x.upper().startswith("SIZE"):
            return int(x.split()[1])
    return None


class ConnectAtMailTest(cases.RelayTestCase):
    """relay(port, **listener keys): one inbound listener (forward_client none) with metrics;
    its start waits for the probe (harness Relay.wait_probes)."""

    HELO = "mx.remote.test"
    LISTENER = {"role": "inbound", "forward_client": "none"}
    RELAY_KW = {"verify_domains": ["example.com"]}
    TIMEOUTS = {"upstream_idle": 0}
    METRICS = True

    def setUp(self):
        super().setUp()
        self.rcpt = expected_tag("homer@example.com")  # a bounce to a valid tag: accepted

    def metric(self, name, **labels):
        text = harness.metrics_text(self.metrics_port)
        want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
        m = re.search(r"^%s\{%s\} (\d+)$" % (re.escape(name), re.escape(want)), text, re.M)
        self.assertIsNotNone(m, "no %s{%s} in the exposition" % (name, want))
        return int(m.group(1))

    def reprobe(self, relay, mx, caps):
        """The MX offers `caps`; a reload's probe learns them."""
        mx.caps = list(caps)
        before = len(relay.logs())
        relay.send_signal(signal.SIGHUP)
        probes = relay.wait_probes(after=before)
        self.assertEqual(probes[0].get("result"), "ok", probes[0]["_raw"])

    def assertReply(self, reply, code, text=None):
        self.assertEqual(reply.code, code, reply)
        if text is not None:
            self.assertIn(text, reply.text)

    def send_message(self, c, mail="MAIL FROM:<>"):
        self.assertReply(c.cmd(mail), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % self.rcpt), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd("Subject: bounce\r\n\r\nbody\r\n."), 250)

    # -- no MAIL, no MX connection ----------------------------------------------------------
    def test_ehlo_quit_sessions_open_no_next_hop_connection(self):
        mx = self.upstream()
        r = self.relay(mx.port)
        self.assertEqual(len(mx.connections()), 1, "the probe")
        for _ in range(20):
            c = self.session(r)
            self.assertReply(c.cmd("NOOP"), 250)
            self.assertReply(c.cmd("RSET"), 250)
            self.assertReply(c.cmd("QUIT"), 221)
            c.wait_closed()
        r.wait_logs(lambda x: x.get("event") == "session_end", 20, 10)
        self.assertEqual(len(mx.connections()), 1, [c.lines() for c in mx.connections()])
        self.assertEqual(self.metric("batv_upstream_connections_total", role="inbound"), 0)
        self.assertEqual(self.metric("batv_upstream_probes_total", result="ok"), 1)
        # The probe said EHLO and QUIT, nothing else.
        self.assertEqual([x.split(" ")[0] for x in mx.connections()[0].lines()], ["EHLO", "QUIT"])
        # A session that sends mail opens one.
        c = self.session(r)
        self.send_message(c)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(len(mx.wait_connections(2)), 2)
        self.assertEqual(self.metric("batv_upstream_connections_total", role="inbound"), 1)

    def test_upstream_connect_connect_keeps_one_connection_per_session(self):
        mx = self.upstream()
        r = self.relay(mx.port, upstream_connect="connect")
        self.assertEqual(r.logs("upstream_probe"), [], "no probe for upstream_connect = connect")
        for _ in range(5):
            c = self.session(r)
            self.assertReply(c.cmd("QUIT"), 221)
            c.wait_closed()
        self.assertEqual(len(mx.wait_connections(5)), 5)
        self.assertEqual(self.metric("batv_upstream_connections_total", role="inbound"), 5)

    # -- what EHLO offers -------------------------------------------------------------------------
    def test_ehlo_offers_what_the_probe_learned(self):
        mx = self.upstream(caps=("PIPELINING", "SIZE 12345", "8BITMIME", "DSN"))
        r = self.relay(mx.port)
        probe = r.logs("upstream_probe")[0]
        self.assertEqual(probe.get("result"), "ok", probe["_raw"])
        c = self.session(r)
        names = ehlo_names(c.ehlo_reply)
        self.assertEqual(ehlo_size(c.ehlo_reply), 12345)
        for x in ("PIPELINING", "8BITMIME", "DSN"):
            self.assertIn(x, names)
        for x in ("SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES"):
            self.assertNotIn(x, names)
        self.assertEqual(len(mx.connections()), 1)

    def test_real_connection_and_reload_refresh_the_capabilities(self):
        mx = self.upstream()
        r = self.relay(mx.port)
        self.assertIn("CHUNKING", ehlo_names(self.session(r).ehlo_reply))
        # The MX changes: no CHUNKING, a smaller SIZE. Still offered until a real connection...
        mx.caps = ["PIPELINING", "SIZE 50000", "8BITMIME", "ENHANCEDSTATUSCODES"]
        c = self.session(r)
        self.assertIn("CHUNKING", ehlo_names(c.ehlo_reply))
        self.send_message(c)   # opens the MX connection: its EHLO is learned
        self.assertReply(c.cmd("QUIT"), 221)
        c = self.session(r)
        self.assertNotIn("CHUNKING", ehlo_names(c.ehlo_reply))
        self.assertEqual(ehlo_size(c.ehlo_reply), 50000)
        # ...or a reload, whose probe learns it.
        self.reprobe(r, mx, DEFAULT_CAPS)
        c = self.session(r)
        self.assertIn("CHUNKING", ehlo_names(c.ehlo_reply))
        self.assertEqual(ehlo_size(c.ehlo_reply), 10240000)

    def test_probe_failing_at_start_up(self):
        dead = closed_port()
        r = self.relay(dead)
        self.assertTrue(r.running())
        probe = r.logs("upstream_probe")[0]
        self.assertEqual(probe.get("result"), "failed", probe["_raw"])
        self.assertEqual(probe.get("offering"), "conservative", probe["_raw"])
        self.assertEqual(self.metric("batv_upstream_probes_total", result="failed"), 1)
        c = self.session(r)
        names = ehlo_names(c.ehlo_reply)
        for x in CONSERVATIVE + ["SIZE"]:
            self.assertIn(x, names)
        for x in NEEDS_MX:
            self.assertNotIn(x, names)
        # The next hop is still down at MAIL: that MAIL fails, the session goes on.
        self.assertReply(c.cmd("MAIL FROM:<>"), 451, "4.4.1")
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.cmd("QUIT"), 221)

    # -- trouble at MAIL time -----------------------------------------------------------------------
    def test_next_hop_down_at_mail_time(self):
        mx = self.upstream()
        r = self.relay(mx.port)
        mx.close()  # after the probe
        c = self.session(r)
        self.assertIn("CHUNKING", ehlo_names(c.ehlo_reply), "what the probe learned")
        self.assertReply(c.cmd("MAIL FROM:<>"), 451, "4.4.1 Next hop unavailable")
        self.assertReply(c.cmd("RCPT TO:<%s>" % self.rcpt), 503)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<>"), 451, "4.4.1")
        self.assertReply(c.cmd("QUIT"), 221)
        c.wait_closed()
        end = r.wait_log(lambda x: x.get("event") == "session_end", 10)
        self.assertEqual(end.get("reason"), "quit", end["_raw"])
        self.assertIn("unreachable", end.get("upstream_error", ""), end["_raw"])
        self.assertTrue(r.logs("upstream_open"))

    def test_next_hop_lacking_an_extension_the_client_used(self):
        mx = self.upstream()
        r = self.relay(mx.port)
        lesser = ["PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES"]
        for mail, lacking in (("MAIL FROM:<> BODY=8BITMIME", "8BITMIME"),
                              ("MAIL FROM:<> SMTPUTF8", "SMTPUTF8"),
                              ("MAIL FROM:<> RET=HDRS", "DSN")):
            self.reprobe(r, mx, DEFAULT_CAPS)  # a real connection just taught it the lesser set
            mx.caps = lesser
            c = self.session(r)
            self.assertIn(lacking, ehlo_names(c.ehlo_reply), "offered from the probe")
            self.assertReply(c.cmd(mail), 451, "4.3.3 Next hop does not offer %s" % lacking)
            # The connection stays open; the client's next EHLO is answered from it.
            r2 = c.cmd("EHLO mx.remote.test")
            self.assertNotIn(lacking, ehlo_names(r2))
            self.assertReply(c.cmd("QUIT"), 221)
        # SIZE above the next hop's own limit: 552, as for our own.
        c = self.session(r)
        self.assertReply(c.cmd("MAIL FROM:<> SIZE=5000"), 552, "5.3.4")
        # DSN on RCPT, offered before, lacking now.
        self.reprobe(r, mx, DEFAULT_CAPS)
        mx.caps = ["PIPELINING", "SIZE 100000"]
        c = self.session(r)
        self.assertIn("DSN", ehlo_names(c.ehlo_reply))
        self.assertReply(c.cmd("MAIL FROM:<>"), 250)
        self.assertReply(c.cmd("RCPT TO:<%s> NOTIFY=NEVER" % self.rcpt), 451, "4.3.3 Next hop does not offer DSN")
        self.assertReply(c.cmd("RCPT TO:<%s>" % self.rcpt), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.assertReply(c.cmd("Subject: x\r\n\r\nbody\r\n."), 250)
        self.assertEqual(len(mx.wait_transactions(1)), 1)

    # -- the open connection ------------------------------------------------------------------------
    def test_xclient_when_the_connection_opens_and_reuse_for_the_next_transaction(self):
        mx = self.upstream(caps=DEFAULT_CAPS + ("XCLIENT ADDR PORT HELO PROTO",))
        r = self.relay(mx.port, forward_client="xclient")
        c = self.session(r, helo="client.remote.test")
        self.assertEqual(len(mx.connections()), 1, "the probe only")
        self.send_message(c)
        self.assertReply(c.cmd("RSET"), 250)
        self.send_message(c)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertEqual(len(mx.wait_transactions(2)), 2)
        conns = mx.connections()
        self.assertEqual(len(conns), 2, "probe + one connection for both messages")
        verbs = [x.split(" ")[0].upper() for x in conns[1].lines()]
        self.assertEqual(verbs[:3], ["EHLO", "XCLIENT", "EHLO"], verbs)
        self.assertIn("MAIL", verbs)
        self.assertLess(verbs.index("XCLIENT"), verbs.index("MAIL"))
        self.assertIn("HELO=client.remote.test", conns[1].xclient)
        self.assertIn("ADDR=127.0.0.1", conns[1].xclient)
        self.assertEqual(verbs.count("MAIL"), 2)

    def test_idle_connection_cache_serves_the_next_mail(self):
        """forward_client = "none": a clean MX connection waits in the idle cache after QUIT
        (timeouts.upstream_idle) and the next session's MAIL takes it: no new connection. One
        I/O thread: the cache is per thread."""
        mx = self.upstream()
        r = self.relay(mx.port, timeouts={"upstream_idle": 30}, threads=1)
        for _ in range(3):
            c = self.session(r)
            self.send_message(c)
            self.assertReply(c.cmd("QUIT"), 221)
            c.wait_closed()
        self.assertEqual(len(mx.wait_transactions(3)), 3)
        self.assertEqual(len(mx.connections()), 2, "the probe and one reused connection")
        self.assertEqual(self.metric("batv_upstream_connections_total", role="inbound"), 1)

if __name__ == "__main__":
    run_tests(globals())
