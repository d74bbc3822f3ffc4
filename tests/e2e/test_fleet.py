#!/usr/bin/env python3
"""A fleet end to end: the real HAProxy (Debian haproxy, 2.6) in front of two batv-relays.

Usage: test_fleet.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

HAProxy runs in the foreground (`haproxy -db -f CFG`) with the configuration of README.md's
"Scale-out" section, read from there and filled in with loopback ports chosen at run time (a
config cannot ask for port 0: free ports are picked by binding port 0 and closing, and a start
that fails on a port taken meanwhile is retried with new ones, a bounded number of times). It
passes TCP connections to two relays with `send-proxy-v2` and health checks every 200 ms. Each
relay has an inbound listener (verifying bounces) and an outbound one (signing), both with
accept_proxy_from = 127.0.0.1 (HAProxy) and forward_client = "xclient" towards one recording
next hop (harness.ScriptedUpstream offering XCLIENT ADDR PORT HELO PROTO), and its own copy of
the key file.

Clients are Python smtplib threads, each bound to its own loopback source address (127.0.0.2 to
127.0.0.5: HAProxy itself connects from 127.0.0.1, which the outbound allow_clients leaves out),
two per role, sending numbered messages in sessions of a few messages each. When both relays have
served both roles and a third of the mail is through, relay A is stopped (SIGTERM,
timeouts.shutdown_grace = 1 s; in a second test killed, SIGKILL) just after it began a session;
the clients retry whatever was not acknowledged with 250 after a 4xx, a dropped connection or a
refused connect. Checked:

  - both relays served sessions of both roles before the stop, and answered HAProxy's health
    checks (batv_proxy_health_checks_total > 0, no proxy_header_failed warnings);
  - the stop was felt (a client saw 421 or a lost connection) and no client ever saw a 5xx;
  - the next hop got every message, exactly once (by Message-ID) after SIGTERM; after SIGKILL
    only a message whose client lost the connection after sending it may arrive twice (the kill
    fell between the next hop's 250 and ours: RFC 5321 6.1's duplicate, not a loss);
  - outbound mail left signed (prvs= sender), inbound bounces to valid tags arrived stripped;
  - the next hop saw each message's real client: the XCLIENT ADDR of the connection that carried
    it is the client's own source address, and the relays' connect logs name it (via=HAProxy).
"""
import os
import re
import shutil
import signal
import smtplib
import socket
import string
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, KeyFile, expected_tag, free_port, scaled, wait_port, wait_until  # noqa: E402

RELAY = KEYS = None

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "README.md")
XCLIENT_CAPS = ["PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "XCLIENT ADDR PORT HELO PROTO"]
CLIENTS = [("outbound", "127.0.0.2"), ("outbound", "127.0.0.3"),
           ("inbound", "127.0.0.4"), ("inbound", "127.0.0.5")]
MESSAGES_PER_CLIENT = 20
PER_SESSION = 5
PAUSE = 0.3                # between the messages of a session: a session lasts about 1.5 s,
SHUTDOWN_GRACE = 1         # longer than the stopped relay's grace, so its fresh sessions get 421
MAX_ATTEMPTS = 40          # per message; each failed attempt waits RETRY_PAUSE
RETRY_PAUSE = 0.1
HAPROXY_START_TRIES = 5


def haproxy_template():
    """The ```haproxy block of README.md's "## Scale-out" section."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    start = text.index("\n## Scale-out\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else len(text)]
    m = re.search(r"```haproxy\n(.*?)```", section, re.S)
    if not m:
        raise AssertionError("README.md: no ```haproxy block in the Scale-out section")
    return string.Template(m.group(1))


class HAProxy:
    """haproxy -db -f CFG in the foreground, on free loopback ports (retried when taken)."""

    def __init__(self, workdir, relays):
        self.cfg_path = os.path.join(workdir, "haproxy.cfg")
        self.log_path = os.path.join(workdir, "haproxy.log")
        self.proc = None
        template = haproxy_template()
        last = ""
        for _ in range(HAPROXY_START_TRIES):
            self.inbound_port, self.outbound_port = free_port(), free_port()
            if self.inbound_port == self.outbound_port:
                continue
            cfg = template.substitute(
                INBOUND_BIND="%s:%d" % (HOST, self.inbound_port),
                OUTBOUND_BIND="%s:%d" % (HOST, self.outbound_port),
                RELAY_A_INBOUND="%s:%d" % (HOST, relays[0].port(0)),
                RELAY_B_INBOUND="%s:%d" % (HOST, relays[1].port(0)),
                RELAY_A_OUTBOUND="%s:%d" % (HOST, relays[0].port(1)),
                RELAY_B_OUTBOUND="%s:%d" % (HOST, relays[1].port(1)),
                CHECK_INTERVAL="200ms")
            with open(self.cfg_path, "w") as f:
                f.write(cfg)
            check = subprocess.run([HAPROXY, "-c", "-q", "-f", self.cfg_path], capture_output=True,
                                   timeout=scaled(30))
            if check.returncode != 0:
                raise AssertionError("haproxy -c refuses the README configuration:\n%s\n%s"
                                     % (check.stdout.decode() + check.stderr.decode(), cfg))
            log = open(self.log_path, "wb")
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg_path], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
            log.close()
            up = wait_until(lambda: self.proc.poll() is not None or
                            (wait_port(self.inbound_port, 0.2) and wait_port(self.outbound_port, 0.2)),
                            scaled(10))
            if up and self.proc.poll() is None:
                return
            self.stop()
            with open(self.log_path, "rb") as f:
                last = f.read().decode(errors="replace")
            # A port taken between picking and binding: pick again.
        raise AssertionError("haproxy did not start in %d tries; last log:\n%s" % (HAPROXY_START_TRIES, last))

    def port(self, role):
        return self.inbound_port if role == "inbound" else self.outbound_port

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Client(threading.Thread):
    """Sends MESSAGES_PER_CLIENT numbered messages through HAProxy from `source`, PER_SESSION per
    SMTP session, retrying each message that did not get a final 250 (after a 4xx, a lost
    connection or a refused connect) until it does, at most MAX_ATTEMPTS times."""

    def __init__(self, role, source, port, done_counter):
        super().__init__(daemon=True)
        self.role, self.source, self.port = role, source, port
        self.done = done_counter            # shared [count] with a lock, for the test's pacing
        self.delivered = []                 # tokens acknowledged with 250
        self.temporary = []                 # (token, what) of each failed attempt
        self.permanent = []                 # (token, what): must stay empty
        self.failed = []                    # tokens given up on
        self.tokens = ["%s-%s-%02d" % (role, source.rsplit(".", 1)[1], i) for i in range(MESSAGES_PER_CLIENT)]

    def envelope(self):
        if self.role == "outbound":
            return "alice@example.com", ["carol@remote.example"]
        return "", [expected_tag("bob@example.com")]   # a bounce to a valid tag

    def message(self, token):
        return ("From: fleet@test\r\nTo: someone@test\r\nSubject: fleet %s\r\nMessage-ID: <%s@fleet.test>\r\n"
                "\r\nmessage %s\r\n" % (token, token, token))

    def run(self):
        queue = list(self.tokens)
        attempts = dict.fromkeys(queue, 0)
        while queue:
            token = queue[0]
            if attempts[token] >= MAX_ATTEMPTS:
                self.failed.append(queue.pop(0))
                continue
            attempts[token] += 1
            if not self.session(queue, attempts):
                time.sleep(RETRY_PAUSE)

    def session(self, queue, attempts):
        """One SMTP session for up to PER_SESSION messages of `queue` (delivered ones are taken
        off it). False after a failure (the message at the head of the queue is retried)."""
        token = queue[0]
        try:
            s = smtplib.SMTP(HOST, self.port, local_hostname="client%s.test" % self.source.rsplit(".", 1)[1],
                             timeout=scaled(20), source_address=(self.source, 0))
        except (OSError, smtplib.SMTPException) as e:
            self.temporary.append((token, "connect: %r" % e))
            return False
        try:
            for n in range(PER_SESSION):
                if not queue:
                    break
                token = queue[0]
                if n:
                    attempts[token] += 1
                sender, rcpts = self.envelope()
                s.sendmail(sender, rcpts, self.message(token))
                self.delivered.append(queue.pop(0))
                with self.done[1]:
                    self.done[0] += 1
                time.sleep(PAUSE)
            s.quit()
            return True
        except smtplib.SMTPResponseException as e:
            return self.failure(queue, token, e.smtp_code, "%d %r" % (e.smtp_code, e.smtp_error))
        except smtplib.SMTPRecipientsRefused as e:
            code, text = next(iter(e.recipients.values()))
            return self.failure(queue, token, code, "RCPT %d %r" % (code, text))
        except (smtplib.SMTPServerDisconnected, OSError) as e:
            # Lost before the final 250 (the relay stopped): not acknowledged, so sent again.
            self.temporary.append((token, "lost: %r" % e))
            return False
        finally:
            try:
                s.close()
            except OSError:
                pass

    def failure(self, queue, token, code, what):
        if code >= 500:
            # Final: not retried (and the test fails on it).
            self.permanent.append((token, what))
            if queue and queue[0] == token:
                self.failed.append(queue.pop(0))
        else:
            self.temporary.append((token, what))
        return False


def metric(port, name):
    total = 0.0
    for line in harness.metrics_text(port).splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


class FleetTest(cases.RelayTestCase):
    KEY_FILE = None   # each relay has its own copy (start_relay)

    def start_relay(self, name, mx):
        d = os.path.join(self.dir, name)
        os.mkdir(d)
        keys = KeyFile(KEYS, os.path.join(d, "keys.toml"))  # each relay its own copy (same key)
        listeners = [
            {"role": "inbound", "upstream": mx.port, "forward_client": "xclient",
             "accept_proxy_from": [HOST]},
            {"role": "outbound", "upstream": mx.port, "forward_client": "xclient",
             "accept_proxy_from": [HOST], "allow_clients": ["127.0.0.2/31", "127.0.0.4/31"]},
        ]
        r = self.relay(listeners, workdir=d, keyfile=keys, metrics=True,
                       timeouts={"shutdown_grace": SHUTDOWN_GRACE, "upstream_idle": 0})
        r.name = name
        return r

    def sessions(self, r, role):
        return [x for x in r.logs("session_end") if x.get("role") == role]

    def test_relay_stopped_mid_run(self):
        """SIGTERM: nothing lost, nothing delivered twice, clients see 421 and retry."""
        self.run_fleet(signal.SIGTERM)

    def test_relay_killed_mid_run(self):
        """SIGKILL: the cut sessions' clients see a lost connection and retry; nothing is lost.
        A message is delivered twice only when the kill fell between the next hop's 250 and ours
        (its client then saw the connection drop after sending it): allowed for exactly those."""
        self.run_fleet(signal.SIGKILL)

    def run_fleet(self, sig):
        # Not a skip: tools/lib.sh installs haproxy, and a fleet test that silently did not run
        # would read as a pass.
        self.assertTrue(os.path.exists(HAPROXY), "haproxy is not installed (Debian package haproxy)")
        mx = self.upstream(caps=XCLIENT_CAPS)
        a = self.start_relay("relay-a", mx)
        b = self.start_relay("relay-b", mx)
        hap = HAProxy(self.dir, [a, b])
        self.addCleanup(hap.stop)
        self.addCleanup(self.show_haproxy_log_on_failure, hap)

        # HAProxy's health checks reach both relays as PROXY v2 LOCAL before any mail.
        for r in (a, b):
            self.assertTrue(wait_until(lambda r=r: metric(r.metrics_port, "batv_proxy_health_checks_total") >= 2,
                                       scaled(10)), "%s: no health checks from HAProxy" % r.name)

        done = [0, threading.Lock()]
        clients = [Client(role, src, hap.port(role), done) for role, src in CLIENTS]
        total = len(clients) * MESSAGES_PER_CLIENT
        for c in clients:
            c.start()

        # Stop relay A mid-run: once both relays served both roles and a third of the mail is in.
        def both_served():
            with done[1]:
                n = done[0]
            return n >= total // 3 and all(self.sessions(r, role) for r in (a, b) for role in ("inbound", "outbound"))
        self.assertTrue(wait_until(both_served, scaled(60)),
                        "traffic did not reach both relays in both roles: %s"
                        % {r.name: {role: len(self.sessions(r, role)) for role in ("inbound", "outbound")}
                           for r in (a, b)})
        # ...at a moment when relay A has just begun a session: it outlasts the grace period, so
        # its client gets 421 and must retry elsewhere.
        first_seen = {}

        def fresh_session_on_a():
            now = time.monotonic()
            ended = {x.get("sid") for x in a.logs("session_end")}
            for rec in a.logs("connect"):
                first_seen.setdefault(rec.get("sid"), now)
            return any(sid not in ended and now - t < PAUSE for sid, t in first_seen.items())
        for sid in {x.get("sid") for x in a.logs("connect")}:
            first_seen[sid] = 0.0  # already running: not fresh
        self.assertTrue(wait_until(fresh_session_on_a, scaled(30), 0.01), "relay A began no session")
        with done[1]:
            at_stop = done[0]
        # SIGTERM: listeners close now, open sessions get shutdown_grace, then 421. SIGKILL: gone.
        a.stop(sig)
        for c in clients:
            c.join(scaled(120))
            self.assertFalse(c.is_alive(), "client %s did not finish" % c.source)

        # No 5xx, nothing given up on, something delivered after the stop.
        for c in clients:
            self.assertEqual(c.permanent, [], "client %s saw a permanent failure" % c.source)
            self.assertEqual(c.failed, [], "client %s gave up on messages: %s" % (c.source, c.temporary[-5:]))
            self.assertEqual(sorted(c.delivered), sorted(c.tokens))
        self.assertLess(at_stop, total, "the stop came after the last message")

        # Every message at the next hop exactly once, from the client that sent it.
        self.assertTrue(wait_until(lambda: len(mx.accepted()) >= total, scaled(10)))
        seen = {}
        for conn in mx.connections():
            for tx in conn.transactions:
                if not tx.accepted:
                    continue
                m = re.search(rb"Message-ID: <([^@>]+)@fleet\.test>", bytes(tx.data))
                self.assertIsNotNone(m, tx)
                seen.setdefault(m.group(1).decode(), []).append((conn, tx))
        by_token = {t: c for c in clients for t in c.tokens}
        self.assertEqual(sorted(seen), sorted(by_token), "messages lost or unexpected at the next hop")
        dupes = {t: len(v) for t, v in seen.items() if len(v) != 1}
        if sig == signal.SIGKILL:
            lost = {t for c in clients for t, what in c.temporary if what.startswith("lost")}
            self.assertLessEqual(set(dupes), lost, "delivered twice without a lost final reply")
            self.assertTrue(all(n == 2 for n in dupes.values()), dupes)
        else:
            self.assertEqual(dupes, {}, "messages delivered more than once")
        for token, carried in seen.items():
            conn, tx = carried[0]
            client = by_token[token]
            self.assertIsNotNone(conn.xclient, "no XCLIENT before %s" % token)
            self.assertIn("ADDR=%s " % client.source, conn.xclient + " ", token)
            if client.role == "outbound":
                self.assertRegex(tx.mail, r"(?i)^MAIL FROM:<prvs=\d{4}[0-9a-f]{6}=alice@example\.com>", token)
            else:
                self.assertRegex(tx.mail, r"^MAIL FROM:<>", token)
                self.assertEqual(tx.rcpts, ["RCPT TO:<bob@example.com>"], token)

        # The relays' own view: sessions of the real clients, via HAProxy; no bad headers.
        for r in (a, b):
            connects = r.logs("connect")
            self.assertTrue(connects, r.name)
            self.assertEqual(r.logs("proxy_header_failed"), [], r.name)
            for rec in connects:
                self.assertTrue(rec.get("via", "").startswith(HOST + ":"), rec["_raw"])
            # The sessions that carried mail are the clients' own (the port probes of the start-up
            # wait come through HAProxy from 127.0.0.1 too, and send nothing).
            ends = [x for x in r.logs("session_end") if x.get("messages") != "0"]
            self.assertTrue(ends, r.name)
            for rec in ends:
                self.assertIn(rec.get("client", "").rsplit(":", 1)[0], {src for _, src in CLIENTS}, rec["_raw"])
        self.assertTrue(b.running())
        self.assertGreater(metric(b.metrics_port, "batv_proxy_health_checks_total"), 2)
        # The stop was felt: a client had to retry (after a 421 or a lost connection), and only
        # temporarily (no 5xx above, nothing lost or doubled).
        self.assertGreater(sum(len(c.temporary) for c in clients), 0, "no client noticed the stop")
        if sig == signal.SIGTERM:
            self.assertTrue(any(x.get("reason") == "shutdown" for x in a.logs("session_end")),
                            "relay A closed no session at the end of its grace period")
        sys.stderr.write("\nfleet: %d messages, %d at the stop; temporary failures per client: %s\n"
                         % (total, at_stop, {c.source: c.temporary for c in clients if c.temporary}))

    def show_haproxy_log_on_failure(self, hap):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        failed = result is not None and any(
            t is self for t, _ in getattr(result, "failures", []) + getattr(result, "errors", []))
        if (failed or os.environ.get("BATV_E2E_LOGS")) and os.path.exists(hap.log_path):
            with open(hap.log_path, "rb") as f:
                sys.stderr.write("\n--- haproxy log ---\n%s\n--- end ---\n" % f.read().decode(errors="replace")[-4000:])


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
