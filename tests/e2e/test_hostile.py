#!/usr/bin/env python3
"""batv-relay against hostile clients, end to end through the real binary.

Usage: test_hostile.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args, e.g. -k bdat]

The inbound listener faces the whole Internet: whatever a client sends, the relay must answer it
correctly or close cleanly, within a bounded time and bounded memory, without disturbing other
sessions, and without ever completing (or duplicating) a message at the next hop that the client
did not finish. Every attack here runs against the real relay with a scripted next hop
(harness.ScriptedUpstream, which records every transaction, complete or not), most of them for
both roles (class names Outbound*/Inbound*), and checks:

  reply     the exact reply (code and RFC 3463 enhanced code, usually the whole text) or a clean
            close, within a stated time;
  memory    the relay's RSS (sampled every 25 ms during the attack) stays within MEM_BOUND_KIB of
            its level before the attack;
  others    a well-behaved smtplib client sending messages through the same listener during the
            attack (GoodTraffic) gets every one accepted within GOOD_MAX seconds, and each of its
            messages reaches the next hop exactly once;
  nothing   a message the attacker did not finish never becomes a completed next-hop transaction
  half-done (the next hop sees the connection dropped without the final dot / LAST chunk);
  logs      every session has exactly one event=session_end (checked after every test), with the
            reason the test names; metrics where relevant.

Attacks: connection floods over sessions_per_client and over sessions, and one that runs the relay
out of file descriptors (RLIMIT_NOFILE 40); slowloris in commands, in
DATA and in a BDAT chunk, next to a slow-but-steady client that must not be cut; 100 MiB without a
newline (command) and 20 MiB without a newline (DATA, over message_size); NUL and 8-bit bytes in
commands and addresses (with and without SMTPUTF8); pipelining floods (read afterwards: every reply
in order; never read: the relay stops reading, memory stays flat, the idle timeout ends it);
thousands of RCPTs (452 4.5.3 past recipients_per_message) and, inbound, thousands of forged
bounce recipients (421 at invalid_recipients_per_session); BDAT with short, long, oversize,
overflowing, zero and non-numeric chunk sizes; half-closed sockets; clients vanishing (FIN or RST)
mid-DATA, on a partial terminator, mid-BDAT, and right after the final dot (delivered once); a
10 MiB SASL response inside AUTH (500 5.5.6); and 30 hostile sessions of five kinds at once.
STARTTLS command injection (CVE-2011-0411) is tested in test_tls.py
(test_starttls_command_injection_discarded, test_starttls_injected_transaction_never_reaches_next_hop).

Set BATV_E2E_LOGS=1 to print every relay log; the log tail of a failed test is always printed.
BATV_E2E_RSS=1 prints the measured RSS (start, peak, growth) of each memory check.
"""
import itertools
import os
import selectors
import smtplib
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, MiB, Relay, Reply, expected_tag, wait_until  # noqa: E402

RELAY = KEYS = None

HOMER = "homer@example.com"
BART = "bart@elsewhere.org"
LISA = "lisa@other.org"
HOSTNAME = "relay.test"

MEM_BOUND_KIB = 8 * 1024       # RSS growth allowed during an attack (the relay idles at ~10 MiB)
GOOD_MAX = 5.0                 # seconds one well-behaved message may take during an attack

TIMEOUT_REPLY = Reply(421, "4.4.2 %s Error: timeout exceeded" % HOSTNAME)
DATA_TIMEOUT_REPLY = Reply(421, "4.4.2 %s Error: DATA took too long, closing" % HOSTNAME)
TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0 %s Too many connections from your address, try again later"
                             % HOSTNAME)
TOO_MANY_SESSIONS = Reply(421, "4.7.0 %s Too many connections, try again later" % HOSTNAME)
LINE_TOO_LONG = Reply(500, "5.5.2 Line too long")
NUL_REPLY = Reply(500, "5.5.2 NUL character in command")
UNKNOWN = Reply(500, "5.5.1 Command unrecognized")
NEEDS_UTF8 = Reply(553, "5.6.7 Address needs SMTPUTF8 (RFC 6531)")
TOO_BIG = Reply(552, "5.3.4 Message size exceeds fixed limit")
TOO_MANY_RCPTS = Reply(452, "4.5.3 Too many recipients")
BAD_RCPT_UTF8 = Reply(501, "5.1.3 Bad recipient address syntax: bad_local_part")
BDAT_SYNTAX = Reply(501, "5.5.4 Syntax: BDAT size [LAST]")
U64_MAX = 2 ** 64 - 1

_tags = itertools.count(1)
_sanitized = []


def relay_is_sanitized():
    """True for an ASan build of the relay (BATV_SANITIZE): its RSS is not a measure of what the
    relay keeps (ASan holds freed memory in quarantine, 256 MiB by default), and its runtime needs
    file descriptors of its own (UBSan's vptr check opens a pipe to probe memory and reports
    "invalid vptr" when it cannot), so the memory bounds and the descriptor-exhaustion test only
    apply to a normal build."""
    if not _sanitized:
        found = False
        with open(RELAY, "rb") as f:
            tail = b""
            for chunk in iter(lambda: f.read(1 << 20), b""):
                if b"__asan_init" in tail + chunk:
                    found = True
                    break
                tail = chunk[-16:]
        _sanitized.append(found)
    return _sanitized[0]


def new_tag(what):
    return "%s-%d-%d" % (what, os.getpid(), next(_tags))


def body_for(tag, extra=b""):
    return b"Subject: " + tag.encode() + b"\r\nMessage-Id: <" + tag.encode() + b"@test>\r\n\r\n" \
        + b"hello\r\n" + extra


def parse_metrics(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition (enough for counters)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        pairs = frozenset(tuple(p.split("=", 1)) for p in labels.rstrip("}").replace('"', "").split(",")
                          if p)
        out[(name, pairs)] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# background helpers

class RssWatch:
    """Samples the relay's VmRSS every 25 ms while active; peak and start in KiB."""

    def __init__(self, relay):
        self.relay = relay
        self.start = relay.rss_kib()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.relay.rss_kib())
            except (OSError, RuntimeError):
                return
            self._stop.wait(0.025)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    @property
    def growth(self):
        return self.peak - self.start


class GoodTraffic:
    """A well-behaved client next to the attack: one smtplib message every `interval` seconds,
    each with its own tag, until the context ends (at least `min_messages`)."""

    def __init__(self, test, relay, interval=0.3, min_messages=2):
        self.test, self.relay, self.interval, self.min_messages = test, relay, interval, min_messages
        self.results = []          # (tag, seconds, error or None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set() or len(self.results) < self.min_messages:
            tag = new_tag("good")
            t = time.monotonic()
            err = None
            try:
                with smtplib.SMTP(HOST, self.relay.port(), local_hostname="good.test",
                                  timeout=GOOD_MAX + 5) as s:
                    refused = s.sendmail(self.test.sender, [self.test.rcpt], body_for(tag))
                    if refused:
                        err = "refused %r" % refused
            except Exception as e:   # noqa: BLE001 - any failure is a finding, reported below
                err = "%s: %s" % (type(e).__name__, e)
            self.results.append((tag, time.monotonic() - t, err))
            if len(self.results) > 200:
                return
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(60)

    def check(self, up):
        t = self.test
        t.assertGreaterEqual(len(self.results), self.min_messages)
        bad = [r for r in self.results if r[2] is not None or r[1] > GOOD_MAX]
        t.assertFalse(bad, "well-behaved messages failed or were slow during the attack: %r" % bad)
        for tag, _, _ in self.results:
            t.assertDeliveredOnce(up, tag)
            t.assertEqual(t.with_tag(up, tag)[0].rcpts, ["RCPT TO:<%s>" % t.upstream_rcpt])


class Flood:
    """n TCP connections opened as fast as possible, round robin over `sources` (local addresses
    in 127/8), read without ever sending. collect() waits until each is decided: it got a 220
    greeting line (admitted; stays open) or was closed by the relay."""

    def __init__(self, port, n, sources=("127.0.0.2",)):
        self.sel = selectors.DefaultSelector()
        self.conns = []
        for i in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((sources[i % len(sources)], 0))
            s.setblocking(False)
            s.connect_ex((HOST, port))
            c = {"sock": s, "source": sources[i % len(sources)], "data": b"", "closed": False,
                 "t": None}
            self.conns.append(c)
            self.sel.register(s, selectors.EVENT_READ, c)
        self.t0 = time.monotonic()

    @staticmethod
    def decided(c):
        return c["closed"] or (c["data"].startswith(b"220") and b"\n" in c["data"])

    def collect(self, timeout):
        deadline = time.monotonic() + timeout
        while not all(self.decided(c) for c in self.conns) and time.monotonic() < deadline:
            for key, _ in self.sel.select(0.1):
                c = key.data
                try:
                    d = c["sock"].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    d = b""
                if d:
                    c["data"] += d
                else:
                    c["closed"] = True
                    c["t"] = time.monotonic() - self.t0
                    self.sel.unregister(c["sock"])
        return self.conns

    def admitted(self):
        return [c for c in self.conns if not c["closed"] and c["data"].startswith(b"220")]

    def close(self):
        for c in self.conns:
            try:
                c["sock"].close()
            except OSError:
                pass
        self.sel.close()


def first_reply(data):
    line = data.split(b"\r\n", 1)[0].decode("utf-8", "replace")
    return Reply(int(line[:3]), line[4:]) if line[:3].isdigit() else Reply(0, line)


def rst_close(sock):
    """Close with RST instead of FIN (SO_LINGER 0): the client vanishes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------------------------------------
class HostileCase(cases.RelayTestCase):
    """One relay listener of role ROLE in front of a ScriptedUpstream. sender/rcpt: a message
    each role accepts (outbound: a signed sender; inbound: a bounce to a valid tag, which the
    next hop receives untagged as upstream_rcpt)."""

    ROLE = "outbound"
    # One next-hop connection per session (no idle-connection reuse): these tests count and
    # index next-hop connections to prove what an attack did or did not open upstream.
    TIMEOUTS = {"upstream_idle": 0}

    def setUp(self):
        super().setUp()
        self.sender = HOMER if self.ROLE == "outbound" else ""
        self.rcpt = BART if self.ROLE == "outbound" else expected_tag(HOMER)
        self.upstream_rcpt = BART if self.ROLE == "outbound" else HOMER
        self.metrics_port = None

    # -- fixtures --
    def relay(self, up, limits=None, timeouts=None, metrics=False, warm_up=True):
        """The relay, started; one message sent through it first (warm-up: the RSS baseline
        then includes what the first session allocates)."""
        r = self.start_relay(up, role=self.ROLE, limits=limits, timeouts=timeouts, metrics=metrics,
                             start=False)
        self.addCleanup(self.check_session_ends, r)
        r.start()
        if metrics:
            self.metrics_port = self.metrics_port_of(r)
        if warm_up:
            tag = new_tag("warm-up")
            with smtplib.SMTP(HOST, r.port(), local_hostname="good.test", timeout=10) as s:
                s.sendmail(self.sender, [self.rcpt], body_for(tag))
            self.assertDeliveredOnce(up, tag)
        return r

    def open_tx(self, c):
        """MAIL and RCPT of an acceptable message, both 250."""
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % self.sender).code, 250)
        r = c.cmd("RCPT TO:<%s>" % self.rcpt)
        self.assertEqual(r.code, 250, r)

    def metrics(self):
        return parse_metrics(harness.metrics_text(self.metrics_port))

    # -- next hop --
    @staticmethod
    def with_tag(up, tag):
        t = tag.encode()
        return [x for x in up.transactions() if t in x.data or t in x.bdat]

    def assertDeliveredOnce(self, up, tag, timeout=10.0):
        wait_until(lambda: any(x.accepted for x in self.with_tag(up, tag)), timeout)
        txs = self.with_tag(up, tag)
        self.assertEqual([x.accepted for x in txs], [True],
                         "message %s must reach the next hop exactly once: %r" % (tag, txs))

    def assertNeverCompleted(self, up, tag=None):
        """No next-hop transaction (with `tag` in its body, or none at all after the warm-up)
        was completed."""
        txs = self.with_tag(up, tag) if tag else up.transactions()
        if tag is None:
            txs = [x for x in txs if b"warm-up" not in x.data + x.bdat and b"good-" not in x.data]
        self.assertFalse([x for x in txs if x.completed],
                         "an unfinished message was completed at the next hop: %r" % txs)

    def assertUpstreamDropped(self, up, conn_index, timeout=5.0):
        conns = up.wait_connections(conn_index + 1)
        self.assertTrue(conns[conn_index].closed.wait(timeout),
                        "the next-hop connection of an interrupted message was not dropped")

    # -- logs --
    def end_of(self, relay, client, timeout=10.0):
        """The session_end record of a client socket (SmtpClient or local port)."""
        port = client if isinstance(client, int) else client.local_port
        name = "127.0.0.1:%d" % port
        rec = relay.wait_log(lambda x: x.get("event") == "session_end" and x.get("client") == name,
                             timeout)
        self.assertIsNotNone(rec, "no session_end for %s" % name)
        return rec

    def check_session_ends(self, relay):
        """After the test (clients closed): exactly one session_end per connect, same sids."""
        if not relay.running():
            return
        wait_until(lambda: len(relay.logs("session_end")) >= len(relay.logs("connect")), 15, 0.05)
        time.sleep(0.1)
        connects = [x["sid"] for x in relay.logs("connect")]
        ends = [x.get("sid") for x in relay.logs("session_end")]
        self.assertEqual(sorted(ends), sorted(connects),
                         "want exactly one session_end per session")

    def assertReplyWithin(self, c, want, seconds):
        t = time.monotonic()
        got = c.read_reply(timeout=seconds)
        self.assertEqual(got, want)
        return time.monotonic() - t

    def assertClosedWithin(self, c, seconds):
        self.assertTrue(c.wait_closed(seconds), "the relay did not close the connection within "
                        "%ss" % seconds)

    def assertMemoryBounded(self, rss, bound=MEM_BOUND_KIB):
        if os.environ.get("BATV_E2E_RSS"):
            sys.stderr.write("[rss %s: start %d KiB, peak %d KiB, growth %d KiB] "
                             % (self.id().rsplit(".", 1)[-1], rss.start, rss.peak, rss.growth))
        if relay_is_sanitized():
            return
        self.assertLess(rss.growth, bound, "relay RSS grew by %d KiB during the attack (from %d "
                        "KiB; bound %d KiB)" % (rss.growth, rss.start, bound))


# =============================================================================================
# Connection floods

class FloodTests:
    def test_flood_from_one_address_is_capped_per_client(self):
        up = self.upstream()
        r = self.relay(up, limits={"sessions": 100, "sessions_per_client": 5}, metrics=True)
        up_conns_before = len(up.connections())
        n = 300
        with RssWatch(r) as rss, GoodTraffic(self, r) as good:
            flood = Flood(r.port(), n, sources=("127.0.0.2",))
            self.addCleanup(flood.close)
            conns = flood.collect(20)
            admitted = flood.admitted()
            refused = [c for c in conns if c not in admitted]
            # Admitted sessions hold their slots: a second wave is refused too.
            wave = Flood(r.port(), 20, sources=("127.0.0.2",))
            self.addCleanup(wave.close)
            wave_conns = wave.collect(10)
        self.assertEqual(len(admitted), 5, "admitted from 127.0.0.2")
        self.assertEqual(len(refused), n - 5)
        for c in refused + wave_conns:
            self.assertTrue(c["closed"], c)
            self.assertEqual(c["data"], b"421 " + TOO_MANY_FROM_CLIENT.text.encode() + b"\r\n")
        self.assertLess(max(c["t"] for c in refused), 15, "refusals took too long")
        good.check(up)
        self.assertMemoryBounded(rss)
        # No next-hop connection for a refused client; inbound connects at the first MAIL
        # (upstream_connect = "mail"), so the admitted flood, which sends none, has none either.
        admitted_conns = 0 if self.ROLE == "inbound" else 5
        self.assertEqual(len(up.connections()) - up_conns_before, admitted_conns + len(good.results))
        ends = r.wait_logs(lambda x: x.get("event") == "session_end"
                           and x.get("reason") == "too_many_sessions", n - 5 + 20, 10)
        self.assertEqual(len(ends), n - 5 + 20)
        m = self.metrics()
        self.assertEqual(m[("batv_session_end_total",
                            frozenset({("role", self.ROLE), ("reason", "too_many_sessions")}))],
                         n - 5 + 20)
        # The flood's slots come back when it leaves.
        flood.close()
        self.assertTrue(wait_until(lambda: self.metrics()[("batv_sessions_current",
                                                           frozenset({("role", self.ROLE)}))] == 0, 10))
        again = Flood(r.port(), 5, sources=("127.0.0.2",))
        self.addCleanup(again.close)
        again.collect(10)
        self.assertEqual(len(again.admitted()), 5)

    def test_flood_over_the_global_limit(self):
        up = self.upstream()
        r = self.relay(up, limits={"sessions": 20, "sessions_per_client": 4})
        # A client in the middle of a transaction when the flood starts.
        c = self.session(r)
        self.open_tx(c)
        sources = ["127.0.0.%d" % i for i in range(2, 12)]      # 10 addresses x 4 = 40 > 19
        with RssWatch(r) as rss:
            flood = Flood(r.port(), 100, sources=sources)
            self.addCleanup(flood.close)
            conns = flood.collect(20)
            admitted = flood.admitted()
            self.assertEqual(len(admitted), 19, "20 sessions, one is the client's")
            per_source = {}
            for a in admitted:
                per_source[a["source"]] = per_source.get(a["source"], 0) + 1
            self.assertLessEqual(max(per_source.values()), 4)
            for x in conns:
                if x in admitted:
                    continue
                self.assertTrue(x["closed"], x)
                self.assertIn(first_reply(x["data"]), (TOO_MANY_SESSIONS, TOO_MANY_FROM_CLIENT))
            self.assertIn(TOO_MANY_SESSIONS, [first_reply(x["data"]) for x in conns])
            # The established session is untouched: its message goes through, promptly.
            tag = new_tag("established")
            self.assertEqual(c.cmd("DATA").code, 354)
            t = time.monotonic()
            c.send(body_for(tag) + b".\r\n")
            self.assertEqual(c.read_reply().code, 250)
            self.assertLess(time.monotonic() - t, GOOD_MAX)
            self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertDeliveredOnce(up, tag)
        self.assertMemoryBounded(rss)
        # The flood leaves: its slots are free again.
        flood.close()
        self.assertTrue(wait_until(lambda: len(r.logs("session_end")) >= len(r.logs("connect")), 10))
        good = self.session(r)
        self.open_tx(good)


class OutboundFloodTest(FloodTests, HostileCase):
    ROLE = "outbound"


class InboundFloodTest(FloodTests, HostileCase):
    ROLE = "inbound"

    def test_descriptor_exhaustion(self):
        """With RLIMIT_NOFILE at 40 a flood of 60 connections runs the relay out of file
        descriptors before limits.sessions: sessions that get a socket are served, those whose
        next-hop socket fails get 421 4.4.1, the rest wait in the listen backlog; accept errors
        are logged at a bounded rate and the relay serves again as soon as the flood leaves."""
        if relay_is_sanitized():
            self.skipTest("the sanitizer runtime itself fails without file descriptors")
        up = self.upstream()
        wrapper = os.path.join(self.dir, "relay-nofile.sh")
        with open(wrapper, "w") as f:
            f.write('#!/bin/sh\nulimit -n 40 || exit 1\nexec "%s" "$@"\n' % RELAY)
        os.chmod(wrapper, 0o755)
        r = Relay(wrapper, self.dir, self.keys, listeners=[{"role": self.ROLE, "upstream": up.port}],
                  limits={"sessions": 100, "sessions_per_client": 100}, start=False)
        self.watch_relay(r)
        self.addCleanup(self.check_session_ends, r)
        r.start()
        flood = Flood(r.port(), 60)
        self.addCleanup(flood.close)
        t = time.monotonic()
        conns = flood.collect(3)
        secs = time.monotonic() - t
        unavailable = Reply(421, "4.4.1 %s next hop unavailable, try again later" % HOSTNAME)
        admitted = flood.admitted()
        waiting = [c for c in conns if not c["data"] and not c["closed"]]
        refused = [c for c in conns if c not in admitted and c not in waiting]
        self.assertTrue(admitted, "nobody was served")
        self.assertTrue(waiting, "the descriptor limit was not reached (test setup)")
        for c in refused:
            self.assertEqual((first_reply(c["data"]), c["closed"]), (unavailable, True))
        self.assertTrue(r.running())
        failed = r.logs("accept_failed")
        self.assertTrue(failed)
        self.assertEqual({x.get("error") for x in failed}, {"Too many open files"})
        self.assertLess(len(failed), 15 * (secs + 1), "accept errors logged without pause")
        flood.close()
        t = time.monotonic()
        tag = new_tag("after-emfile")
        with smtplib.SMTP(HOST, r.port(), local_hostname="good.test", timeout=10) as s:
            s.sendmail(self.sender, [self.rcpt], body_for(tag))
        self.assertLess(time.monotonic() - t, 3)
        self.assertDeliveredOnce(up, tag)


# =============================================================================================
# Everything at once

class InboundMixedAttackTest(HostileCase):
    ROLE = "inbound"

    def test_many_hostile_sessions_at_once(self):
        """30 hostile sessions at the same time (junk streamers, clients that never read,
        slowloris in commands and in DATA, clients vanishing mid-DATA) next to well-behaved
        traffic: memory stays bounded, the good messages go through, nothing half-done
        completes, and every session ends once."""
        up = self.upstream()
        r = self.relay(up, timeouts={"idle": 3, "command": 3, "data": 4})
        clients = [self.session(r) for _ in range(30)]
        errors = []

        def junk(c):
            block = b"J" * 65536
            for _ in range(64):                             # 4 MiB, no newline
                c.send(block)
            c.send(b"\r\n")
            if c.read_reply(timeout=20) != LINE_TOO_LONG:
                errors.append("junk")

        def never_read(c):
            pair = b"MAIL FROM:<>\r\nRSET\r\n"
            c.sock.settimeout(2)
            try:
                for _ in range(200):
                    c.sock.sendall(pair * 4000)
            except OSError:
                return
            errors.append("never_read: the relay read 25 MiB nobody answered")

        def slow_command(c):
            for _ in range(30):
                try:
                    c.send(b"N")
                except OSError:
                    return
                if c.wait_closed(0.3):
                    return
            errors.append("slow_command not cut")

        def slow_data(c):
            self.open_tx(c)
            if c.cmd("DATA").code != 354:
                errors.append("slow_data: no 354")
                return
            for _ in range(30):
                try:
                    c.send(b"slow\r\n")
                except OSError:
                    return
                if c.wait_closed(0.3):
                    return
            errors.append("slow_data not cut")

        def vanish(c):
            self.open_tx(c)
            if c.cmd("DATA").code != 354:
                errors.append("vanish: no 354")
                return
            c.send(body_for(new_tag("mixed-vanish")) + b"v" * 300000)
            rst_close(c.sock)

        kinds = [junk, never_read, slow_command, slow_data, vanish]
        with RssWatch(r) as rss, GoodTraffic(self, r, min_messages=3) as good:
            threads = [threading.Thread(target=self._guard, args=(kinds[i % 5], c, errors))
                       for i, c in enumerate(clients)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(60)
        self.assertFalse([th for th in threads if th.is_alive()])
        self.assertEqual(errors, [])
        self.assertMemoryBounded(rss)
        good.check(up)
        self.assertFalse([x for x in up.transactions() if x.completed and b"mixed-vanish" in x.data])

    @staticmethod
    def _guard(fn, c, errors):
        try:
            fn(c)
        except Exception as e:   # noqa: BLE001 - reported by the test
            errors.append("%s: %s: %s" % (fn.__name__, type(e).__name__, e))


# =============================================================================================
# Slowloris

class SlowlorisTests:
    def trickle_until_reply(self, c, piece, every, limit):
        """Send `piece` every `every` seconds until a reply or a close; (reply or None, secs)."""
        t = time.monotonic()
        while time.monotonic() - t < limit:
            try:
                c.send(piece)
            except OSError:
                break
            try:
                return c.read_reply(timeout=every), time.monotonic() - t
            except socket.timeout:
                continue
            except (EOFError, OSError):
                break
        return None, time.monotonic() - t

    def test_trickled_commands_hit_the_command_deadline(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"command": 2, "idle": 10})
        attackers = [self.session(r, ehlo=(i % 2 == 0)) for i in range(10)]
        results = [None] * len(attackers)

        def attack(i, c):
            results[i] = self.trickle_until_reply(c, b"X", 0.3, 10)
        with GoodTraffic(self, r) as good:
            threads = [threading.Thread(target=attack, args=(i, c)) for i, c in enumerate(attackers)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(15)
        good.check(up)
        for (reply, secs), c in zip(results, attackers):
            self.assertEqual(reply, TIMEOUT_REPLY)
            self.assertGreater(secs, 1.5)
            self.assertLess(secs, 5)
            self.assertClosedWithin(c, 3)
            self.assertEqual(self.end_of(r, c).get("reason"), "idle_timeout")

    def test_slow_but_steady_client_is_not_cut(self):
        """Every line within timeouts.command and every read within timeouts.idle; the whole
        session (about 9 s) longer than each of command, idle and data."""
        up = self.upstream()
        r = self.relay(up, timeouts={"command": 2, "idle": 2, "data": 4})
        c = self.session(r, ehlo=False)
        tag = new_tag("steady")

        def slow_line(line, secs=1.0):
            data = line.encode() + b"\r\n"
            step = max(1, len(data) // 6)
            for i in range(0, len(data), step):
                c.send(data[i:i + step])
                time.sleep(secs / 6)
            return c.read_reply()
        t = time.monotonic()
        self.assertEqual(slow_line("EHLO slow.test").code, 250)
        self.assertEqual(slow_line("MAIL FROM:<%s>" % self.sender).code, 250)
        self.assertEqual(slow_line("RCPT TO:<%s>" % self.rcpt).code, 250)
        self.assertEqual(slow_line("NOOP").code, 250)
        self.assertEqual(slow_line("DATA").code, 354)
        body = body_for(tag, b"".join(b"line %d\r\n" % i for i in range(10)))
        for i in range(0, len(body), len(body) // 10 + 1):      # 11 pieces over ~3 s
            c.send(body[i:i + len(body) // 10 + 1])
            time.sleep(0.28)
        c.send(b".\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(slow_line("QUIT").code, 221)
        self.assertGreater(time.monotonic() - t, 8)
        self.assertDeliveredOnce(up, tag)
        self.assertEqual(self.end_of(r, c).get("reason"), "quit")

    def test_trickled_body_hits_the_data_deadline(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"data": 3, "idle": 10})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("trickled-body")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag))
        with GoodTraffic(self, r) as good:
            reply, secs = self.trickle_until_reply(c, b"a slow line\r\n", 0.3, 15)
        self.assertEqual(reply, DATA_TIMEOUT_REPLY)
        self.assertGreater(secs, 2)
        self.assertLess(secs, 7)
        self.assertClosedWithin(c, 3)
        good.check(up)
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("phase")), ("data_timeout", "data"))

    def test_silence_in_data_hits_the_idle_timeout(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"data": 30, "idle": 2})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("silent-body")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag))
        secs = self.assertReplyWithin(c, TIMEOUT_REPLY, 8)
        self.assertGreater(secs, 1.5)
        self.assertClosedWithin(c, 3)
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("phase")), ("idle_timeout", "data"))

    def test_trickled_bdat_chunk_hits_the_data_deadline(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"data": 3, "idle": 10})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("trickled-bdat")
        c.send(b"BDAT 100000 LAST\r\n" + body_for(tag))
        reply, secs = self.trickle_until_reply(c, b"x" * 10, 0.3, 15)
        self.assertEqual(reply, DATA_TIMEOUT_REPLY)
        self.assertGreater(secs, 2)
        self.assertLess(secs, 7)
        self.assertClosedWithin(c, 3)
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("phase")), ("data_timeout", "bdat"))

    def test_silence_in_a_bdat_chunk_hits_the_idle_timeout(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"data": 30, "idle": 2})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("silent-bdat")
        c.send(b"BDAT 1000 LAST\r\n" + body_for(tag))
        secs = self.assertReplyWithin(c, TIMEOUT_REPLY, 8)
        self.assertGreater(secs, 1.5)
        self.assertClosedWithin(c, 3)
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("phase")), ("idle_timeout", "bdat"))


class OutboundSlowlorisTest(SlowlorisTests, HostileCase):
    ROLE = "outbound"


class InboundSlowlorisTest(SlowlorisTests, HostileCase):
    ROLE = "inbound"


# =============================================================================================
# Junk without a newline

class JunkTests:
    def stream(self, c, total, block=b"A" * 65536):
        """Send `total` bytes of `block` repeated (never more than one block in memory)."""
        sent = 0
        while sent < total:
            n = min(len(block), total - sent)
            c.send(block[:n])
            sent += n

    def test_100mib_command_line_without_newline(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"command": 60, "idle": 10})
        c = self.session(r)
        with RssWatch(r) as rss, GoodTraffic(self, r) as good:
            t = time.monotonic()
            self.stream(c, 100 * MiB)
            c.send(b"\r\n")
            self.assertEqual(c.read_reply(timeout=30), LINE_TOO_LONG)
            secs = time.monotonic() - t
        self.assertLess(secs, 60)
        self.assertMemoryBounded(rss)
        good.check(up)
        self.assertEqual(c.cmd("NOOP").code, 250)          # resynchronised at the LF
        tag = new_tag("after-junk")
        self.open_tx(c)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag) + b".\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertDeliveredOnce(up, tag)
        self.assertEqual(self.end_of(r, c).get("errors"), "1")

    def test_junk_without_newline_then_silence(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"command": 3, "idle": 10})
        c = self.session(r)
        t = time.monotonic()
        self.stream(c, 10 * MiB)
        self.assertReplyWithin(c, TIMEOUT_REPLY, 8)
        self.assertLess(time.monotonic() - t, 8)
        self.assertClosedWithin(c, 3)
        self.assertEqual(self.end_of(r, c).get("reason"), "idle_timeout")

    def test_20mib_body_without_newline_over_message_size(self):
        up = self.upstream()
        r = self.relay(up, limits={"message_size": MiB})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("junk-body")
        self.assertEqual(c.cmd("DATA").code, 354)
        with RssWatch(r) as rss:
            c.send(body_for(tag))
            self.stream(c, 20 * MiB, b"B" * 65536)
            c.send(b"\r\n.\r\n")
            self.assertEqual(c.read_reply(timeout=30), TOO_BIG)
        self.assertMemoryBounded(rss)
        self.assertNeverCompleted(up, tag)
        self.assertUpstreamDropped(up, 1)
        self.assertEqual(c.cmd("NOOP").code, 250)          # the session goes on


class OutboundJunkTest(JunkTests, HostileCase):
    ROLE = "outbound"


class InboundJunkTest(JunkTests, HostileCase):
    ROLE = "inbound"


# =============================================================================================
# NUL and 8-bit bytes

class EightBitTests:
    def test_nul_and_8bit_bytes_in_commands(self):
        up = self.upstream()
        r = self.relay(up)
        conns_before = len(up.connections())
        c = self.session(r)
        self.assertEqual(c.cmd(b"NOOP\x00"), NUL_REPLY)
        self.assertEqual(c.cmd(b"\x00"), NUL_REPLY)
        self.assertEqual(c.cmd(b"\x00\x00\x00\x00EHLO x"), NUL_REPLY)
        self.assertEqual(c.cmd(b"RCPT TO:<a@b>\x00DATA"), NUL_REPLY)
        self.assertEqual(c.cmd(b"EH\xffLO x"), UNKNOWN)
        self.assertEqual(c.cmd(b"\xc3\x89HLO x"), UNKNOWN)
        self.assertEqual(c.cmd(b"\x80\x81\x82\xfe\xff"), UNKNOWN)
        self.assertEqual(c.cmd(b"NOOP\rRSET"), UNKNOWN)            # a bare CR does not split
        self.assertEqual(c.cmd(b"NOOP \xff\xfe"), Reply(250, "2.0.0 OK"))
        self.assertEqual(c.cmd(b"EHLO \xff\xfe.test").code, 250)
        # Nothing of that reached the next hop: outbound, its connection saw only the relay's
        # EHLO at connect; inbound opened none (it connects at the first MAIL).
        opened = up.connections()[conns_before:]
        if self.ROLE == "inbound":
            self.assertEqual(opened, [])
        else:
            self.assertEqual([len(x.commands) for x in opened], [1])
        end_errors = 8
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertEqual(self.end_of(r, c).get("errors"), str(end_errors))

    def test_8bit_addresses_with_and_without_smtputf8(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        self.assertIn("SMTPUTF8", c.ehlo_reply.text.split("\n"))
        sender = HOMER if self.ROLE == "outbound" else LISA
        utf8_rcpt = "b\u00e9a@elsewhere.org".encode()
        self.assertEqual(c.cmd(b"MAIL FROM:<h\xc3\xa9@example.com>"), NEEDS_UTF8)
        self.assertEqual(c.cmd(b"MAIL FROM:<h\xff@example.com> SMTPUTF8").code, 501)
        self.assertEqual(c.cmd(b"MAIL FROM:<h\xc3@example.com> SMTPUTF8").code, 501)  # truncated UTF-8
        self.assertEqual(c.cmd(b"MAIL FROM:<homer@ex\xc0\xaemple.com> SMTPUTF8").code, 501)  # overlong
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % sender).code, 250)
        self.assertEqual(c.cmd(b"RCPT TO:<" + utf8_rcpt + b">"), NEEDS_UTF8)
        self.assertEqual(c.cmd(b"RCPT TO:<b\xff@elsewhere.org>"), BAD_RCPT_UTF8)   # not UTF-8 at all
        self.assertEqual(c.cmd("RSET").code, 250)
        tag = new_tag("utf8")
        self.assertEqual(c.cmd(b"MAIL FROM:<" + sender.encode() + b"> SMTPUTF8").code, 250)
        self.assertEqual(c.cmd(b"RCPT TO:<b\xff@elsewhere.org>"), BAD_RCPT_UTF8)
        self.assertEqual(c.cmd(b"RCPT TO:<" + utf8_rcpt + b">").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag) + b".\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertDeliveredOnce(up, tag)
        tx = self.with_tag(up, tag)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<b\u00e9a@elsewhere.org>"])
        # Only the accepted transactions' MAIL went to the next hop.
        mails = [x.mail for x in up.transactions()]
        self.assertFalse([m for m in mails if "\udcff" in m or "h\u00e9" in m], mails)


class OutboundEightBitTest(EightBitTests, HostileCase):
    ROLE = "outbound"


class InboundEightBitTest(EightBitTests, HostileCase):
    ROLE = "inbound"


# =============================================================================================
# Junk inside an AUTH exchange (outbound only: the inbound role never offers AUTH)

class AuthJunkTest(HostileCase):
    ROLE = "outbound"

    def test_overlong_sasl_response(self):
        """RFC 4954 4: a response longer than the relay takes gets 500 5.5.6 and cancels the
        exchange; the session goes on and can authenticate afterwards."""
        import base64
        import test_auth
        up = test_auth.AuthUpstream()
        self.addCleanup(up.close)
        r = Relay(RELAY, self.dir, self.keys, start=False, listeners=[
            {"role": "outbound", "upstream": up.port, "plaintext_auth_loopback": True}])
        self.watch_relay(r)
        self.addCleanup(self.check_session_ends, r)
        r.start()
        c = self.session(r)
        self.assertIn("AUTH PLAIN LOGIN X-TRIPLE", c.ehlo_reply.text.split("\n"))
        self.assertEqual(c.cmd("AUTH PLAIN").code, 334)
        with RssWatch(r) as rss:
            self.stream_junk(c, 10 * MiB)
            c.send(b"\r\n")
            self.assertEqual(c.read_reply(timeout=30),
                             Reply(500, "5.5.6 Authentication Exchange line is too long"))
        self.assertMemoryBounded(rss)
        self.assertEqual(c.cmd("NOOP").code, 250)
        creds = base64.b64encode(("\0%s\0%s" % (test_auth.USER, test_auth.PASSWORD)).encode())
        self.assertEqual(c.cmd(b"AUTH PLAIN " + creds).code, 235)
        self.assertEqual(c.cmd("QUIT").code, 221)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("errors")), ("quit", "1"))
        self.assertNotIn("QUFB", r.stderr_text())

    @staticmethod
    def stream_junk(c, total, block=b"QUFB" * 16384):
        sent = 0
        while sent < total:
            c.send(block)
            sent += len(block)


# =============================================================================================
# Pipelining floods and recipient floods

class PipeliningFloodTests:
    def test_flood_read_afterwards_gets_every_reply_in_order(self):
        up = self.upstream()
        # NOOP and RSET are junk commands (limits.commands_before_mail, counted until a message
        # is delivered): this test is about pipelining, so the limit is raised out of the way.
        r = self.relay(up, limits={"commands_before_mail": 10000})
        c = self.session(r)
        rounds = 1000
        batch = b"".join(b"MAIL FROM:<%s>\r\nRCPT TO:<r%d@elsewhere.org>\r\nNOOP\r\nRSET\r\n"
                         % (self.sender.encode(), i) for i in range(rounds))
        t = time.monotonic()
        c.send(batch)                                       # 4000 commands, nothing read yet
        replies = c.read_replies(4 * rounds, timeout=30)
        self.assertLess(time.monotonic() - t, 60)
        want = [(250, "2.1.0 Sender OK"), (250, "2.1.5 Ok"), (250, "2.0.0 OK"), (250, "2.0.0 OK")]
        self.assertEqual([tuple(x) for x in replies], want * rounds)
        tag = new_tag("after-flood")
        self.open_tx(c)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag) + b".\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertDeliveredOnce(up, tag)
        flood_txs = [x for x in up.transactions() if x.rcpts and x.rcpts[0].startswith("RCPT TO:<r")]
        self.assertEqual(len(flood_txs), rounds)
        self.assertTrue(all(x.reset and not x.completed for x in flood_txs))

    def test_flood_never_read_is_backpressured_and_times_out(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"idle": 3})
        c = self.session(r)
        pair = b"MAIL FROM:<%s>\r\nRSET\r\n" % self.sender.encode()
        block = pair * (65536 // len(pair))
        total = 64 * MiB                                    # far more than the socket buffers
        sent = [0]

        def attack():
            c.sock.settimeout(2)
            try:
                while sent[0] < total:
                    sent[0] += c.sock.send(block)
            except OSError:
                pass
        with RssWatch(r) as rss, GoodTraffic(self, r) as good:
            th = threading.Thread(target=attack)
            th.start()
            th.join(30)
            self.assertFalse(th.is_alive())
            end = self.end_of(r, c, timeout=15)
        self.assertLess(sent[0], total, "the relay kept reading from a client that reads nothing")
        # Blocked writing replies (idle_timeout), or stopped by the junk-command limit first (its
        # 421 then cannot be written either): both end the session with bounded reading.
        self.assertIn(end.get("reason"), ("idle_timeout", "too_many_commands"))
        self.assertMemoryBounded(rss)
        good.check(up)

    def test_thousands_of_recipients(self):
        up = self.upstream()
        r = self.relay(up, limits={"recipients_per_message": 100})
        c = self.session(r)
        n = 3000
        self.assertEqual(c.cmd("MAIL FROM:<%s>" % self.sender).code, 250)
        with RssWatch(r) as rss:
            c.send(b"".join(b"RCPT TO:<r%d@elsewhere.org>\r\n" % i for i in range(n)))
            replies = c.read_replies(n, timeout=30)
        self.assertEqual([x.code for x in replies[:100]], [250] * 100)
        self.assertEqual(set(replies[100:]), {TOO_MANY_RCPTS})
        tag = new_tag("many-rcpts")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag) + b".\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.cmd("QUIT").code, 221)
        self.assertDeliveredOnce(up, tag)
        tx = self.with_tag(up, tag)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<r%d@elsewhere.org>" % i for i in range(100)])
        self.assertMemoryBounded(rss)
        end = self.end_of(r, c)
        self.assertEqual((end.get("reason"), end.get("recipients")), ("quit", "100"))


class OutboundPipeliningFloodTest(PipeliningFloodTests, HostileCase):
    ROLE = "outbound"


class InboundPipeliningFloodTest(PipeliningFloodTests, HostileCase):
    ROLE = "inbound"

    def test_thousands_of_forged_bounce_recipients(self):
        up = self.upstream()
        r = self.relay(up)                                  # invalid_recipients_per_session 50
        c = self.session(r)
        self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
        c.send(b"".join(b"RCPT TO:<user%d@example.com>\r\n" % i for i in range(3000)))
        replies = []
        try:
            while True:
                replies.append(c.read_reply(timeout=10))
        except (EOFError, ConnectionError):
            pass
        self.assertEqual(set(replies[:50]), {Reply(550, "5.7.1 bounce refused: address not tagged")})
        self.assertEqual(replies[50:], [Reply(421, "4.7.0 Too many invalid recipients, closing")])
        self.assertEqual(self.end_of(r, c).get("reason"), "too_many_invalid_recipients")
        self.assertFalse([x for x in up.transactions() if any("<user" in y for y in x.rcpts)],
                         "a forged bounce recipient reached the next hop")


# =============================================================================================
# BDAT with wrong chunk sizes

class BdatTests:
    def test_fewer_bytes_than_announced_then_close(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        port = c.local_port
        self.open_tx(c)
        tag = new_tag("short-bdat")
        c.send(b"BDAT 100000 LAST\r\n" + body_for(tag, b"y" * 50000))
        self.assertTrue(wait_until(lambda: any(x.size > 50000 for x in self.with_tag(up, tag)), 5))
        c.close()
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, port)
        self.assertEqual((end.get("reason"), end.get("phase")), ("client_closed", "bdat"))

    def test_more_bytes_than_announced(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        self.open_tx(c)
        c.send(b"BDAT 10 LAST\r\n0123456789EXTRA GARBAGE\r\n")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.read_reply(), UNKNOWN)
        self.assertEqual(c.cmd("NOOP").code, 250)
        txs = [x for x in up.transactions() if x.bdat]
        self.assertEqual([(bytes(x.bdat), x.completed) for x in txs], [(b"0123456789", True)])

    def test_chunk_over_message_size(self):
        up = self.upstream()
        r = self.relay(up, limits={"message_size": 65536})
        c = self.session(r)
        # One chunk bigger than the limit: read and dropped, 552, the session goes on.
        self.open_tx(c)
        tag = new_tag("oversize-chunk")
        c.send(b"BDAT 100000 LAST\r\n" + body_for(tag, b"z" * (100000 - len(body_for(tag)))))
        self.assertEqual(c.read_reply(), TOO_BIG)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertFalse(self.with_tag(up, tag))
        # A second chunk that crosses the limit: the next hop has the first one, so its
        # connection is dropped and the message never completes.
        self.open_tx(c)
        tag2 = new_tag("oversize-second")
        first = body_for(tag2, b"z" * 40000)
        c.send(b"BDAT %d\r\n" % len(first) + first)
        self.assertEqual(c.read_reply().code, 250)
        c.send(b"BDAT 40000 LAST\r\n" + b"z" * 40000)
        self.assertEqual(c.read_reply(), TOO_BIG)
        self.assertEqual(c.cmd("NOOP").code, 250)
        self.assertNeverCompleted(up, tag2)
        self.assertTrue(all(conn.closed.wait(5) for conn in up.connections()
                            if any(tag2.encode() in x.bdat for x in conn.transactions)))
        # The session still delivers.
        tag3 = new_tag("after-oversize")
        self.open_tx(c)
        data = body_for(tag3)
        c.send(b"BDAT %d LAST\r\n" % len(data) + data)
        self.assertEqual(c.read_reply().code, 250)
        self.assertDeliveredOnce(up, tag3)

    def test_chunk_size_that_overflows_the_running_total(self):
        """2^64 - 10 after a 10-octet chunk: the sum wraps to 0. Must count as over the limit
        and never be announced to the next hop."""
        up = self.upstream()
        r = self.relay(up, timeouts={"idle": 2})
        c = self.session(r)
        self.open_tx(c)
        tag = new_tag("wrap")
        first = body_for(tag)[:10]
        self.assertEqual(len(first), 10)
        c.send(b"BDAT 10\r\n" + first)
        self.assertEqual(c.read_reply().code, 250)
        c.send(b"BDAT %d LAST\r\n" % (U64_MAX - 9) + b"w" * 1000)
        # The relay skips the announced (endless) chunk until the idle timeout.
        self.assertReplyWithin(c, TIMEOUT_REPLY, 8)
        self.assertClosedWithin(c, 3)
        bdats = [x.line for conn in up.connections() for x in conn.find("BDAT")]
        self.assertFalse([b for b in bdats if str(U64_MAX - 9) in b],
                         "an overflowing chunk size reached the next hop: %r" % bdats)
        self.assertNeverCompleted(up)
        self.assertUpstreamDropped(up, 1)

    def test_huge_declared_size_then_silence(self):
        up = self.upstream()
        r = self.relay(up, timeouts={"idle": 2})
        c = self.session(r)
        self.open_tx(c)
        c.send(b"BDAT %d LAST\r\n" % U64_MAX + b"abc")
        self.assertReplyWithin(c, TIMEOUT_REPLY, 8)
        self.assertClosedWithin(c, 3)
        self.assertFalse([x for conn in up.connections() for x in conn.find("BDAT")])
        end = self.end_of(r, c)
        self.assertEqual(end.get("reason"), "idle_timeout")

    def test_zero_sized_chunks(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        self.assertEqual(c.cmd("BDAT 0 LAST"), Reply(503, "5.5.1 Need MAIL command"))
        self.open_tx(c)
        tag = new_tag("zero")
        data = body_for(tag)
        c.send(b"BDAT 0\r\nBDAT %d\r\n" % len(data) + data + b"BDAT 0 LAST\r\n")
        self.assertEqual([x.code for x in c.read_replies(3)], [250, 250, 250])
        self.assertDeliveredOnce(up, tag)
        self.assertEqual(self.with_tag(up, tag)[0].chunks, [0, len(data), 0])
        self.open_tx(c)
        self.assertEqual(c.cmd("BDAT 0 LAST").code, 250)     # an empty message is a message
        wait_until(lambda: [x for x in up.accepted() if x.chunks == [0]], 5)
        empty = [x for x in up.accepted() if x.chunks == [0]]
        self.assertEqual(len(empty), 1)

    def test_bdat_syntax_errors(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        self.open_tx(c)
        for args in (b"", b" abc", b" -1", b" +5", b" 1e3", b" 0x10", b" 10 LAST extra",
                     b" 10 FIRST", b" 99999999999999999999999", b" 10 LAS"):
            self.assertEqual(c.cmd(b"BDAT" + args), BDAT_SYNTAX, args)
        self.assertEqual(c.cmd("NOOP").code, 250)
        tag = new_tag("after-syntax")
        data = body_for(tag)
        c.send(b"BDAT %d LAST\r\n" % len(data) + data)
        self.assertEqual(c.read_reply().code, 250)
        self.assertDeliveredOnce(up, tag)

    def test_data_after_bdat(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        self.open_tx(c)
        c.send(b"BDAT 5\r\nhello")
        self.assertEqual(c.read_reply().code, 250)
        self.assertEqual(c.cmd("DATA"), Reply(503, "5.5.1 Cannot mix DATA and BDAT, or BDAT after a "
                                                   "failed chunk"))
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertNeverCompleted(up)


class OutboundBdatTest(BdatTests, HostileCase):
    ROLE = "outbound"


class InboundBdatTest(BdatTests, HostileCase):
    ROLE = "inbound"


# =============================================================================================
# Half-closed sockets and vanishing clients

class VanishTests:
    def test_pipelined_message_then_half_close(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.client(r)
        port = c.local_port
        tag = new_tag("half-close")
        c.send(b"EHLO client.test\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
               % (self.sender.encode(), self.rcpt.encode()) + body_for(tag) + b".\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        codes = [x.code for x in c.read_replies(7)]
        self.assertEqual(codes, [220, 250, 250, 250, 354, 250, 221])
        self.assertClosedWithin(c, 5)
        self.assertDeliveredOnce(up, tag)
        self.assertEqual(self.end_of(r, port).get("reason"), "quit")

    def test_half_close_after_commands(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.client(r)
        port = c.local_port
        c.send(b"EHLO client.test\r\nNOOP\r\nMAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nNOOP"
               % (self.sender.encode(), self.rcpt.encode()))      # last line unfinished
        c.sock.shutdown(socket.SHUT_WR)
        self.assertEqual([x.code for x in c.read_replies(5)], [220, 250, 250, 250, 250])
        self.assertClosedWithin(c, 5)
        self.assertEqual(c.buf, b"")
        self.assertEqual(self.end_of(r, port).get("reason"), "client_closed")
        self.assertNeverCompleted(up)
        self.assertUpstreamDropped(up, 1)

    def test_half_close_mid_data(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        port = c.local_port
        self.open_tx(c)
        tag = new_tag("half-close-data")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag))
        c.sock.shutdown(socket.SHUT_WR)
        self.assertClosedWithin(c, 5)
        self.assertEqual(c.buf, b"", "no reply is owed for an unfinished message")
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, port)
        self.assertEqual((end.get("reason"), end.get("phase")), ("client_closed", "data"))

    def vanish_mid_data(self, tail, rst):
        up = self.upstream()
        r = self.relay(up)
        with GoodTraffic(self, r) as good:
            c = self.session(r)
            port = c.local_port
            self.open_tx(c)
            tag = new_tag("vanish")
            self.assertEqual(c.cmd("DATA").code, 354)
            c.send(body_for(tag, b"x" * 78 + b"\r\n") + b"y" * 200000 + tail)
            # The relay has started forwarding the body before the client goes.
            self.assertTrue(wait_until(lambda: any(x.size >= 200000 for x in self.with_tag(up, tag)), 5))
            if rst:
                rst_close(c.sock)
            else:
                c.close()
            self.assertUpstreamDropped(up, 1)
        good.check(up)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, port)
        self.assertEqual((end.get("reason"), end.get("phase")), ("client_closed", "data"))
        self.assertFalse([m for m in r.logs("message") if m.get("sid") == end.get("sid")],
                         "an event=message for an interrupted message")

    def test_vanish_mid_data_fin(self):
        self.vanish_mid_data(b"", rst=False)

    def test_vanish_mid_data_rst(self):
        self.vanish_mid_data(b"", rst=True)

    def test_vanish_on_a_partial_terminator(self):
        self.vanish_mid_data(b"\r\n.\r", rst=False)

    def test_vanish_mid_bdat_rst(self):
        up = self.upstream()
        r = self.relay(up)
        c = self.session(r)
        port = c.local_port
        self.open_tx(c)
        tag = new_tag("vanish-bdat")
        first = body_for(tag)
        c.send(b"BDAT %d\r\n" % len(first) + first)
        self.assertEqual(c.read_reply().code, 250)
        c.send(b"BDAT 300000 LAST\r\n" + b"q" * 200000)
        self.assertTrue(wait_until(lambda: any(x.size >= 200000 for x in self.with_tag(up, tag)), 5))
        rst_close(c.sock)
        self.assertUpstreamDropped(up, 1)
        self.assertNeverCompleted(up, tag)
        end = self.end_of(r, port)
        self.assertEqual((end.get("reason"), end.get("phase")), ("client_closed", "bdat"))

    def test_vanish_right_after_the_final_dot_is_delivered_once(self):
        """The message is complete when the dot arrives: the relay finishes it (the client
        may retry and duplicate it, RFC 1047; the relay itself never does)."""
        up = self.upstream(delays={"DOT": 0.5})
        r = self.relay(up)
        c = self.session(r)
        port = c.local_port
        self.open_tx(c)
        tag = new_tag("vanish-after-dot")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(body_for(tag) + b".\r\n")
        rst_close(c.sock)
        self.assertDeliveredOnce(up, tag)
        end = self.end_of(r, port)
        self.assertEqual(end.get("reason"), "client_closed")
        msgs = [m for m in r.logs("message") if m.get("sid") == end.get("sid")]
        self.assertEqual([m.get("result") for m in msgs], ["accepted"])
        time.sleep(0.3)
        self.assertDeliveredOnce(up, tag)


class OutboundVanishTest(VanishTests, HostileCase):
    ROLE = "outbound"


class InboundVanishTest(VanishTests, HostileCase):
    ROLE = "inbound"


if __name__ == "__main__":
    harness.run_tests(globals())
