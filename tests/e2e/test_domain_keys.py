#!/usr/bin/env python3
"""[[domain_keys]] end to end: one relay with three keyrings, an outbound and an inbound listener.

Usage: test_domain_keys.py --relay PATH/batv-relay --keys PATH/batv-keys

Rings: the default key file (secret "secretkey", key 3: the spec's tags) for example.com; ring A
(a.example): key 1; ring B (b.example): key 2 signing plus key 1 verify-only with another secret
than ring A's key 1, so ring A's tags moved to b.example are bad_signature, not merely unknown.
  - outbound: each sender is signed with its domain's ring (key id and secret: checked with the
    offline `batv-keys verify` on each ring file, and the other ring's file must NOT verify it);
  - inbound: a bounce to each ring's tag is accepted and stripped; a bounce to b.example carrying
    a tag made with ring A's secret is refused, and so is a customer tag at a default domain;
  - rotating ring B alone (batv-keys --config --domain, picked up by the key-file watcher) leaves
    ring A's and the default ring's signing untouched; ring B's old tags still verify;
  - staged rotations of two rings at different times: each ring switches at its own T, with no
    reload (the switch timer is armed for the earliest ring, then the next);
  - a bad ring file on reload (SIGHUP): the whole reload refused, naming the file and its
    domain_keys entry, every ring keeps signing as before.
"""
import os
import re
import signal
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, KeyFile, expected_tag, run_checked, wait_until  # noqa: E402

RELAY = KEYS = None

BART = "bart@elsewhere.org"
BODY = b"Subject: rings\r\n\r\nhello\r\n"
NDR = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n\r\nyour mail bounced\r\n"
DOMAINS = ["example.com", "a.example", "b.example"]


class DomainKeysTest(cases.RelayTestCase):
    KEY_FILE = None   # self.keys() runs batv-keys; the default ring's file is self.default

    def setUp(self):
        super().setUp()
        self.default = KeyFile(KEYS, os.path.join(self.dir, "keys.toml"))
        os.mkdir(os.path.join(self.dir, "rings"))
        # Relative names, resolved against the config's directory like key_file.
        self.ring_a = os.path.join(self.dir, "rings", "a.toml")
        self.ring_b = os.path.join(self.dir, "rings", "b.toml")
        self.keys(self.ring_a, "import", "--id", "1", "--signing", stdin=b"ring-a-secret\n")
        self.keys(self.ring_b, "import", "--id", "2", "--signing", stdin=b"ring-b-secret\n")
        self.keys(self.ring_b, "import", "--id", "1", stdin=b"ring-b-old\n")
        self.smarthost = self.upstream()
        self.mx = self.upstream()
        rings = ('[[domain_keys]]\ndomains = ["a.example"]\nkey_file = "rings/a.toml"\n'
                 '[[domain_keys]]\ndomains = ["b.example"]\nkey_file = "rings/b.toml"\n')
        self.relay = self.start_relay([{"role": "outbound", "upstream": self.smarthost.port},
                                       {"role": "inbound", "upstream": self.mx.port}],
                                      keyfile=self.default, sign_domains=DOMAINS,
                                      verify_domains=DOMAINS, metrics=True, extra_toml=rings)
        ready = self.relay.wait_log("ready", 10)
        self.assertEqual(ready.get("rings"), "3", ready["_raw"])

    # -- helpers --
    def keys(self, path, *args, stdin=None, now=None, check=True):
        """batv-keys --keys PATH ARGS: (exit code, stdout, stderr)."""
        cmd = [KEYS, "--keys", path] + (["--now", str(now)] if now is not None else []) + list(args)
        p = run_checked(cmd, input=stdin, timeout=harness.scaled(30))
        if check and p.returncode != 0:
            raise AssertionError("%s: %s" % (cmd, p.stderr.decode(errors="replace")))
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def keys_cfg(self, *args):
        """batv-keys --config RELAY.toml ARGS (the operator's way)."""
        p = run_checked([KEYS, "--config", self.relay.config_path] + list(args), timeout=harness.scaled(30))
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def verify_with(self, path, address):
        return self.keys(path, "verify", address, check=False)[0]

    def tag_with(self, path, address):
        return self.keys(path, "sign", address)[1].strip()

    def send(self, sender):
        """One outbound message; the MAIL FROM the smarthost got."""
        before = len(self.smarthost.transactions())
        with smtplib.SMTP(HOST, self.relay.port(0), local_hostname="client.test", timeout=10) as s:
            s.sendmail(sender, [BART], BODY)
        self.smarthost.wait_transactions(before + 1, timeout=10)
        return self.smarthost.transactions()[before].sender

    def bounce(self, rcpt):
        """RCPT reply code of a bounce (MAIL FROM:<>) to `rcpt` on the inbound listener, and the
        recipient the MX got when it was accepted."""
        before = len(self.mx.transactions())
        with smtplib.SMTP(HOST, self.relay.port(1), local_hostname="mx.remote.test", timeout=10) as s:
            s.ehlo()
            code, _ = s.mail("<>")
            self.assertEqual(code, 250)
            code, msg = s.rcpt(rcpt)
            if code != 250:
                s.rset()
                return code, msg.decode(errors="replace")
            code, _ = s.data(NDR)
            self.assertEqual(code, 250)
        self.mx.wait_transactions(before + 1, timeout=10)
        line = self.mx.transactions()[before].rcpts[0]
        m = re.fullmatch(r"RCPT TO:<([^>]*)>", line)
        self.assertIsNotNone(m, line)
        return 250, m.group(1)

    def metrics(self):
        text = harness.metrics_text(self.metrics_port)
        out = {}
        for m in re.finditer(r'(?m)^(batv_active_key_id|batv_next_key_switch_timestamp_seconds)'
                             r'\{ring="([^"]*)"\} (\d+)$', text):
            out[(m.group(1), m.group(2))] = int(m.group(3))
        return out

    def signers(self):
        m = self.metrics()
        return {ring: v for (name, ring), v in m.items() if name == "batv_active_key_id"}

    def reloads(self, result="ok"):
        return len([r for r in self.relay.logs("reload") if r.get("result") == result])

    # -- tests --
    def test_outbound_signs_with_the_domains_ring_only(self):
        tag_a = self.send("user@a.example")
        tag_b = self.send("user@b.example")
        tag_d = self.send("homer@example.com")
        self.assertTrue(tag_a.startswith("prvs=1"), tag_a)
        self.assertTrue(tag_b.startswith("prvs=2"), tag_b)
        self.assertEqual(tag_d, expected_tag("homer@example.com"))
        # Each tag verifies with its ring's file, and with no other.
        self.assertEqual(self.verify_with(self.ring_a, tag_a), 0)
        self.assertEqual(self.verify_with(self.ring_b, tag_a), 1)   # key 1 of ring B: another secret
        self.assertEqual(self.verify_with(self.default.path, tag_a), 3)  # no key 1 in the default ring
        self.assertEqual(self.verify_with(self.ring_b, tag_b), 0)
        self.assertEqual(self.verify_with(self.ring_a, tag_b), 3)   # no key 2 in ring A
        self.assertEqual(self.verify_with(self.default.path, tag_d), 0)
        self.assertEqual(self.verify_with(self.ring_a, tag_d), 3)
        # The same tags as the offline tool makes with each ring's file.
        self.assertEqual(tag_a, self.tag_with(self.ring_a, "user@a.example"))
        self.assertEqual(tag_b, self.tag_with(self.ring_b, "user@b.example"))
        # batv-keys --config picks the ring by the address's domain, as the relay does.
        for tag in (tag_a, tag_b, tag_d):
            self.assertEqual(self.keys_cfg("verify", tag)[0], 0, tag)
        self.assertTrue(wait_until(lambda: len(self.relay.logs("mail")) >= 3, harness.scaled(10)))  # reader thread
        signed = {r.get("from"): r.get("key") for r in self.relay.logs("mail")}
        self.assertEqual(signed, {"<user@a.example>": "1", "<user@b.example>": "2", "<homer@example.com>": "3"})
        self.assertEqual(self.signers(), {"default": 3, "a.example": 1, "b.example": 2})

    def test_inbound_verifies_each_ring_and_refuses_another_rings_tag(self):
        tag_a = self.tag_with(self.ring_a, "user@a.example")
        tag_b = self.tag_with(self.ring_b, "user@b.example")
        self.assertEqual(self.bounce(tag_a), (250, "user@a.example"))
        self.assertEqual(self.bounce(tag_b), (250, "user@b.example"))
        self.assertEqual(self.bounce(expected_tag("homer@example.com")), (250, "homer@example.com"))
        # Ring A's secret on a b.example address: the forger knows a customer's key, not this one's.
        forged = self.tag_with(self.ring_a, "user@b.example")
        code, msg = self.bounce(forged)
        self.assertEqual(code, 550, msg)
        # A customer's tag at a default domain, and the default ring's tag at a customer domain.
        self.assertEqual(self.bounce(self.tag_with(self.ring_a, "homer@example.com"))[0], 550)
        self.assertEqual(self.bounce(expected_tag("user@a.example"))[0], 550)
        # The log is read on another thread: wait for the last RCPT's line before reading them all.
        last = "<%s>" % expected_tag("user@a.example")
        self.assertIsNotNone(self.relay.wait_log(lambda x: x.get("event") == "rcpt" and x.get("to") == last, 10))
        verdicts = {r.get("to"): r.get("verdict") for r in self.relay.logs("rcpt")}
        self.assertEqual(verdicts["<%s>" % forged], "bad_signature")
        self.assertEqual(verdicts["<%s>" % expected_tag("user@a.example")], "unknown_key")

    def test_rotating_one_ring_leaves_the_others_alone(self):
        tag_a0 = self.send("user@a.example")
        old_b = self.send("user@b.example")
        ok = self.reloads()
        rc, out, err = self.keys_cfg("--domain", "b.example", "rotate")
        self.assertEqual(rc, 0, err)
        self.assertIn("key 3 ", out)  # after key 2, the next free id of ring B
        # The watcher sees ring B's file change and reloads by itself.
        rec = self.relay.wait_log(lambda r: r.get("event") == "key_file_changed"
                                  and r.get("file") == self.ring_b, 10)
        self.assertIsNotNone(rec, "no event=key_file_changed for ring B")
        self.assertEqual(rec.get("ring"), "b.example")
        self.assertTrue(wait_until(lambda: self.reloads() > ok, harness.scaled(10)), "no reload")
        self.assertTrue(self.send("user@b.example").startswith("prvs=3"))
        self.assertEqual(self.send("user@a.example"), tag_a0)     # same key, same day: same tag
        self.assertEqual(self.send("homer@example.com"), expected_tag("homer@example.com"))
        self.assertTrue(wait_until(lambda: self.signers() == {"default": 3, "a.example": 1, "b.example": 3},
                                   harness.scaled(5)), self.signers())
        # Ring B's previous key still verifies its tags; ring A never saw ring B's new key.
        self.assertEqual(self.bounce(old_b), (250, "user@b.example"))
        self.assertEqual(self.keys(self.ring_a, "list", "--json")[1].count('"id"'), 1)

    def test_staged_rotations_switch_each_ring_at_its_own_time(self):
        stage = int(harness.scaled(4))
        ok = self.reloads()
        t_a = int(time.time()) + stage
        t_b = t_a + stage
        for domain, t in (("a.example", t_a), ("b.example", t_b)):
            rc, _, err = self.keys_cfg("--domain", domain, "rotate", "--at", str(t))
            self.assertEqual(rc, 0, err)
        # Both files changed: the watcher reloads (once or twice), and the metrics show each
        # ring's own next switch.
        self.assertTrue(wait_until(
            lambda: self.metrics().get(("batv_next_key_switch_timestamp_seconds", "b.example")) == t_b,
            harness.scaled(10)), self.metrics())
        m = self.metrics()
        self.assertEqual(m[("batv_next_key_switch_timestamp_seconds", "a.example")], t_a)
        self.assertEqual(m[("batv_next_key_switch_timestamp_seconds", "default")], 0)
        self.assertEqual(self.signers(), {"default": 3, "a.example": 1, "b.example": 2})
        reloads_before_t = self.reloads()
        self.assertGreater(reloads_before_t, ok)
        # Ring A at t_a, ring B at t_b: two switches by the timer, no reload between.
        sw_a = self.relay.wait_log(lambda r: r.get("event") == "signing_key_switch"
                                   and r.get("ring") == "a.example", stage + 10)
        self.assertIsNotNone(sw_a, "ring a.example did not switch")
        self.assertEqual((sw_a.get("from"), sw_a.get("to")), ("1", "2"))
        self.assertIsNone(self.relay.wait_log(lambda r: r.get("event") == "signing_key_switch"
                                              and r.get("ring") == "b.example", 0))
        self.assertGreaterEqual(time.time(), t_a)
        self.assertTrue(self.send("user@a.example").startswith("prvs=2"))
        sw_b = self.relay.wait_log(lambda r: r.get("event") == "signing_key_switch"
                                   and r.get("ring") == "b.example", 2 * stage + 10)
        self.assertIsNotNone(sw_b, "ring b.example did not switch")
        self.assertEqual((sw_b.get("from"), sw_b.get("to")), ("2", "3"))
        self.assertGreaterEqual(time.time(), t_b)
        self.assertTrue(self.send("user@b.example").startswith("prvs=3"))
        self.assertEqual(self.send("homer@example.com"), expected_tag("homer@example.com"))
        self.assertEqual(self.reloads(), reloads_before_t, "a reload happened at T")
        self.assertEqual(self.signers(), {"default": 3, "a.example": 2, "b.example": 3})
        self.assertEqual(self.metrics()[("batv_next_key_switch_timestamp_seconds", "b.example")], 0)

    def test_a_bad_ring_file_refuses_the_whole_reload(self):
        tag_a = self.send("user@a.example")
        tag_b = self.send("user@b.example")
        failed = self.reloads("failed")
        # A broken ring file: the watcher's reload and a SIGHUP both fail, naming the file.
        with open(self.ring_a, "w") as f:
            f.write("this is [not a key file\n")
        os.chmod(self.ring_a, 0o600)
        self.relay.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.reloads("failed") > failed, harness.scaled(10)))
        rec = [r for r in self.relay.logs("reload") if r.get("result") == "failed"][-1]
        self.assertIn(self.ring_a, rec.get("error", ""), rec["_raw"])
        self.assertIn("domain_keys[0].key_file", rec.get("error", ""), rec["_raw"])
        # Every ring keeps its keys: the old runtime stays whole.
        self.assertEqual(self.send("user@a.example"), tag_a)
        self.assertEqual(self.send("user@b.example"), tag_b)
        self.assertEqual(self.bounce(tag_a), (250, "user@a.example"))
        # Too open a ring file is refused the same way.
        failed = self.reloads("failed")
        os.unlink(self.ring_a)
        self.keys(self.ring_a, "import", "--id", "1", "--signing", stdin=b"ring-a-secret\n")
        os.chmod(self.ring_b, 0o644)
        self.relay.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.reloads("failed") > failed, harness.scaled(10)))
        rec = [r for r in self.relay.logs("reload") if r.get("result") == "failed"][-1]
        self.assertIn("permissions 0644 are too open", rec.get("error", ""), rec["_raw"])
        self.assertIn(self.ring_b, rec.get("error", ""), rec["_raw"])
        self.assertEqual(self.send("user@b.example"), tag_b)
        # Fixed: the next reload succeeds and the rings are as configured.
        ok = self.reloads()
        os.chmod(self.ring_b, 0o600)
        self.relay.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: self.reloads() > ok, harness.scaled(10)))
        self.assertEqual(self.send("user@a.example"), tag_a)
        self.assertEqual(self.signers(), {"default": 3, "a.example": 1, "b.example": 2})
        self.assertTrue(self.relay.running())


if __name__ == "__main__":
    harness.run_tests(globals())
