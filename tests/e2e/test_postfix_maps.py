#!/usr/bin/env python3
"""batv-relay's Postfix policy service and socketmap end to end: the real binary, real sockets.

Usage: test_postfix_maps.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

role = "policy" (Postfix SMTP access policy delegation, check_policy_service), over TCP and a
unix socket (socket_mode / socket_owner / socket_group honoured): answers for bounces and normal
senders, many requests per connection one at a time and pipelined (answers in order), an
oversized or malformed request (closed without an answer; session_end reason request_too_large
or protocol_error), the idle timeout and the per-request deadline, shutdown with an idle
connection open, metrics.

Through a real Postfix smtpd (private instance, tests/e2e/postfix.py), configured with
check_policy_service and recipient_canonical_maps = socketmap:...:strip: a tagged recipient is
known to Postfix and reaches the next hop stripped, for a bounce and for a normal sender; a
forged bounce gets the policy service's 550 5.7.1 at RCPT; with the relay stopped a bounce is
deferred (451), never accepted unverified.

role = "socketmap" (Postfix socketmap table, map `strip`): queried with Postfix's own client,
`postmap -q KEY socketmap:inet:127.0.0.1:PORT:strip` and `socketmap:unix:/path:strip` (one key,
and `postmap -q -` with many keys over one connection), plus raw netstrings: pipelined queries,
broken netstrings (leading zero, missing comma, non-digit length, a length over 10000) closed
without an answer, the idle timeout.

The key is the harness's (secret "secretkey", id 3); tags come from harness.expected_tag.
"""
import os
import pwd
import grp
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import DAY, HOST, expected_tag, scaled, wait_until  # noqa: E402
from postfix import PostfixInstance  # noqa: E402

RELAY = KEYS = None
POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"

HOMER = "homer@example.com"
BART = "bart@remote.example"


README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")


def readme_canonical_maps():
    """The recipient_canonical_maps value of README.md's no-hop main.cf, as Postfix reads it
    ($$ is main.cf's escape for $)."""
    with open(README, encoding="utf-8") as f:
        m = re.search(r"^recipient_canonical_maps = (pipemap:.+)$", f.read(), re.M)
    if not m:
        raise AssertionError("README.md: no recipient_canonical_maps = pipemap:... line")
    return m.group(1).replace("$$", "$")


def bad_sig(tagged):
    """The same tag with its last signature digit changed."""
    local, _, domain = tagged.rpartition("@")
    head, last = local[:14], local[14]  # "prvs=" K DDD SSSSSS: the last S is local[14]
    return head + ("0" if last != "0" else "1") + local[15:] + "@" + domain


def policy_request(state="RCPT", sender="", recipient=HOMER, client="192.0.2.7", eol="\n"):
    """A request as Postfix 3.7 writes it (a representative subset of its attributes)."""
    attrs = [("request", "smtpd_access_policy"), ("protocol_state", state), ("protocol_name", "ESMTP"),
             ("helo_name", "mx.remote.example"), ("queue_id", ""), ("sender", sender),
             ("recipient", recipient), ("recipient_count", "0"), ("client_address", client),
             ("client_name", "mx.remote.example"), ("reverse_client_name", "mx.remote.example"),
             ("instance", "1a2b.5f0c1d2e.3f4a5.0"), ("sasl_method", ""), ("sasl_username", ""),
             ("size", "0"), ("encryption_protocol", ""), ("stress", ""), ("client_port", "45678"),
             ("policy_context", ""), ("server_address", "127.0.0.1"), ("server_port", "25"),
             ("compatibility_level", "3.6"), ("mail_version", "3.7.11")]
    return ("".join("%s=%s%s" % (k, v, eol) for k, v in attrs) + eol).encode()


def netstring(payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return b"%d:%s," % (len(payload), payload)


class Peer:
    """A raw client of the policy or socketmap listener: TCP port or "unix:/path"."""

    def __init__(self, where, timeout=10.0):
        if isinstance(where, str) and where.startswith("unix:"):
            self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.s.settimeout(scaled(timeout))
            self.s.connect(where[len("unix:"):])
        else:
            self.s = socket.create_connection((HOST, where), timeout=scaled(timeout))
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        try:
            b = self.s.recv(65536)
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
        self.buf += b

    def answers(self, n):
        """The next n policy answers ("action=...\\n\\n" blocks), as text without the framing."""
        out = []
        while len(out) < n:
            cut = self.buf.find(b"\n\n")
            if cut >= 0:
                out.append(self.buf[:cut].decode())
                self.buf = self.buf[cut + 2:]
                continue
            if self.eof:
                raise AssertionError("connection closed after %d of %d answers (rest %r)" % (len(out), n, self.buf))
            self._fill()
        return out

    def replies(self, n):
        """The next n netstring payloads."""
        out = []
        while len(out) < n:
            m = re.match(rb"(\d+):", self.buf)
            if m and len(self.buf) >= m.end() + int(m.group(1)) + 1:
                end = m.end() + int(m.group(1))
                assert self.buf[end:end + 1] == b",", self.buf
                out.append(self.buf[m.end():end].decode())
                self.buf = self.buf[end + 1:]
                continue
            if self.eof:
                raise AssertionError("connection closed after %d of %d replies (rest %r)" % (len(out), n, self.buf))
            self._fill()
        return out

    def closed_without_answer(self):
        """True when the peer closes with nothing (more) sent."""
        while not self.eof:
            self._fill()
        return self.buf == b""

    def close(self):
        self.s.close()


class MapsTest(cases.RelayTestCase):
    TMP_PREFIX = "batv-maps-"
    TMP_MODE = 0o755
    RELAY_KW = {"sign_domains": ("example.com", "example.org")}

    def setUp(self):
        super().setUp()
        self.pfconf = os.path.join(self.dir, "postfix")
        os.mkdir(self.pfconf)
        with open(os.path.join(self.pfconf, "main.cf"), "w") as f:
            # maillog_file: one of the default maillog_file_prefixes; postmap writes its warnings and
            # fatal errors to stderr as well, which the lookups below require to stay empty.
            f.write("compatibility_level = 3.6\nmaillog_file = /dev/stdout\n")

    def peer(self, where, timeout=10.0):
        p = Peer(where, timeout)
        self.addCleanup(p.close)
        return p

    def session_end(self, r, role, reason, timeout=10.0):
        rec = r.wait_log(lambda x: x.get("event") == "session_end" and x.get("role") == role
                         and x.get("reason") == reason, timeout)
        self.assertIsNotNone(rec, "no session_end role=%s reason=%s" % (role, reason))
        return rec

    def postmap(self, key, table, stdin=None):
        """postmap -q KEY TABLE (or -q - with stdin): (exit code, stdout, stderr)."""
        args = [POSTMAP, "-c", self.pfconf, "-q", key, table]
        p = harness.run_checked(args, input=stdin.encode() if stdin is not None else None, timeout=scaled(30))
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    # --- policy ----------------------------------------------------------------------------

    def test_policy_answers_over_tcp_one_at_a_time_and_pipelined(self):
        r = self.relay([{"role": "policy"}])
        now = time.time()
        tag = expected_tag(HOMER, now)
        cases = [
            (policy_request(sender="", recipient=tag), "action=DUNNO"),
            (policy_request(sender="", recipient=bad_sig(tag)), "action=550 5.7.1 bounce refused: bad signature"),
            (policy_request(sender="", recipient=expected_tag(HOMER, now - 10 * DAY)),
             "action=550 5.7.1 bounce refused: tag expired"),
            (policy_request(sender="", recipient=HOMER), "action=550 5.7.1 bounce refused: address not tagged"),
            (policy_request(sender="", recipient="postmaster@example.com"), "action=DUNNO"),
            (policy_request(sender="", recipient="lisa@elsewhere.example"), "action=DUNNO"),
            (policy_request(sender=BART, recipient=bad_sig(tag)), "action=DUNNO"),
            (policy_request(sender=BART, recipient=HOMER), "action=DUNNO"),
            (policy_request(state="MAIL", sender="", recipient=""), "action=DUNNO"),
            (policy_request(sender="", recipient=HOMER, eol="\r\n"),
             "action=550 5.7.1 bounce refused: address not tagged"),
        ]
        p = self.peer(r.port(0))
        for req, want in cases:  # one at a time on one connection
            p.send(req)
            self.assertEqual(p.answers(1), [want])
        # Pipelined: 50 rounds of every case in one write, answered in order.
        p.send(b"".join(req for req, _ in cases) * 50)
        self.assertEqual(p.answers(len(cases) * 50), [want for _, want in cases] * 50)
        p.close()
        rec = self.session_end(r, "policy", "client_closed")
        self.assertEqual(rec.get("requests"), str(len(cases) * 51))
        # Per-request log lines with the proxy's verdict and action names.
        logs = r.logs("policy")
        self.assertTrue(any(x.get("verdict") == "bad_signature" and x.get("action") == "refused"
                            and x.get("bounce") == "true" for x in logs))
        self.assertTrue(any(x.get("verdict") == "valid" and x.get("action") == "accepted" for x in logs))

    def test_policy_bad_signature_reject_and_monitor_mode(self):
        r = self.relay([{"role": "policy"}], inbound={"bad_signature": "reject"},
                       domain_mode={"example.org": "monitor"})
        tag = expected_tag(HOMER)
        p = self.peer(r.port(0))
        p.send(policy_request(sender=BART, recipient=bad_sig(tag)) + policy_request(sender=BART, recipient=tag)
               + policy_request(sender="", recipient="marge@example.org")
               + policy_request(sender="", recipient=expected_tag("marge@example.org")))
        self.assertEqual(p.answers(4), ["action=550 5.7.1 tag does not verify: bad signature", "action=DUNNO",
                                        "action=PREPEND X-BATV-Status: untagged",
                                        "action=PREPEND X-BATV-Status: valid"])

    def test_policy_unix_socket_mode_and_owner(self):
        path = os.path.join(self.dir, "policy.sock")
        li = {"role": "policy", "listen": "unix:" + path, "socket_mode": "0600"}
        as_root = os.geteuid() == 0
        if as_root:
            li.update(socket_owner="nobody", socket_group="nogroup")
        r = self.relay([li])
        self.assertEqual(r.port(0), "unix:" + path)
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        p = self.peer(r.port(0))
        p.send(policy_request(sender="", recipient=HOMER) * 3)
        self.assertEqual(p.answers(3), ["action=550 5.7.1 bounce refused: address not tagged"] * 3)
        rec = r.wait_log(lambda x: x.get("event") == "session_start" and x.get("role") == "policy", 5)
        self.assertEqual(rec.get("peer"), "unix:" + path)
        if not as_root:
            return
        self.assertEqual(st.st_uid, pwd.getpwnam("nobody").pw_uid)
        self.assertEqual(st.st_gid, grp.getgrnam("nogroup").gr_gid)

        # The owner may connect; another user may not (mode 0600).
        def connect_as(user):
            # A forked child of this test drops to `user` and tries to connect.
            pw = pwd.getpwnam(user)
            pid = os.fork()
            if pid == 0:
                code = 2
                try:
                    os.setgroups([])
                    os.setgid(pw.pw_gid)
                    os.setuid(pw.pw_uid)
                    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    c.connect(path)
                    code = 0
                except PermissionError:
                    code = 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            return {0: "connected", 1: "denied"}.get(os.waitstatus_to_exitcode(status), "error")
        self.assertEqual(connect_as("nobody"), "connected")
        self.assertEqual(connect_as("daemon"), "denied")
        r.stop()
        self.assertFalse(os.path.exists(path), "the socket file outlived the relay")

    def test_policy_oversized_and_malformed_requests_are_never_answered(self):
        r = self.relay([{"role": "policy"}], limits={"policy_request_size": 4096, "policy_attributes": 40,
                                                     "policy_attribute_length": 512})
        good = policy_request(sender="", recipient=HOMER)
        cases = [
            # (bytes, session_end reason)
            (b"x" * 5000, "request_too_large"),                                    # no end in sight
            (b"request=smtpd_access_policy\n" + b"a=%s\n" % (b"v" * 600) + b"\n", "request_too_large"),
            (b"".join(b"a%d=1\n" % i for i in range(41)) + b"\n", "request_too_large"),
            (b"request=smtpd_access_policy\nthis line has no equals sign\n\n", "protocol_error"),
            (b"request=smtpd_access_policy\nsender=\nsender=\nrecipient=" + HOMER.encode() + b"\n\n",
             "protocol_error"),
            (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\x00\nrecipient=a@example.com\n\n",
             "protocol_error"),
            (b"request=other\nprotocol_state=RCPT\nsender=\nrecipient=" + HOMER.encode() + b"\n\n",
             "protocol_error"),
            (b"request=smtpd_access_policy\nprotocol_state=RCPT\nsender=\n\n", "protocol_error"),
        ]
        for data, reason in cases:
            with self.subTest(data=data[:60], reason=reason):
                before = len([x for x in r.logs("session_end") if x.get("reason") == reason])
                p = self.peer(r.port(0))
                # A good request first: answered; then the bad one: nothing, and the connection ends.
                p.send(good + data)
                self.assertEqual(p.answers(1), ["action=550 5.7.1 bounce refused: address not tagged"])
                self.assertTrue(p.closed_without_answer(), "answered a bad request: %r" % p.buf)
                self.assertIsNotNone(r.wait_log(
                    lambda x: x.get("event") == "session_end" and x.get("reason") == reason
                    and len([y for y in r.logs("session_end") if y.get("reason") == reason]) > before, 10))
        self.assertTrue(r.running())

    def test_policy_idle_timeout_and_request_deadline(self):
        r = self.relay([{"role": "policy"}], timeouts={"policy_idle": 1, "policy_request": 2})
        p = self.peer(r.port(0))
        p.send(policy_request(sender="", recipient=HOMER))
        self.assertEqual(len(p.answers(1)), 1)
        t0 = time.monotonic()
        self.assertTrue(p.closed_without_answer())
        self.assertLess(time.monotonic() - t0, scaled(5))
        self.session_end(r, "policy", "idle_timeout")
        # A request trickling in: each byte within the idle timeout, the whole beyond its deadline.
        r2 = self.peer(r.port(0))
        t0 = time.monotonic()
        data = policy_request(sender="", recipient=HOMER)
        closed = False
        for i in range(len(data) - 1):
            try:
                r2.send(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.25)
            if time.monotonic() - t0 > scaled(8):
                break
        self.assertTrue(closed or r2.closed_without_answer())
        self.assertLess(time.monotonic() - t0, scaled(6))
        self.assertEqual(len([x for x in r.logs("session_end") if x.get("reason") == "idle_timeout"]), 2)

    def test_policy_shutdown_ends_idle_connections_and_metrics_count_answers(self):
        r = self.relay([{"role": "policy"}], timeouts={"shutdown_grace": 30}, metrics=True)
        mport = r.metrics_port
        p = self.peer(r.port(0))
        p.send(policy_request(sender="", recipient=HOMER) * 2 + policy_request(sender="", recipient=expected_tag(HOMER))
               + policy_request(sender=BART, recipient=HOMER))
        self.assertEqual(len(p.answers(4)), 4)
        text = harness.metrics_text(mport, timeout=scaled(10))

        def value(series):
            m = re.search(r"^%s (\S+)$" % re.escape(series), text, re.M)
            return float(m.group(1)) if m else None
        self.assertEqual(value('batv_requests_total{role="policy",answer="reject"}'), 2)
        self.assertEqual(value('batv_requests_total{role="policy",answer="dunno"}'), 2)
        # Bounce verdicts only (the normal sender's untagged RCPT is not counted).
        self.assertEqual(value('batv_verify_total{domain="example.com",verdict="untagged"}'), 2)
        self.assertEqual(value('batv_verify_total{domain="example.com",verdict="valid"}'), 1)
        # SIGTERM with the connection idle between requests (as Postfix keeps it): it ends when
        # the shutdown begins, without waiting for shutdown_grace (set far above the bound here).
        t0 = time.monotonic()
        r.send_signal(signal.SIGTERM)
        self.assertTrue(p.closed_without_answer())
        self.assertLess(time.monotonic() - t0, 5)
        self.session_end(r, "policy", "shutdown")
        self.assertTrue(wait_until(lambda: not r.running(), 10), "the relay waited for shutdown_grace")
        self.assertLess(time.monotonic() - t0, 5, "the relay waited for shutdown_grace")
        self.assertEqual(r.stop(), 0)

    # --- socketmap -------------------------------------------------------------------------

    def test_socketmap_with_postmap_over_tcp_and_unix(self):
        path = os.path.join(self.dir, "map.sock")
        r = self.relay([{"role": "socketmap"}, {"role": "socketmap", "listen": "unix:" + path, "socket_mode": "0660"}])
        now = time.time()
        tag = expected_tag(HOMER, now)
        keys = [
            (tag, 0, HOMER),
            (expected_tag(HOMER, now - 10 * DAY), 0, HOMER),   # expired: still stripped
            (bad_sig(tag), 0, HOMER),                          # bad_signature = "strip" (default)
            ("prvs=9" + tag[6:], 0, HOMER),                    # unknown key id: same rule
            (HOMER, 1, ""),                                    # untagged
            ("prvs=36829=homer@example.com", 1, ""),           # malformed tag
            (expected_tag("lisa@elsewhere.example", now), 1, ""),  # not our domain
        ]
        for table in ("socketmap:inet:127.0.0.1:%d:strip" % r.port(0), "socketmap:unix:%s:strip" % path):
            for key, code, out in keys:
                with self.subTest(table=table, key=key):
                    rc, stdout, stderr = self.postmap(key, table)
                    # Exit 1 is both "not found" and a failed lookup: stderr tells them apart.
                    self.assertEqual((rc, stdout.strip(), stderr), (code, out, ""))
            # Many keys over one connection: postmap -q - looks each line up in turn.
            rc, stdout, stderr = self.postmap("-", table, stdin="".join(k + "\n" for k, _, _ in keys) * 20)
            want = "".join("%s\t%s\n" % (k, out) for k, code, out in keys if code == 0) * 20
            self.assertEqual((stdout, stderr), (want, ""))
        # An unknown map name: Postfix reports the server's permanent error.
        rc, stdout, stderr = self.postmap(tag, "socketmap:inet:127.0.0.1:%d:other" % r.port(0))
        self.assertNotEqual(rc, 0)
        self.assertIn("unknown map name", stderr)
        ends = [x for x in r.logs("session_end") if x.get("role") == "socketmap"]
        self.assertTrue(any(int(x.get("requests", 0)) == len(keys) * 20 for x in ends), ends)

    def test_socketmap_behind_the_readme_prefilter_answers_the_same(self):
        """README's recipient_canonical_maps: a pipemap that passes only prvs= keys on to the
        socketmap. Key by key, the same answers as the socketmap alone, and untagged keys never
        reach the relay."""
        r = self.relay([{"role": "socketmap"}])
        plain = "socketmap:inet:127.0.0.1:%d:strip" % r.port(0)
        lean = readme_canonical_maps().replace("127.0.0.1:10028", "127.0.0.1:%d" % r.port(0))
        self.assertTrue(lean.startswith("pipemap:{regexp:"), lean)
        now = time.time()
        tag = expected_tag(HOMER, now)
        keys = [tag, "PRVS=" + tag[5:], "Prvs=" + tag[5:], expected_tag(HOMER, now - 10 * DAY), bad_sig(tag),
                "prvs=9" + tag[6:], "prvs=36829=homer@example.com", expected_tag("lisa@elsewhere.example", now),
                HOMER, "@example.com", "homer", "x" + tag, "homer+" + tag, "prvs="]
        for key in keys:
            with self.subTest(key=key):
                self.assertEqual(self.postmap(key, lean), self.postmap(key, plain))
        tagged = [k for k in keys if k.lower().startswith("prvs=") and len(k) > 5]
        # Every plain lookup reached the relay, and only the tagged ones of the prefilter did.
        want = len(keys) + len(tagged)
        def served():
            return sum(int(x.get("requests", 0)) for x in r.logs("session_end") if x.get("role") == "socketmap")
        self.assertTrue(wait_until(lambda: served() >= want, 10), (served(), want))
        time.sleep(0.2)  # a late session_end of an untagged key would show here
        self.assertEqual(served(), want)

    def test_socketmap_raw_netstrings_pipelined_and_broken(self):
        r = self.relay([{"role": "socketmap"}], inbound={"bad_signature": "keep"})
        tag = expected_tag(HOMER)
        p = self.peer(r.port(0))
        queries = [("strip " + tag, "OK " + HOMER), ("strip " + bad_sig(tag), "NOTFOUND "),
                   ("strip " + HOMER, "NOTFOUND "), ("strip", "PERM malformed query"),
                   ("nope " + tag, "PERM unknown map name"), ("strip ", "NOTFOUND ")]
        wire = b"".join(netstring(q) for q, _ in queries) * 100
        # In pieces that split netstrings anywhere: answers still come whole and in order.
        for i in range(0, len(wire), 997):
            p.send(wire[i:i + 997])
        self.assertEqual(p.replies(len(queries) * 100), [a for _, a in queries] * 100)
        broken = [
            (b"01:x,", "protocol_error"),
            (b"5:hello;", "protocol_error"),
            (b"x:", "protocol_error"),
            (b":,", "protocol_error"),
            (b"10001:", "request_too_large"),
            (b"99999999999999999999", "request_too_large"),
        ]
        for data, reason in broken:
            with self.subTest(data=data):
                before = len([x for x in r.logs("session_end") if x.get("reason") == reason])
                q = self.peer(r.port(0))
                q.send(netstring("strip " + tag) + data)
                self.assertEqual(q.replies(1), ["OK " + HOMER])
                self.assertTrue(q.closed_without_answer(), "answered a broken netstring: %r" % q.buf)
                self.assertIsNotNone(r.wait_log(
                    lambda x: x.get("event") == "session_end" and x.get("reason") == reason
                    and len([y for y in r.logs("session_end") if y.get("reason") == reason]) > before, 10))
        # The largest query Postfix may send is answered.
        q = self.peer(r.port(0))
        big = "strip " + "a" * (10000 - 6 - len("@example.com")) + "@example.com"
        q.send(netstring(big))
        self.assertEqual(q.replies(1), ["NOTFOUND "])
        self.assertTrue(r.running())

    def test_socketmap_idle_timeout(self):
        r = self.relay([{"role": "socketmap"}], timeouts={"socketmap_idle": 1})
        p = self.peer(r.port(0))
        p.send(netstring("strip " + expected_tag(HOMER)))
        self.assertEqual(p.replies(1), ["OK " + HOMER])
        t0 = time.monotonic()
        self.assertTrue(p.closed_without_answer())
        self.assertLess(time.monotonic() - t0, scaled(5))
        self.session_end(r, "socketmap", "idle_timeout")

    def test_reload_a_rotated_key_verifies_on_connections_already_open(self):
        # Postfix keeps a policy connection for up to smtpd_policy_service_max_ttl (1000 s): a key
        # rotated meanwhile signs at once, so its bounces must verify on the open connections.
        r = self.relay([{"role": "policy"}, {"role": "socketmap"}], inbound={"bad_signature": "keep"})
        old = expected_tag(HOMER)
        pol, smap = self.peer(r.port(0)), self.peer(r.port(1))
        pol.send(policy_request(sender="", recipient=old))
        smap.send(netstring("strip " + old))
        self.assertEqual(pol.answers(1), ["action=DUNNO"])
        self.assertEqual(smap.replies(1), ["OK " + HOMER])
        new_id = self.keys.rotate()
        r.send_signal(signal.SIGHUP)
        self.assertIsNotNone(r.wait_log(lambda x: x.get("event") == "reload" and x.get("result") == "ok", 10))
        rc, out, err = self.keys.run("sign", HOMER)
        tagged = out.strip()
        self.assertTrue(tagged.startswith("prvs=%d" % new_id), tagged)
        # Without the reload applied, the new key would be unknown: 550 / NOTFOUND.
        pol.send(policy_request(sender="", recipient=tagged) + policy_request(sender="", recipient=old))
        self.assertEqual(pol.answers(2), ["action=DUNNO", "action=DUNNO"])  # the old key still verifies
        smap.send(netstring("strip " + tagged) + netstring("strip " + old))
        self.assertEqual(smap.replies(2), ["OK " + HOMER, "OK " + HOMER])
        # And on a new connection.
        fresh = self.peer(r.port(1))
        fresh.send(netstring("strip " + tagged))
        self.assertEqual(fresh.replies(1), ["OK " + HOMER])


@unittest.skipUnless(os.geteuid() == 0, "a private Postfix needs root")
class ThroughPostfixTest(cases.RelayTestCase):
    """A Postfix MX for example.com (relay_domains, recipients listed in relay_recipient_maps,
    so an unknown one is refused) in front of a ScriptedUpstream, with both roles on TCP."""

    TMP_PREFIX = "batv-maps-pf-"
    TMP_MODE = 0o755

    def setUp(self):
        super().setUp()
        self.relay = self.start_relay([{"role": "policy"}, {"role": "socketmap"}])
        self.up = self.upstream()
        policy = "inet:127.0.0.1:%d" % self.relay.port(0)
        smap = "socketmap:inet:127.0.0.1:%d:strip" % self.relay.port(1)
        self.pf = PostfixInstance(workdir=self.dir, relay_port=self.up.port, main_cf_extra={
            "relay_domains": "example.com",
            "relay_recipient_maps": "inline:{homer@example.com=ok, postmaster@example.com=ok}",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "check_policy_service " + policy,
            "smtpd_policy_service_timeout": "10s",
            "smtpd_policy_service_default_action": "451 4.3.5 BATV check unavailable",
            "recipient_canonical_maps": smap,
            "recipient_canonical_classes": "envelope_recipient",
        })
        self.addCleanup(self.pf.stop)

    def rcpt(self, sender, rcpt):
        """MAIL FROM:<sender> RCPT TO:<rcpt> (and DATA when accepted): the RCPT reply."""
        import smtplib
        with smtplib.SMTP(HOST, self.pf.port, timeout=scaled(30)) as c:
            c.ehlo("mx.remote.example")
            c.mail(sender)
            code, text = c.rcpt(rcpt)
            if code == 250:
                c.data(b"Subject: maps e2e\r\n\r\nhello\r\n")
            return code, text.decode()

    def test_policy_and_socketmap_in_postfix(self):
        tag = expected_tag(HOMER)
        self.assertEqual(self.rcpt("", tag)[0], 250)                    # a real bounce
        self.assertEqual(self.rcpt(BART, tag)[0], 250)                  # a reply to our mail
        # A forged bounce: our text, behind the prefix Postfix puts on every access(5) refusal.
        code, text = self.rcpt("", HOMER)
        self.assertEqual((code, text), (550, "5.7.1 <%s>: Recipient address rejected: bounce refused: "
                                             "address not tagged" % HOMER))
        code, text = self.rcpt("", bad_sig(tag))
        self.assertEqual((code, text), (550, "5.7.1 <%s>: Recipient address rejected: bounce refused: "
                                             "bad signature" % bad_sig(tag)))
        self.assertEqual(self.rcpt("", "postmaster@example.com")[0], 250)  # exempt
        # Without the socketmap the tagged address would be unknown to Postfix: prove the map is
        # what made it known (an unlisted address is refused by Postfix itself).
        self.assertEqual(self.rcpt(BART, "marge@example.com")[0], 550)
        txs = self.up.wait_transactions(3, timeout=30)
        rcpts = sorted(r for t in txs for r in t.rcpts)
        self.assertEqual(len(txs), 3, txs)
        # Postfix keeps the address as received in ORCPT (xtext: "=" is "+3D").
        self.assertEqual(rcpts, sorted(["RCPT TO:<%s> ORCPT=rfc822;%s" % (HOMER, tag.replace("=", "+3D"))] * 2
                                       + ["RCPT TO:<postmaster@example.com> ORCPT=rfc822;postmaster@example.com"]),
                         rcpts)
        # The relay down: a bounce is deferred by the default action, never accepted unverified.
        self.relay.stop()
        code, text = self.rcpt("", tag)
        self.assertEqual(code // 100, 4, text)


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
