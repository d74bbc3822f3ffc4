#!/usr/bin/env python3
"""batv-relay inbound gateway end to end: client identity towards a real Postfix next hop.

Usage: test_client_identity.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

Needs root and the Debian postfix package (a private instance per test, see postfix.py). The
SMTP client connects to the relay from 127.0.0.2 (loopback alias) and says EHLO client.example;
the relay (one [[listener]] role = "inbound", forward_client = xclient / proxy-v1 / proxy-v2 /
none) forwards to Postfix on 127.0.0.1, whose log tells which client address, port and HELO it
saw for the accepted message (spec "Client identity to the next hop"):

  xclient   Postfix authorizes 127.0.0.1 for XCLIENT: it sees 127.0.0.2:<client port>, HELO
            client.example, PROTO ESMTP; the relay logs event=xclient result=ok.
            Not authorized: Postfix does not offer XCLIENT, so the relay does not use it; Postfix
            sees 127.0.0.1 and the mail flows. XCLIENT refused by Postfix (its command filter turns
            the relay's XCLIENT into a bad one): event=xclient result=failed, the mail flows.
  proxy-v1 / proxy-v2
            Postfix with smtpd_upstream_proxy_protocol = haproxy sees 127.0.0.2:<client port>.
  none      Postfix sees 127.0.0.1 even though it offers XCLIENT.

Set BATV_E2E_LOGS=1 to print every relay and Postfix log; failed tests print their tails.
"""
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from postfix import PostfixInstance  # noqa: E402

RELAY = KEYS = None

CLIENT_IP = "127.0.0.2"
CLIENT_HELO = "client.example"
SENDER = "alice@remote.example"
RCPT = "bob@example.com"           # example.com is the relay's (sign and verify) domain; untagged
                                   # and not a bounce: passed to the next hop untouched


def expected_name(ip):
    """What smtpd should show as the client name after XCLIENT NAME=...: the forward-confirmed
    reverse name of `ip`, or "unknown" (XCLIENT NAME=[UNAVAILABLE])."""
    try:
        name = socket.gethostbyaddr(ip)[0]
        addrs = {ai[4][0] for ai in socket.getaddrinfo(name, None, socket.AF_INET)}
    except OSError:
        return "unknown"
    return name if ip in addrs else "unknown"


class ClientIdentityTest(cases.RelayTestCase):
    HELO = CLIENT_HELO
    CHECK_CONFIG = True
    LISTENER = {"role": "inbound"}

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("a private Postfix needs root")
        if not os.access("/usr/sbin/postfix", os.X_OK):
            self.skipTest("postfix not installed")
        super().setUp()

    # -- fixtures --
    def postfix(self, **kw):
        pf = PostfixInstance(workdir=self.dir, **kw)
        self.addCleanup(self._show_postfix_log, pf)     # after stop (cleanups are LIFO)
        self.addCleanup(pf.stop)
        return pf

    def relay(self, pf, forward_client, **kw):
        """One inbound listener towards `pf` (forward_client written unless None)."""
        if forward_client is not None:
            kw["forward_client"] = forward_client
        return self.start_relay(pf, **kw)

    def _show_postfix_log(self, pf):
        if self._failed() or os.environ.get("BATV_E2E_LOGS"):
            lines = pf.log_text().splitlines()[-60:]
            sys.stderr.write("\n--- postfix log (port %d), %s ---\n%s\n--- end ---\n"
                             % (pf.port, self.id(), "\n".join(lines)))

    # -- one message through the relay from 127.0.0.2 --
    def send(self, relay, subject, helo=CLIENT_HELO, source=CLIENT_IP):
        """One transaction through the relay from `source`; returns the client's local port."""
        c = self.client(relay, source=source)
        self.assertEqual(c.sock.getsockname()[0], source)
        self.assertEqual(c.read_reply().code, 220)
        r = c.cmd("EHLO " + helo)
        self.assertEqual(r.code, 250, r)
        r = c.cmd("MAIL FROM:<%s>" % SENDER)
        self.assertEqual(r.code, 250, r)
        r = c.cmd("RCPT TO:<%s>" % RCPT)
        self.assertEqual(r.code, 250, r)
        r = c.cmd("DATA")
        self.assertEqual(r.code, 354, r)
        c.send(("Subject: %s\r\n\r\nclient identity e2e\r\n.\r\n" % subject).encode())
        r = c.read_reply(30)
        self.assertEqual(r.code, 250, r)
        port = c.local_port
        self.assertEqual(c.cmd("QUIT").code, 221)
        c.close()
        return port

    def seen(self, pf, subject, timeout=15.0):
        """Postfix's view of the message with this Subject (HeaderWarning: name, addr, port,
        sender, rcpt, proto, helo), once it is delivered (discard transport)."""
        def find():
            for w in pf.header_warnings():
                if w.header == "Subject: " + subject:
                    return w
            return None
        w = pf.wait_for(find, timeout)
        self.assertIsNotNone(w, "Postfix did not log the message %r" % subject)
        self.assertEqual((w.sender, w.rcpt), (SENDER, RCPT))
        client = [c for c in pf.clients() if c.queue_id == w.queue_id]
        self.assertEqual([(c.name, c.addr, c.port) for c in client], [(w.name, w.addr, w.port)],
                         "smtpd client= line and cleanup warning disagree")
        self.assertTrue(pf.wait_for(lambda: any(d.queue_id == w.queue_id and d.status == "sent"
                                                for d in pf.delivered()), timeout),
                        "Postfix did not deliver %s" % w.queue_id)
        return w

    def relay_connection_counts(self, pf):
        """smtpd's "disconnect from" counters for the relay's connection(s) (from 127.0.0.1 as
        the connection was, or as XCLIENT/PROXY made it look). Waits for one that carried
        mail: the inbound listener's capability probe (EHLO, QUIT) disconnects first."""
        pf.wait_for(lambda: any("mail=" in d.counts for d in pf.disconnects()), 10)
        return [d.counts for d in pf.disconnects()]

    # =========================================================================================
    def test_xclient(self):
        pf = self.postfix(xclient_hosts="127.0.0.1")
        r = self.relay(pf, "xclient")
        port = self.send(r, "xclient")
        w = self.seen(pf, "xclient")
        self.assertEqual((w.addr, w.port), (CLIENT_IP, port), w)
        self.assertEqual(w.helo, CLIENT_HELO, w)
        self.assertEqual(w.proto, "ESMTP", w)
        self.assertEqual(w.name, expected_name(CLIENT_IP), w)
        rec = r.wait_log(lambda x: x.get("event") == "xclient", 5)
        self.assertIsNotNone(rec, "no event=xclient log line")
        self.assertEqual(rec.get("result"), "ok", rec["_raw"])
        attrs = rec.get("attributes", "").split()
        for a in ("ADDR=%s" % CLIENT_IP, "PORT=%d" % port, "HELO=%s" % CLIENT_HELO,
                  "PROTO=ESMTP"):
            self.assertIn(a, attrs, rec["_raw"])
        self.assertTrue(any(a.startswith("NAME=") for a in attrs), rec["_raw"])
        # (smtpd counts even a successful XCLIENT as "xclient=0/1": only its presence matters)
        counts = self.relay_connection_counts(pf)
        self.assertTrue(any("xclient=" in c for c in counts), counts)

    def test_verified_tls_to_a_real_postfix(self):
        """upstream_tls = verify against a real Postfix smtpd with a certificate from a test CA:
        the relay checks the chain and the name, and Postfix logs the TLS session; XCLIENT still
        works inside TLS."""
        import tlsutil
        os.makedirs(os.path.join(self.dir, "certs"), exist_ok=True)
        certs = tlsutil.Certs(os.path.join(self.dir, "certs"))
        os.chmod(certs.dir, 0o755)
        for f in (certs.mx_cert, certs.mx_key, certs.ca):
            os.chmod(f, 0o644)
        pf = self.postfix(xclient_hosts="127.0.0.1", main_cf_extra={
            "smtpd_tls_cert_file": certs.mx_cert, "smtpd_tls_key_file": certs.mx_key,
            "smtpd_tls_security_level": "may", "smtpd_tls_loglevel": "1"})
        li = {"upstream": pf.port, "role": "inbound", "forward_client": "xclient",
              "upstream_tls": "verify", "upstream_ca": certs.ca, "upstream_tls_name": "mx.test"}
        r = self.start_relay([li], config_name="tls.toml", check_config=False)
        port = self.send(r, "verified-tls")
        w = self.seen(pf, "verified-tls")
        self.assertEqual((w.addr, w.port), (CLIENT_IP, port), w)
        rec = r.wait_log(lambda x: x.get("event") == "upstream_tls", 5)
        self.assertIsNotNone(rec)
        self.assertEqual(rec.get("result"), "ok", rec["_raw"])
        self.assertTrue(rec.get("protocol", "").startswith("TLSv1."), rec["_raw"])
        self.assertTrue(pf.wait_log(r"(Trusted|Anonymous|Untrusted) TLS connection established from", 10),
                        "Postfix did not log a TLS session")
        # A wrong expected name: the relay refuses to talk to this next hop at all: its probe
        # fails, and, connecting at MAIL, each MAIL gets 451 4.7.0 (at connect: 421 4.7.0).
        li2 = dict(li, upstream_tls_name="other.test")
        r2 = self.start_relay([li2], config_name="tls2.toml", check_config=False)
        self.assertEqual(r2.logs("upstream_probe")[0].get("result"), "failed")
        c = self.client(r2, source=CLIENT_IP)
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.cmd("EHLO client.example").code, 250)
        m = c.cmd("MAIL FROM:<%s>" % SENDER)
        self.assertEqual(m.code, 451, m)
        self.assertTrue(m.text.startswith("4.7.0"), m)
        li3 = dict(li2, upstream_connect="connect")
        r3 = self.start_relay([li3], config_name="tls3.toml", check_config=False)
        c = self.client(r3, source=CLIENT_IP)
        g = c.read_reply()
        self.assertEqual(g.code, 421, g)
        self.assertTrue(g.text.startswith("4.7.0"), g)

    def test_xclient_helo_command(self):
        """HELO (not EHLO) from the client: XCLIENT PROTO=SMTP, and Postfix sees the HELO name.
        (Postfix itself then logs proto=ESMTP: the EHLO the relay must send after XCLIENT
        sets smtpd's protocol again.)"""
        pf = self.postfix(xclient_hosts="127.0.0.1")
        r = self.relay(pf, "xclient")
        c = self.client(r, source=CLIENT_IP)
        self.assertEqual(c.read_reply().code, 220)
        self.assertEqual(c.cmd("HELO helo-only.example").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % SENDER).code, 250)
        self.assertEqual(c.cmd("RCPT TO:<%s>" % RCPT).code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: helo\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(c.read_reply(30).code, 250)
        port = c.local_port
        c.cmd("QUIT")
        w = self.seen(pf, "helo")
        self.assertEqual((w.addr, w.port, w.helo), (CLIENT_IP, port, "helo-only.example"), w)
        rec = r.wait_log(lambda x: x.get("event") == "xclient", 5)
        self.assertIsNotNone(rec, "no event=xclient log line")
        self.assertEqual(rec.get("result"), "ok", rec["_raw"])
        attrs = rec.get("attributes", "").split()
        self.assertIn("PROTO=SMTP", attrs, rec["_raw"])
        self.assertIn("HELO=helo-only.example", attrs, rec["_raw"])

    def test_xclient_not_authorized(self):
        """Postfix does not offer XCLIENT to an unauthorized client: the relay must not use it
        (no result=ok), and the mail still goes through with the relay's own address."""
        pf = self.postfix(xclient_hosts="")
        r = self.relay(pf, "xclient")
        self.send(r, "not-authorized")
        w = self.seen(pf, "not-authorized")
        self.assertEqual(w.addr, "127.0.0.1", w)
        for rec in r.logs("xclient"):
            self.assertNotEqual(rec.get("result"), "ok", rec["_raw"])
        counts = self.relay_connection_counts(pf)
        self.assertFalse(any("xclient=" in c for c in counts),
                         "the relay sent XCLIENT although Postfix did not offer it: %s" % counts)

    def test_xclient_refused_by_next_hop(self):
        """Postfix offers XCLIENT but answers 501 (its command filter turns the relay's XCLIENT
        into one with a bad ADDR): event=xclient result=failed, the mail still flows."""
        pf = self.postfix(xclient_hosts="127.0.0.1",
                          command_filter=[r"/^XCLIENT\s/ XCLIENT ADDR=not-an-address"])
        r = self.relay(pf, "xclient")
        self.send(r, "refused")
        w = self.seen(pf, "refused")
        self.assertEqual(w.addr, "127.0.0.1", w)
        rec = r.wait_log(lambda x: x.get("event") == "xclient", 5)
        self.assertIsNotNone(rec, "no event=xclient log line")
        self.assertEqual(rec.get("result"), "failed", rec["_raw"])
        self.assertIn("501", rec.get("reply", ""), rec["_raw"])
        self.assertTrue(any("xclient=" in c for c in self.relay_connection_counts(pf)))

    def _proxy(self, version):
        pf = self.postfix(proxy_protocol="haproxy")
        r = self.relay(pf, version)
        port = self.send(r, version)
        w = self.seen(pf, version)
        self.assertEqual((w.addr, w.port), (CLIENT_IP, port), w)
        self.assertEqual(w.proto, "ESMTP", w)
        conns = pf.connects()
        self.assertTrue(conns, "no smtpd connect line")
        # The inbound listener's capability probe (it connects at MAIL) sends a PROXY header
        # that names no client but the relay (v2 LOCAL, v1 its own addresses): Postfix sees
        # the relay itself there.
        probes = [c for c in conns if c.addr == "127.0.0.1"]
        self.assertEqual(len(probes), len(r.logs("upstream_probe")), conns)
        self.assertEqual(r.logs("upstream_probe")[0].get("result"), "ok")
        self.assertTrue(all(c.addr == CLIENT_IP for c in conns if c not in probes), conns)
        self.assertFalse([x for x in pf.log_lines() if "/smtpd[" in x and "warning:" in x],
                         "smtpd complained (about the PROXY header?)")
        # The relay must not also try XCLIENT (Postfix offers none here anyway).
        self.assertFalse(any(x.get("result") == "ok" for x in r.logs("xclient")))

    def test_proxy_v1(self):
        self._proxy("proxy-v1")

    def test_proxy_v2(self):
        self._proxy("proxy-v2")

    def test_proxy_two_sessions(self):
        """Every next-hop connection starts with the header (a second client, another port)."""
        pf = self.postfix(proxy_protocol="haproxy")
        r = self.relay(pf, "proxy-v2")
        p1 = self.send(r, "first")
        p2 = self.send(r, "second", source="127.0.0.3")
        w1, w2 = self.seen(pf, "first"), self.seen(pf, "second")
        self.assertEqual((w1.addr, w1.port), (CLIENT_IP, p1), w1)
        self.assertEqual((w2.addr, w2.port), ("127.0.0.3", p2), w2)

    def test_forward_client_none(self):
        pf = self.postfix(xclient_hosts="127.0.0.1")     # XCLIENT offered, yet not used
        r = self.relay(pf, "none")
        port = self.send(r, "none")
        w = self.seen(pf, "none")
        self.assertEqual(w.addr, "127.0.0.1", w)
        self.assertNotEqual(w.port, port, w)
        self.assertEqual(r.logs("xclient"), [])
        counts = self.relay_connection_counts(pf)
        self.assertFalse(any("xclient=" in c for c in counts), counts)

    def test_inbound_default_is_xclient(self):
        """No forward_client key on an inbound listener: XCLIENT (spec default)."""
        pf = self.postfix(xclient_hosts="127.0.0.1")
        r = self.relay(pf, None)
        port = self.send(r, "default")
        w = self.seen(pf, "default")
        self.assertEqual((w.addr, w.port, w.helo), (CLIENT_IP, port, CLIENT_HELO), w)


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
