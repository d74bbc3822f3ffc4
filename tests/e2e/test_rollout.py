#!/usr/bin/env python3
"""Key rollout across a fleet: two relays, each with its own copy of the key file.

Usage: test_rollout.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

Each relay has an outbound listener (0) in front of its own smarthost and an inbound listener (1)
in front of its own MX (ScriptedUpstream), domains.verify = example.com and a metrics listener.
The operator's master key file is rotated with batv-keys and copied to relay A, then to relay B
(an atomic copy; the relay's key-file watcher reloads it, and the test waits for event=reload).

- Staged (`rotate --at +Ns`): at every step, every tag a relay has put on a MAIL FROM so far
  (as the smarthost received it) is bounced to both relays and must be accepted; at T both relays
  switch by themselves (event=signing_key_switch, batv_active_key_id, the next-hop MAIL FROM) with
  no reload and no file change, and batv_next_key_switch_timestamp_seconds goes from T to 0.
- Plain `rotate`: relay A signs with the new key at once, and a real bounce of that tag to relay B
  is refused as unknown_key until B gets its copy. That window is what the staged flow avoids.

Real time, not a fake clock: T is a few seconds ahead (STAGE_SECONDS) and the waits are bounded.
"""
import calendar
import json
import os
import re
import shutil
import signal
import smtplib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, SmtpClient  # noqa: E402

RELAY = KEYS = None

HOMER = "homer@example.com"
BART = "bart@elsewhere.org"
BODY = b"Subject: rollout\r\n\r\nhello\r\n"
NDR = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n\r\nyour mail bounced\r\n"
# Far enough ahead for the steps before T on a loaded machine (two deliveries, each up to one
# 2-second key-file poll, and a few SMTP rounds), short enough to keep the test quick.
STAGE_SECONDS = int(harness.scaled(10))


class Node:
    """One relay of the fleet with its key file copy, its smarthost, its MX and its metrics."""

    def __init__(self, test, name, master):
        self.name = name
        self.keys = os.path.join(test.dir, "keys-%s.toml" % name)
        shutil.copy2(master, self.keys)
        self.smarthost = test.upstream()
        self.mx = test.upstream()
        workdir = os.path.join(test.dir, name)
        os.mkdir(workdir)
        self.relay = test.start_relay(
            [{"role": "outbound", "upstream": self.smarthost.port},
             {"role": "inbound", "upstream": self.mx.port}],
            workdir=workdir, keyfile=self.keys, verify_domains=["example.com"], metrics=True,
            # A session stays open across T in one test: idle longer than the wait.
            timeouts={"idle": 2 * STAGE_SECONDS + 30, "command": 2 * STAGE_SECONDS + 30})
        self.metrics_port = self.relay.metrics_port
        self.reloads = 0

    def deliver(self, test, master):
        """The operator copies the master key file here (an atomic rename, as rsync or scp to a
        temporary name do); the relay's key-file watcher picks it up by itself."""
        tmp = self.keys + ".copy"
        shutil.copy2(master, tmp)
        os.replace(tmp, self.keys)
        self.reloads += 1
        recs = self.relay.wait_logs(lambda r: r.get("event") == "reload", self.reloads, timeout=10)
        test.assertEqual(len(recs), self.reloads, "%s did not reload" % self.name)
        test.assertEqual(recs[-1].get("result"), "ok", recs[-1]["_raw"])

    def metrics(self):
        text = harness.metrics_text(self.metrics_port)
        out = {}
        for name in ("batv_active_key_id", "batv_next_key_switch_timestamp_seconds"):
            m = re.search(r'(?m)^%s\{ring="default"\} (\d+)$' % name, text)
            out[name] = int(m.group(1)) if m else None
        return out

    def send(self):
        """One outbound message; returns the MAIL FROM the smarthost got (the tagged sender)."""
        before = len(self.smarthost.transactions())
        with smtplib.SMTP(HOST, self.relay.port(0), local_hostname="client.test", timeout=10) as s:
            s.sendmail(HOMER, [BART], BODY)
        self.smarthost.wait_transactions(before + 1, timeout=10)
        return self.smarthost.transactions()[before].sender

    def bounce(self, tag):
        """A real bounce to `tag` at the inbound listener: (RCPT reply code, reply text)."""
        with SmtpClient(self.relay.port(1)) as c:
            assert c.read_reply().code == 220
            assert c.cmd("EHLO mx.remote.test").code == 250
            assert c.cmd("MAIL FROM:<>").code == 250
            r = c.cmd("RCPT TO:<%s>" % tag)
            if r.code == 250:
                assert c.cmd("DATA").code == 354
                c.send(NDR.replace(b"\r\n.", b"\r\n..") + b".\r\n")
                r2 = c.read_reply()
                assert r2.code == 250, r2
            c.cmd("QUIT")
            return r.code, r.text


def utc(text):
    """Unix seconds of "2026-12-02T22:06:10Z"."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))


def key_of(tag):
    m = re.match(r"^prvs=(\d)\d{3}[0-9a-f]{6}=", tag)
    assert m, tag
    return int(m.group(1))


class RolloutTest(cases.RelayTestCase):
    TMP_PREFIX = "batv-rollout-"
    KEY_FILE = "master.toml"

    def setUp(self):
        super().setUp()
        self.master = self.keys  # key 3 signs
        self.a = Node(self, "a", self.master.path)
        self.b = Node(self, "b", self.master.path)
        self.nodes = (self.a, self.b)
        self.tags = []  # every tag a relay put on a MAIL FROM, in the order they appeared

    def sign_round(self):
        """Each relay signs one message; returns their key ids and keeps the tags."""
        ids = []
        for n in self.nodes:
            tag = n.send()
            self.tags.append(tag)
            ids.append(key_of(tag))
        return ids

    def assert_all_tags_verify_everywhere(self, when):
        for tag in self.tags:
            for n in self.nodes:
                code, text = n.bounce(tag)
                self.assertEqual(code, 250, "%s: bounce to %s refused by relay %s: %s"
                                 % (when, tag, n.name, text))

    def test_staged_rotation_has_no_unknown_key_window(self):
        rc, out, err = self.master.run("rotate", "--at", "+%ds" % STAGE_SECONDS)
        self.assertEqual(rc, 0, err)
        new_id = int(re.match(r"key (\d) ", out).group(1))
        rc, listing, _ = self.master.run("list", "--json")
        T = utc([k for k in json.loads(listing) if k["state"] == "staged"][0]["activate_at"])

        self.assertEqual(self.sign_round(), [3, 3])
        self.assert_all_tags_verify_everywhere("before any copy")
        # Relay A gets the file: it verifies the new key, still signs with the old one.
        self.a.deliver(self, self.master.path)
        self.assertEqual(self.sign_round(), [3, 3])
        self.assert_all_tags_verify_everywhere("A has the file, B not")
        self.assertEqual(self.a.metrics(), {"batv_active_key_id": 3,
                                            "batv_next_key_switch_timestamp_seconds": T})
        self.assertEqual(self.b.metrics()["batv_next_key_switch_timestamp_seconds"], 0)
        # A holds the new key verify-only: a tag made with it (batv-keys sign at T) is accepted.
        rc, early, err = self.master.run("sign", HOMER, now=T)
        self.assertEqual((rc, key_of(early.strip())), (0, new_id), err)
        self.assertEqual(self.a.bounce(early.strip())[0], 250)
        # Relay B gets it later, before T.
        self.b.deliver(self, self.master.path)
        self.assertEqual(self.sign_round(), [3, 3])
        self.assert_all_tags_verify_everywhere("both have the file, before T")
        for n in self.nodes:
            self.assertEqual(n.metrics(), {"batv_active_key_id": 3,
                                           "batv_next_key_switch_timestamp_seconds": T})
        # A reload before T re-arms the switch timer (it does not add a second one).
        self.a.relay.send_signal(signal.SIGHUP)
        self.a.reloads += 1
        self.assertEqual(len(self.a.relay.wait_logs(lambda r: r.get("event") == "reload",
                                                    self.a.reloads, timeout=10)), self.a.reloads)
        self.assertLess(time.time(), T, "the steps before T took longer than %ds: raise "
                        "STAGE_SECONDS (BATV_TEST_TIMEOUT_FACTOR)" % STAGE_SECONDS)

        # At T both switch by themselves: no reload, no change of their files.
        stamps = [os.stat(n.keys).st_mtime_ns for n in self.nodes]
        reloads = [len(n.relay.logs("reload")) for n in self.nodes]
        for n in self.nodes:
            rec = n.relay.wait_log("signing_key_switch", timeout=T - time.time() + 10)
            self.assertIsNotNone(rec, "relay %s logged no signing_key_switch" % n.name)
            self.assertEqual((rec.get("from"), rec.get("to")), ("3", str(new_id)), rec["_raw"])
            self.assertGreaterEqual(utc(rec["ts"]), T, rec["_raw"])  # not before T
        self.assertGreaterEqual(time.time(), T)
        # One switch each, not one per reload (a second one would be logged within the second).
        for n in self.nodes:
            self.assertEqual(len(n.relay.wait_logs(lambda r: r.get("event") == "signing_key_switch",
                                                   2, timeout=1)), 1)
        self.assertEqual([os.stat(n.keys).st_mtime_ns for n in self.nodes], stamps)
        self.assertEqual([len(n.relay.logs("reload")) for n in self.nodes], reloads)
        for n in self.nodes:
            self.assertEqual(n.metrics(), {"batv_active_key_id": new_id,
                                           "batv_next_key_switch_timestamp_seconds": 0})
        self.assertEqual(self.sign_round(), [new_id, new_id])
        self.assert_all_tags_verify_everywhere("after T")
        self.assertEqual({key_of(t) for t in self.tags}, {3, new_id})

    def test_staged_switch_signs_with_the_new_key_in_a_session_open_across_t(self):
        """A session holds the runtime it started with: the keyring in it decides by the time of
        each MAIL, so a connection opened before T signs its next message after T with the new
        key."""
        rc, out, err = self.master.run("rotate", "--at", "+%ds" % STAGE_SECONDS)
        self.assertEqual(rc, 0, err)
        new_id = int(re.match(r"key (\d) ", out).group(1))
        self.a.deliver(self, self.master.path)
        with smtplib.SMTP(HOST, self.a.relay.port(0), local_hostname="client.test", timeout=10) as s:
            s.sendmail(HOMER, [BART], BODY)
            self.a.smarthost.wait_transactions(1, timeout=10)
            self.assertEqual(key_of(self.a.smarthost.transactions()[0].sender), 3)
            rec = self.a.relay.wait_log("signing_key_switch", timeout=STAGE_SECONDS + 10)
            self.assertIsNotNone(rec, "no signing_key_switch")
            s.sendmail(HOMER, [BART], BODY)
            self.a.smarthost.wait_transactions(2, timeout=10)
        self.assertEqual(key_of(self.a.smarthost.transactions()[1].sender), new_id)

    def test_plain_rotation_has_an_unknown_key_window(self):
        new_id = self.master.rotate()
        self.assertEqual(self.sign_round(), [3, 3])
        # Relay A gets the file and signs with the new key at once...
        self.a.deliver(self, self.master.path)
        tag = self.a.send()
        self.assertEqual(key_of(tag), new_id)
        # ...and relay B, still on the old file, refuses a real bounce of that tag.
        code, text = self.b.bounce(tag)
        self.assertEqual(code, 550, text)
        self.assertIn("unknown key", text)
        self.assertIsNotNone(self.b.relay.wait_log(
            lambda r: r.get("event") == "rcpt" and r.get("verdict") == "unknown_key", 5),
            "relay B logged no verdict=unknown_key")
        self.assertEqual(self.a.bounce(tag)[0], 250)
        # The window closes only when B's copy arrives.
        self.b.deliver(self, self.master.path)
        self.assertEqual(self.b.bounce(tag)[0], 250)
        self.assertEqual(self.b.metrics()["batv_active_key_id"], new_id)


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
