#!/usr/bin/env python3
"""Load and soak: 1,000 concurrent client sessions sending mail continuously for 60 s through each
role of the real relay, with every message accounted for at the next hop.

Usage: test_soak.py --relay PATH/batv-relay --keys PATH/batv-keys
                    [--sessions N] [--seconds S] [--rate MSGS_PER_S] [unittest args]
       (or BATV_SOAK_SESSIONS / BATV_SOAK_SECONDS / BATV_SOAK_RATE; defaults 1000, 60, 300)

Pieces:
  load generator  asyncio in this process, one coroutine per client session (stdlib only: Python
                  threads x 1000 would spend the two cores on the interpreter lock, and
                  smtp-source cannot put a unique id and checksum in each body nor tell which
                  message got which reply). Each session connects, says EHLO, sends 1-8 messages
                  (MAIL, RCPT..., DATA pipelined as RFC 2920 allows; the body after 354), QUITs
                  and reconnects at once, so about `sessions` are open all the time and session
                  set-up and tear-down are exercised too. Sends are paced open-loop: session i
                  sends every sessions/rate seconds on its own schedule (late sends go at once,
                  so a slow relay shows up as lag, not as a lower offered load).
  sink            tests/e2e/soaksink.py, an asyncio SMTP next hop in a process of its own; it
                  records every message it accepts (X-Soak-Id, SHA-256 of the body as received,
                  envelope, XCLIENT attributes) before it answers 250.
  relay           the real batv-relay (2 threads), limits.sessions and sessions_per_client sized
                  for the load, log level info with its stderr counted by event, not kept.

Each message body carries its unique id and the SHA-256 of its content (X-Soak-Id,
X-Soak-SHA256). After the run every message the client saw accepted (250 after the dot) must be at
the sink exactly once with the body's checksum and the expected envelope, no refused message may be
there, and nothing may be at the sink that the client does not know of; zero errors are expected
anywhere (client replies, sink protocol, relay warnings, session ends other than quit).

Roles:
  outbound  senders in example.com: the sink must see the prvs-signed sender (key 3, "secretkey")
            and the recipients unchanged.
  inbound   bounces (MAIL FROM:<>) to valid tags of example.com users: the sink must see the
            stripped recipient and, per message, XCLIENT ADDR/PORT/HELO of the very client
            connection it came from. 5 % of the messages also carry a recipient with a bad tag
            (550 5.7.1, never at the sink) and 3 % are forged bounces only (550 at RCPT, 554 at
            DATA, no body sent, never at the sink).

Resources: relay RSS and open descriptors are sampled every second. RSS is "flat" when, over the
steady phase (after the ramp-up and a warm-up of 15 % of the run), the last quarter's maximum is at
most RSS_MARGIN_KIB above the first quarter's maximum (see RSS_MARGIN_KIB for why that bound). The
relay's /proc/PID/fd count before the load and after every session closed must be equal (the relay
gets RSS_SETTLE seconds to close its side).

The two cores of the test machine are shared by the relay, the sink and this generator: the
default pace of 300 messages/s keeps every process below saturation (the report prints the CPU
seconds of each), so the run measures the relay under continuous mail, not the generator's limits.
The report (stderr) gives messages/s achieved, latency, lag, RSS and descriptor numbers.
"""
import asyncio
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, Relay, SmtpClient, expected_tag, free_port, parse_log_line  # noqa: E402

RELAY = KEYS = None
SINK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "soaksink.py")

SESSIONS = int(os.environ.get("BATV_SOAK_SESSIONS", "1000"))
SECONDS = float(os.environ.get("BATV_SOAK_SECONDS", "60"))
RATE = float(os.environ.get("BATV_SOAK_RATE", "300"))

MAX_MSGS_PER_SESSION = 8
REPLY_TIMEOUT = 30.0          # per reply batch; the relay's own upstream timeouts are below it
FD_SETTLE = 15.0              # seconds the relay gets to close every descriptor after the load
# RSS bound. The relay's memory is per open session (buffers, coroutine frames, the next-hop
# connection) and per transaction in flight; the load holds both constant, so after the warm-up
# RSS must stop growing (measured: 9.7 MiB idle, 25 MiB with 1,000 sessions, and the last
# quarter within 0.1 MiB of the first). What may still move without a leak: glibc's per-thread
# arenas settling and freed memory it keeps instead of returning (its trim threshold), a few
# hundred KiB to a MiB or two. Between the ends of the first and the last quarter lies half of
# the steady phase, about 0.5 * 0.85 * seconds * rate = 7,600 messages and 2,000 sessions at the
# defaults, so 4 MiB catches a leak of about 0.5 KiB per message or 2 KiB per session.
RSS_MARGIN_KIB = 4 * 1024
WARMUP_FRACTION = 0.15


def take_soak_args():
    """--sessions / --seconds / --rate from argv (removed, so unittest does not see them)."""
    global SESSIONS, SECONDS, RATE
    out = [sys.argv[0]]
    it = iter(sys.argv[1:])
    for a in it:
        name, eq, val = a.partition("=")
        if name in ("--sessions", "--seconds", "--rate"):
            v = val if eq else next(it)
            if name == "--sessions":
                SESSIONS = int(v)
            elif name == "--seconds":
                SECONDS = float(v)
            else:
                RATE = float(v)
        else:
            out.append(a)
    sys.argv[:] = out


def raise_fd_limit(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft >= need, soft


def fd_count(pid):
    """Open descriptors of pid; None when we may not look (the relay is not dumpable, so its
    /proc/PID/fd belongs to root: a test run as another user cannot count them)."""
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except PermissionError:
        if os.geteuid() == 0:
            raise
        return None


def settled_fd_count(pid, still=1.0, limit=10.0):
    """fd_count once it has not changed for `still` seconds (or after `limit` seconds)."""
    deadline = time.monotonic() + limit
    last, since = fd_count(pid), time.monotonic()
    while time.monotonic() - since < still and time.monotonic() < deadline:
        time.sleep(0.1)
        n = fd_count(pid)
        if n != last:
            last, since = n, time.monotonic()
    return last


def fd_targets(pid):
    out = {}
    if fd_count(pid) is None:
        return out
    for n in os.listdir("/proc/%d/fd" % pid):
        try:
            out[n] = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            pass
    return out


def cpu_seconds(pid):
    """utime + stime of a live process, seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values, p):
    if not values:
        return 0.0
    v = sorted(values)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


# ---------------------------------------------------------------------------------------------
# the relay, with its stderr counted instead of kept

class CountingRelay(Relay):
    """A Relay whose stderr reader keeps start-up lines and every line that is not level=info in
    full, and only counts the info lines (by event, and session_end by reason): at hundreds of
    messages per second, keeping and parsing every line would cost the generator's interpreter
    more than the load itself, and a slow reader would stall the relay on a full pipe."""

    KEEP = (b"event=listening", b"event=ready", b"event=reload", b"event=metrics_listening",
            b"event=upstream_probe")  # start() waits for the inbound listener's probe

    def _read_stderr(self):
        self.event_counts = {}
        self.session_ends = {}
        super()._read_stderr()

    def _keep_stderr_line(self, raw):
        if b" level=info " not in raw or any(k in raw for k in self.KEEP):
            return True
        i = raw.find(b" event=")
        ev = raw[i + 7:raw.find(b" ", i + 7)].decode() if i >= 0 else "?"
        self.event_counts[ev] = self.event_counts.get(ev, 0) + 1
        if ev == "session_end":
            j = raw.find(b" reason=")
            reason = raw[j + 8:raw.find(b" ", j + 8)].decode() if j >= 0 else "?"
            self.session_ends[reason] = self.session_ends.get(reason, 0) + 1
        return False

    def problems(self):
        """Kept log lines at warning or error level."""
        return [r["_raw"] for r in self.logs() if r.get("level") in ("warning", "error")]


def metrics(port):
    """The relay's Prometheus text as {(name, frozenset(labels)): value}."""
    text = harness.metrics_text(port)
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        pairs = frozenset(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(",") if kv)
        out[(name, frozenset((k, v.strip('"')) for k, v in pairs))] = float(value)
    return out


# ---------------------------------------------------------------------------------------------
# the sink

class SinkProcess:
    def __init__(self, workdir, xclient):
        self.port_file = os.path.join(workdir, "sink.port")
        self.out = os.path.join(workdir, "sink.jsonl")
        self.log = open(os.path.join(workdir, "sink.err"), "wb")
        cmd = [sys.executable, SINK, "--port-file", self.port_file, "--out", self.out]
        if xclient:
            cmd.append("--xclient")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not os.path.exists(self.port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the soak sink did not start")
            time.sleep(0.05)
        with open(self.port_file) as f:
            self.port = int(f.read())

    def stop(self):
        """SIGTERM, wait, and return (message records, stats)."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        records, stats = [], None
        with open(self.out) as f:
            for line in f:
                rec = json.loads(line)
                if "stats" in rec:
                    stats = rec["stats"]
                else:
                    records.append(rec)
        return records, stats

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


# ---------------------------------------------------------------------------------------------
# the load generator

def make_templates(rng, n=64):
    """Dot-stuffed body tails: random lines (some starting with '.', some a lone '.'), 200-6000
    octets each. Returns [(plain, stuffed)]."""
    out = []
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 +/-_,;:!?()"
    for _ in range(n):
        size = rng.randint(200, 6000)
        lines = []
        total = 0
        while total < size:
            line = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 100)))
            r = rng.random()
            if r < 0.08:
                line = b"." + line
            elif r < 0.10:
                line = b"."
            lines.append(line)
            total += len(line) + 2
        plain = b"".join(x + b"\r\n" for x in lines)
        stuffed = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
        out.append((plain, stuffed))
    return out


class Msg:
    __slots__ = ("id", "sha", "sink_from", "sink_to", "port", "helo", "outcome", "codes",
                 "t_sched", "t_sent", "t_done")

    def __init__(self, mid, sha, sink_from, sink_to, port, helo):
        self.id, self.sha, self.sink_from, self.sink_to = mid, sha, sink_from, sink_to
        self.port, self.helo = port, helo
        self.outcome = None      # "accepted" | "refused" (expected refusal) | "error"
        self.codes = None
        self.t_sched = self.t_sent = self.t_done = None


class ClientError(Exception):
    pass


class Load:
    def __init__(self, port, role, sessions, seconds, rate, relay_pid, users):
        self.port, self.role = port, role
        self.sessions, self.seconds, self.rate = sessions, seconds, rate
        self.relay_pid = relay_pid
        self.users = users          # inbound: {user: valid tagged address}
        self.msgs = {}
        self.errors = []
        self.error_count = 0
        self.open = 0
        self.connects = 0
        self.samples = []           # (t, rss_kib, fds, open sessions, messages done)
        self.templates = make_templates(random.Random(1))
        self.done = 0
        self.refused_rcpts = 0      # 550 to a forged recipient, as intended

    def error(self, what):
        self.error_count += 1
        if len(self.errors) < 30:
            self.errors.append(what)

    async def read_reply(self, reader):
        lines = []
        while True:
            line = await reader.readline()
            if not line:
                raise ClientError("connection closed by the relay (after %r)" % lines)
            if len(line) < 5 or line[3:4] not in (b" ", b"-") or not line[:3].isdigit():
                raise ClientError("malformed reply line %r" % line[:100])
            lines.append(line)
            if line[3:4] == b" ":
                return int(line[:3]), b"".join(lines)

    async def replies(self, reader, n):
        async with asyncio.timeout(REPLY_TIMEOUT):
            return [await self.read_reply(reader) for _ in range(n)]

    def build(self, idx, seq, local_port, rng):
        """One message: (Msg, command batch, expected codes, body wire bytes)."""
        mid = "%s-%d-%d" % (self.role[0], idx, seq)
        plain, stuffed = self.templates[rng.randrange(len(self.templates))]
        first = b"soak-id " + mid.encode() + b"\r\n"
        body = first + plain
        sha = hashlib.sha256(body).hexdigest()
        helo = "soak-%d.client.test" % idx
        if self.role == "outbound":
            user = "user%d@example.com" % (idx % 97)
            rcpts = ["rcpt%d@dest%d.example" % (seq, idx % 7)]
            if rng.random() < 0.3:
                rcpts.append("copy%d@elsewhere.example" % idx)
            mail_from, want = user, [250] * len(rcpts)
            sink_from, sink_to = user, list(rcpts)
        else:
            user = "user%d@example.com" % (idx % 97)
            rcpts, want = [self.users[user]], [250]
            sink_to = [user]
            r = rng.random()
            bad = self.users[user][:-len(user) - 2] + ("0" if self.users[user][-len(user) - 2] != "0"
                                                       else "1") + "=" + user
            if r < 0.03:            # forged bounce: the only recipient's tag is bad
                rcpts, want, sink_to = [bad], [550], []
            elif r < 0.08:          # a real bounce with one forged recipient beside it
                rcpts.append(bad)
                want.append(550)
            mail_from, sink_from = "", ""
        cmds = ["MAIL FROM:<%s>" % mail_from] + ["RCPT TO:<%s>" % r for r in rcpts] + ["DATA"]
        want = [250] + want + ([354] if 250 in want else [554])
        head = ("From: %s\r\nTo: %s\r\nSubject: soak %s\r\nMessage-ID: <%s@soak.test>\r\n"
                "X-Soak-Id: %s\r\nX-Soak-SHA256: %s\r\n\r\n"
                % (mail_from or "MAILER-DAEMON@remote.test", ", ".join(rcpts), mid, mid, mid, sha))
        wire = head.encode() + first + stuffed + b".\r\n"
        msg = Msg(mid, sha, sink_from, sink_to, local_port, helo)
        return msg, ("\r\n".join(cmds) + "\r\n").encode(), want, wire

    async def session(self, idx, rng, state):
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(REPLY_TIMEOUT):
            reader, writer = await asyncio.open_connection(HOST, self.port, limit=1 << 16)
        self.open += 1
        self.connects += 1
        try:
            local_port = writer.get_extra_info("sockname")[1]
            (code, text), = await self.replies(reader, 1)
            if code != 220:
                raise ClientError("greeting %r" % text)
            writer.write(b"EHLO soak-%d.client.test\r\n" % idx)
            (code, text), = await self.replies(reader, 1)
            if code != 250 or b"PIPELINING" not in text:
                raise ClientError("EHLO %r" % text)
            for _ in range(rng.randint(1, MAX_MSGS_PER_SESSION)):
                if state["next"] >= self.t_end:
                    break
                delay = state["next"] - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                state["seq"] += 1
                msg, batch, want, wire = self.build(idx, state["seq"], local_port, rng)
                msg.t_sched = state["next"]
                state["next"] += self.interval
                self.msgs[msg.id] = msg
                msg.t_sent = loop.time()
                writer.write(batch)
                got = await self.replies(reader, len(want))
                msg.codes = [c for c, _ in got]
                # After the dot, or RSET after a refused DATA (RFC 5321 3.3: the transaction
                # stays open; Postfix and the relay answer a new MAIL with 503 until RSET).
                writer.write(wire if got[-1][0] == 354 else b"RSET\r\n")
                got.append((await self.replies(reader, 1))[0])
                msg.codes.append(got[-1][0])
                want = want + [250]
                msg.t_done = loop.time()
                self.done += 1
                if msg.codes != want:
                    msg.outcome = "error"
                    raise ClientError("%s: replies %s, expected %s: %r"
                                      % (msg.id, msg.codes, want, [t for _, t in got]))
                msg.outcome = "accepted" if 354 in msg.codes else "refused"
                self.refused_rcpts += msg.codes.count(550)
            writer.write(b"QUIT\r\n")
            (code, text), = await self.replies(reader, 1)
            if code != 221:
                raise ClientError("QUIT %r" % text)
            async with asyncio.timeout(REPLY_TIMEOUT):
                if await reader.read(1) != b"":
                    raise ClientError("data after 221")
        finally:
            self.open -= 1
            writer.close()

    async def worker(self, idx):
        rng = random.Random(idx * 7919 + 1)
        await asyncio.sleep(idx * self.ramp / self.sessions)   # staggered connects
        state = {"next": self.t_start + rng.uniform(0, self.interval), "seq": 0}
        while state["next"] < self.t_end:
            try:
                await self.session(idx, rng, state)
            except (ClientError, OSError, TimeoutError, EOFError) as e:
                self.error("session %d: %s: %s" % (idx, type(e).__name__, e))
                await asyncio.sleep(0.5)

    async def sampler(self):
        loop = asyncio.get_running_loop()
        while not self.finished:
            try:
                self.samples.append((loop.time() - self.t_start, harness.rss_kib(self.relay_pid),
                                     fd_count(self.relay_pid), self.open, self.done))
            except OSError:
                pass
            await asyncio.sleep(1.0)

    async def run(self):
        loop = asyncio.get_running_loop()
        self.ramp = min(5.0, max(1.0, self.seconds / 4))
        self.interval = self.sessions / self.rate
        self.t_start = loop.time() + self.ramp
        self.t_end = self.t_start + self.seconds
        self.finished = False
        sampler = asyncio.create_task(self.sampler())
        await asyncio.gather(*(self.worker(i) for i in range(self.sessions)))
        self.finished = True
        await sampler


# ---------------------------------------------------------------------------------------------

class SoakTest(cases.RelayTestCase):
    TMP_PREFIX = "batv-soak-"
    maxDiff = None

    @classmethod
    def setUpClass(cls):
        need = 4 * SESSIONS + 200   # generator + relay (client and next-hop side) + sink
        ok, have = raise_fd_limit(need)
        if not ok:
            raise unittest.SkipTest("RLIMIT_NOFILE hard limit %d is below the %d descriptors %d "
                                    "sessions need (lower --sessions)" % (have, need, SESSIONS))

    def start(self, role):
        self.sink = SinkProcess(self.dir, xclient=(role == "inbound"))
        self.addCleanup(self.sink.close)
        listener = {"upstream": self.sink.port, "role": role}
        if role == "inbound":
            listener["forward_client"] = "xclient"
        self.metrics_port = free_port()
        cap = SESSIONS + SESSIONS // 10 + 10  # a QUIT session may still be counted at reconnect
        relay = self.relay(
            [listener], relay_class=CountingRelay, start=False,
            limits={"sessions": cap, "sessions_per_client": cap,
                    "errors_per_session": 100},  # refused forged bounces are errors; not the subject
            timeouts={"idle": 60, "command": 60, "data": 60, "upstream_connect": 10,
                      "upstream_reply": 20, "upstream_data_reply": 25},
            extra_toml='[metrics]\nlisten = "%s:%d"\n' % (HOST, self.metrics_port))
        # In an ASan build, freed memory waits in the sanitizer's quarantine (256 MiB by default)
        # before reuse, so RSS climbs until the quarantine is full: how fast depends on how much
        # the relay frees per message, not on leaks. A small quarantine fills during the warm-up
        # and the flat-RSS check measures the relay again. Other builds ignore the variable.
        asan = ":".join(o for o in (os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=16") if o)
        relay.start(ready_timeout=15, env={"ASAN_OPTIONS": asan})
        return relay

    def run_load(self, role):
        relay = self.start(role)
        pid = relay.pid
        t0 = time.time()
        users = {}
        if role == "inbound":
            users = {"user%d@example.com" % i: expected_tag("user%d@example.com" % i, t0)
                     for i in range(97)}
        # Warm-up: asio creates each I/O thread's reactor (epoll, eventfd, timerfd) when that
        # thread gets its first socket, a one-time cost; sessions go to the threads round-robin.
        for _ in range(2 * relay.threads):
            with SmtpClient(relay.port()) as c:
                c.read_reply()
                c.cmd("EHLO warmup.client.test")
                c.cmd("QUIT")
                c.wait_closed()
        # The warm-up's last sockets may still be closing, and its next-hop connections wait
        # timeouts.upstream_idle (2 s by default) for reuse before they are closed.
        fds_before = settled_fd_count(pid, still=3.0)
        targets_before = fd_targets(pid)
        rss_before = relay.rss_kib()
        cpu_relay0, cpu_sink0 = cpu_seconds(pid), cpu_seconds(self.sink.proc.pid)
        cpu_gen0 = time.process_time()
        load = Load(relay.port(), role, SESSIONS, SECONDS, RATE, pid, users)
        wall0 = time.monotonic()
        asyncio.run(load.run())
        wall = time.monotonic() - wall0
        t1 = time.time()
        cpu = (cpu_seconds(pid) - cpu_relay0, cpu_seconds(self.sink.proc.pid) - cpu_sink0,
               time.process_time() - cpu_gen0)
        # Descriptors: every session closed on the client side; give the relay a bounded while.
        deadline = time.monotonic() + FD_SETTLE
        fds_after = fd_count(pid)
        while fds_after != fds_before and time.monotonic() < deadline:
            time.sleep(0.2)
            fds_after = fd_count(pid)
        settle = FD_SETTLE - max(0.0, deadline - time.monotonic())
        leaked = {k: v for k, v in fd_targets(pid).items() if targets_before.get(k) != v}
        m = metrics(self.metrics_port)
        records, stats = self.sink.stop()
        self.report(role, load, wall, records, stats, cpu, rss_before, fds_before, fds_after, settle)
        return relay, load, records, stats, m, (fds_before, fds_after, leaked), (t0, t1)

    # -- checks --
    def check(self, role, relay, load, records, stats, m, fds, times):
        problems = []
        if load.error_count:
            problems.append("%d client errors, e.g.:\n  %s" % (load.error_count,
                                                             "\n  ".join(load.errors[:10])))
        if stats is None:
            problems.append("the sink wrote no stats line")
        elif stats["errors"]:
            problems.append("sink protocol errors: %s" % stats["error_samples"])
        accepted = {k: v for k, v in load.msgs.items() if v.outcome == "accepted"}
        refused = {k: v for k, v in load.msgs.items() if v.outcome == "refused"}
        if not accepted:
            problems.append("no message was accepted")
        # Accounting: exactly once, intact, the expected envelope.
        seen = {}
        t0, t1 = times
        tags = {}
        for rec in records:
            mid = rec["id"]
            if mid in seen:
                problems.append("%s at the sink twice" % mid)
                continue
            seen[mid] = rec
            msg = load.msgs.get(mid)
            if msg is None:
                problems.append("%s at the sink but never sent" % mid)
                continue
            if mid in refused:
                problems.append("%s at the sink though the client saw %s" % (mid, msg.codes))
                continue
            if rec["sha"] != msg.sha or rec["claimed"] != msg.sha:
                problems.append("%s body checksum %s (claimed %s), sent %s"
                                % (mid, rec["sha"], rec["claimed"], msg.sha))
            if role == "outbound":
                if msg.sink_from not in tags:
                    tags[msg.sink_from] = {expected_tag(msg.sink_from, t) for t in (t0, t1)}
                if rec["from"] not in tags[msg.sink_from]:
                    problems.append("%s sender %r is not the signed %s" % (mid, rec["from"],
                                                                           msg.sink_from))
            elif rec["from"] != msg.sink_from:
                problems.append("%s sender %r, expected %r" % (mid, rec["from"], msg.sink_from))
            if rec["to"] != msg.sink_to:
                problems.append("%s recipients %r, expected %r" % (mid, rec["to"], msg.sink_to))
            if role == "inbound":
                x = rec["xclient"] or {}
                want = {"ADDR": "127.0.0.1", "PORT": str(msg.port), "HELO": msg.helo}
                if {k: x.get(k) for k in want} != want:
                    problems.append("%s XCLIENT %r, expected %r" % (mid, x, want))
        missing = [k for k in accepted if k not in seen]
        if missing:
            problems.append("%d accepted messages missing at the sink, e.g. %s"
                            % (len(missing), missing[:5]))
        if len(records) != len(accepted):
            problems.append("sink holds %d messages, the client saw %d accepted"
                            % (len(records), len(accepted)))
        # The relay: no warning or error, every session ended by QUIT, its counters agree.
        warn = []
        forged = 0
        for line in relay.problems():
            r = parse_log_line(line)
            if (role, r.get("event"), r.get("verdict"), r.get("action")) == (
                    "inbound", "rcpt", "bad_signature", "refused"):
                forged += 1
            else:
                warn.append(line)
        if forged != load.refused_rcpts:
            problems.append("relay logged %d refused forged recipients, the client got %d 550s"
                            % (forged, load.refused_rcpts))
        if warn:
            problems.append("relay warnings/errors:\n  " + "\n  ".join(warn[:10]))
        odd = {k: v for k, v in relay.session_ends.items() if k != "quit"}
        if odd:
            problems.append("relay session ends other than quit: %s" % odd)
        got = m.get(("batv_messages_total", frozenset({("role", role), ("outcome", "accepted")})))
        if got != len(accepted):
            problems.append("batv_messages_total accepted=%s, client saw %d" % (got, len(accepted)))
        # Descriptors.
        before, after, leaked = fds
        if before is None:
            sys.stderr.write("descriptor check skipped: not root, and the relay's /proc/PID/fd "
                             "is root's (it is not dumpable)\n")
        elif before != after:
            problems.append("relay descriptors before %d, after %d (settle %.0f s): %s"
                            % (before, after, FD_SETTLE, sorted(leaked.values())[:10]))
        # RSS.
        flat, detail = rss_flat(load.samples, SECONDS)
        if not flat:
            problems.append("relay RSS not flat: " + detail)
        # The load really was continuous: the achieved rate is close to the offered one.
        steady = [x for x in load.msgs.values() if x.t_done is not None]
        if len(steady) < 0.9 * RATE * SECONDS:
            problems.append("only %d messages sent of the %d offered (%.0f/s for %.0f s): the "
                            "generator or the relay could not keep the pace"
                            % (len(steady), RATE * SECONDS, RATE, SECONDS))
        self.assertFalse(problems, "\n".join(problems[:40]))

    def report(self, role, load, wall, records, stats, cpu, rss_before, fds_before, fds_after,
               settle):
        done = [x for x in load.msgs.values() if x.t_done is not None]
        lat = [x.t_done - x.t_sent for x in done]
        lag = [x.t_sent - x.t_sched for x in done]
        acc = sum(1 for x in done if x.outcome == "accepted")
        ref = sum(1 for x in done if x.outcome == "refused")
        steady = [s for s in load.samples if 0 <= s[0] <= SECONDS]
        # Sessions end during the last send interval (their next send would be past the end).
        opened = [s[3] for s in steady if 1 <= s[0] <= SECONDS - SESSIONS / RATE]
        _, detail = rss_flat(load.samples, SECONDS)
        peak_rss = max((s[1] for s in load.samples), default=0)
        peak_fds = max((s[2] or 0 for s in load.samples), default=0)
        sys.stderr.write(
            "\n--- soak %s: %d sessions, %.0f s, offered %.0f msg/s ---\n"
            "messages: %d accepted, %d refused as expected, %d client errors; %.1f accepted/s "
            "(%.1f transactions/s); %d connections\n"
            "sink: %s messages, peak %s connections\n"
            "latency (MAIL to final reply): p50 %.1f ms, p99 %.1f ms, max %.1f ms; "
            "send lag p99 %.1f ms, max %.1f ms\n"
            "open sessions in the steady phase: min %s, max %s\n"
            "relay RSS: %d KiB before, peak %d KiB; %s\n"
            "relay fds: %s before, peak %s, %s after (%.1f s settle)\n"
            "CPU seconds over %.0f s wall: relay %.1f, sink %.1f, generator %.1f\n"
            % (role, SESSIONS, SECONDS, RATE, acc, ref, load.error_count, acc / SECONDS,
               len(done) / SECONDS, load.connects,
               stats and stats["messages"], stats and stats["peak"],
               1000 * percentile(lat, 50), 1000 * percentile(lat, 99), 1000 * max(lat, default=0),
               1000 * percentile(lag, 99), 1000 * max(lag, default=0),
               min(opened, default=None), max(opened, default=None),
               rss_before, peak_rss, detail, fds_before, peak_fds, fds_after, settle,
               wall, cpu[0], cpu[1], cpu[2]))

    def test_outbound(self):
        out = self.run_load("outbound")
        self.check("outbound", *out)

    def test_inbound(self):
        out = self.run_load("inbound")
        self.check("inbound", *out)


def rss_flat(samples, seconds):
    """(flat?, text): over the steady phase after the warm-up, the last quarter's max RSS is at
    most RSS_MARGIN_KIB above the first quarter's max."""
    start = WARMUP_FRACTION * seconds
    window = [s for s in samples if start <= s[0] <= seconds]
    if len(window) < 8:
        return False, "only %d RSS samples in the steady phase" % len(window)
    q = len(window) // 4
    first = max(s[1] for s in window[:q])
    last = max(s[1] for s in window[-q:])
    text = ("steady phase %.0f-%.0f s: first-quarter max %d KiB, last-quarter max %d KiB "
            "(%+d KiB; bound +%d KiB)" % (start, seconds, first, last, last - first,
                                          RSS_MARGIN_KIB))
    return last <= first + RSS_MARGIN_KIB, text


def main():
    take_soak_args()
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
