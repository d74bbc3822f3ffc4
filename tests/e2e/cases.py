"""The shared unittest base of the e2e files: cases.RelayTestCase.

Per test it makes a temporary directory (self.dir) with a key file (self.keys, harness.KeyFile)
and offers the fixtures every file needs, each registered for cleanup (run even when setUp or
the test fails half way, in reverse order):

  upstream(**kw)               a harness.ScriptedUpstream
  relay(to, **kw)              a started harness.Relay towards `to`: a port, an object with a
                               .port (ScriptedUpstream, SmtpSink, PostfixInstance), or a list of
                               listener dicts. Keywords that are Relay() arguments (timeouts,
                               limits, inbound, extra_toml, config_name, ...) go to Relay; every
                               other keyword is a key of the (single) listener. start=False: not
                               started; metrics=True: a [metrics] listener, its port in
                               r.metrics_port and self.metrics_port; check_config=True: the
                               config must pass `batv-relay --check-config` first. A file whose
                               tests call relay() with other arguments overrides it and calls
                               start_relay(), which is the same (and which setUp fixtures use:
                               self.relay = self.start_relay(...)).
  client(to, timeout, listener, source)
                               a harness.SmtpClient (a BoundClient from `source` when given) to a
                               relay's listener or to a port
  session(to, ehlo, timeout, listener, helo, source)
                               a client that got 220 and, when `ehlo`, 250 to EHLO (kept in
                               c.ehlo_reply)
  smtp(to, listener, helo)     an smtplib.SMTP connection
  transaction(c, ...), deliver(r, ...)
                               MAIL/RCPT/DATA/body on a session (SENDER, RCPTS, BODY by default)
  session_ends(r, n), logs_of(r, event, n)
                               at least n log records of an event (asserted)

Class attributes are the per-file defaults: HELO (the EHLO name), SENDER / RCPTS / BODY (of
transaction()), LISTENER (keys of listener 0,
e.g. {"role": "inbound"}), RELAY_KW (Relay() arguments, e.g. verify_domains), TIMEOUTS (merged
under the timeouts a test gives), METRICS / CHECK_CONFIG (defaults of relay()'s keywords),
TMP_PREFIX / TMP_MODE (the directory), KEY_FILE (its name; None: no key file and no self.keys,
which such a file may use for a method of its own; its relays then name theirs: keyfile=).

A relay that dies by itself fails the test, and a failed test prints the relay's log tail
(harness.RelayLogMixin; BATV_E2E_LOGS=1 prints every log).
"""
import os
import smtplib
import unittest

import harness
from harness import HOST, KeyFile, Relay, RelayLogMixin, ScriptedUpstream, SmtpClient, BoundClient

METRICS_TOML = '[metrics]\nlisten = "127.0.0.1:0"\n'

# Keyword arguments of harness.Relay() (everything else given to relay() is a listener key).
RELAY_ARGS = ("timeouts", "limits", "signing", "smtp", "sign_domains", "lifetime_days", "threads",
              "extra_toml", "config_name", "ready_timeout", "verify_domains", "inbound",
              "domain_mode")


def port_of(to, listener=0):
    """The port of `to`: an int as it is, a Relay's listener, or an object's .port."""
    if isinstance(to, (int, str)):
        return to
    if isinstance(to, Relay):
        return to.port(listener)
    return to.port


class RelayTestCase(RelayLogMixin, unittest.TestCase):
    """A temporary directory with a key file per test, and the fixtures of the module docstring."""

    HELO = "client.test"
    SENDER = "homer@example.com"
    RCPTS = ("bart@elsewhere.org",)
    BODY = b"Subject: e2e\r\n\r\nhello\r\n"
    LISTENER = {}
    RELAY_KW = {}
    TIMEOUTS = {}
    METRICS = False
    CHECK_CONFIG = False
    TMP_PREFIX = "batv-e2e-"
    TMP_MODE = None
    KEY_FILE = "keys.toml"

    def setUp(self):
        tmp = harness.tmpdir(self.TMP_PREFIX)
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        if self.TMP_MODE is not None:
            os.chmod(self.dir, self.TMP_MODE)
        if self.KEY_FILE:
            self.keys = KeyFile(harness.KEYS_BIN, os.path.join(self.dir, self.KEY_FILE))

    # -- next hops --
    def upstream(self, **kw):
        up = ScriptedUpstream(**kw)
        self.addCleanup(up.close)
        return up

    # -- the relay --
    def relay(self, to=None, **kw):
        # The base's start_relay() even where a file has a start_relay() of its own.
        return RelayTestCase.start_relay(self, to, **kw)

    def start_relay(self, to=None, listeners=None, start=True, metrics=None, check_config=None,
                    workdir=None, keyfile=None, relay_class=Relay, **kw):
        """See the module docstring. workdir / keyfile: other than self.dir / self.keys;
        relay_class: a harness.Relay subclass."""
        args = dict(self.RELAY_KW)
        args.update({k: kw.pop(k) for k in list(kw) if k in RELAY_ARGS})
        if isinstance(to, list):
            listeners = to
        if listeners is None:
            li = dict(self.LISTENER)
            if to is not None:
                li["upstream"] = port_of(to)
            li.update(kw)
            listeners = [li]
        elif kw:
            raise TypeError("listener keys %s with a list of listeners" % sorted(kw))
        if self.TIMEOUTS or "timeouts" in args:
            args["timeouts"] = dict(self.TIMEOUTS, **(args.get("timeouts") or {}))
        metrics = self.METRICS if metrics is None else metrics
        if metrics:
            args["extra_toml"] = METRICS_TOML + args.get("extra_toml", "")
        r = relay_class(harness.RELAY_BIN, workdir or self.dir,
                        self.keys if keyfile is None else keyfile,
                        listeners=listeners, start=False, **args)
        self.watch_relay(r)
        if self.CHECK_CONFIG if check_config is None else check_config:
            rc, out = r.check_config()
            self.assertEqual(rc, 0, "config refused by --check-config:\n%s\n%s"
                             % (out, r.config_text()))
        if start:
            r.start()
            if metrics:
                self.metrics_port = r.metrics_port = self.metrics_port_of(r)
        return r

    def metrics_port_of(self, r):
        """The port of the relay's [metrics] listener (from its event=metrics_listening)."""
        rec = r.wait_log("metrics_listening", 10)
        self.assertIsNotNone(rec, "no event=metrics_listening log line")
        host, _, port = rec.get("address", "").rpartition(":")
        self.assertEqual(host, HOST, rec["_raw"])
        self.assertNotEqual(int(port), 0, rec["_raw"])
        return int(port)

    # -- clients --
    def client(self, to, timeout=10.0, listener=0, source=None):
        """An SmtpClient to `to` (a relay's listener, or a port), from `source` when given."""
        port = port_of(to, listener)
        c = SmtpClient(port, timeout) if source is None else BoundClient(port, source, timeout)
        self.addCleanup(c.close)
        return c

    def session(self, to, ehlo=True, timeout=10.0, listener=0, helo=None, source=None):
        """A client that got 220 (and 250 to EHLO <HELO> when `ehlo`: c.ehlo_reply)."""
        c = self.client(to, timeout, listener, source)
        g = c.read_reply()
        self.assertEqual(g.code, 220, g)
        if ehlo:
            c.ehlo_reply = c.cmd("EHLO " + (helo or self.HELO))
            self.assertEqual(c.ehlo_reply.code, 250, c.ehlo_reply)
        return c

    def smtp(self, to, listener=0, helo=None):
        s = smtplib.SMTP(HOST, port_of(to, listener), local_hostname=helo or self.HELO, timeout=10)
        self.addCleanup(self._smtp_close, s)
        return s

    @staticmethod
    def _smtp_close(s):
        try:
            s.close()
        except Exception:
            pass

    # -- one transaction on a raw client --
    def transaction(self, c, sender=None, rcpts=None, wire=None, mail_params="", timeout=30.0):
        """MAIL/RCPT.../DATA/body/dot on an EHLO'd client; asserts 250/250/354; returns the
        reply to the final dot. `wire` is the dot-stuffed body without the final ".\\r\\n";
        sender, rcpts and wire default to SENDER, RCPTS and BODY."""
        r = c.cmd("MAIL FROM:<%s>%s" % (self.SENDER if sender is None else sender, mail_params))
        self.assertEqual(r.code, 250, r)
        for rcpt in self.RCPTS if rcpts is None else rcpts:
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            self.assertEqual(r.code, 250, (rcpt, r))
        r = c.cmd("DATA")
        self.assertEqual(r.code, 354, r)
        c.send((self.BODY if wire is None else wire) + b".\r\n")
        return c.read_reply(timeout)

    def deliver(self, relay, **kw):
        """A fresh session with one transaction; returns the final reply."""
        c = self.session(relay)
        final = self.transaction(c, **kw)
        c.cmd("QUIT")
        return final

    # -- logs --
    def logs_of(self, r, event, n=1, timeout=5.0):
        """At least n records of `event` (asserted); all of them."""
        recs = r.wait_logs(lambda x: x.get("event") == event, n, timeout)
        self.assertGreaterEqual(len(recs), n, "want %d event=%s lines" % (n, event))
        return recs

    def session_ends(self, r, n=1, timeout=5.0):
        return self.logs_of(r, "session_end", n, timeout)

    # -- assertions --
    def assertCode(self, reply, code, enhanced=None):
        self.assertIsNotNone(reply)
        self.assertEqual(reply.code, code, reply)
        if enhanced is not None:
            self.assertTrue(reply.text.startswith(enhanced), reply)
