#!/usr/bin/env python3
"""No secret in any log, error or core dump: a full mix of relay sessions, reloads and batv-keys commands at
debug log level, every byte they print collected, and each key's secret searched for in it.

Usage: test_secrets.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

The mix (one relay with an outbound and an inbound listener, each in front of a ScriptedUpstream,
[logging] level = "debug", metrics on):
  - keys: `rotate` (random key 0), `import --id 5` of a printable secret (its raw bytes would show
    in text), `list`, `list --json`, `sign`, `verify` of valid / bad / expired / unknown-key /
    malformed tags, `retire` too early, `retire` of the signing key, `prune`, `import` over a used
    id, of an empty and of an oversize secret;
  - sessions: outbound signing; inbound bounces to a valid tag of each key, a bad signature, an
    unknown key, an expired tag, a malformed tag, an untagged address; a normal sender to a tag
    with a bad signature (stripped);
  - reloads: `rotate` picked up by the key-file watch, SIGHUP, then the old key's tag still valid;
  - broken key files, each seen by the watching relay (reload failed), `--check-config` and
    `batv-keys list`, and a relay started on it: not base64, a secret written as a bare number
    (TOML parse error), an unterminated string, an oversize secret, a duplicate id, mode 0644;
  - `--check-config` of the good config, the metrics page, SIGTERM.
Collected: the relay's stderr and stdout, every CLI's stdout and stderr, every SMTP reply the
clients got, everything the next hops received, the metrics page. Searched for, per secret that was
ever in a key file (and per secret written into a broken one): its raw bytes, the relay log's
\\xNN escaping of them, lowercase and uppercase hex, base64 (standard and URL-safe, with and without
padding) and the field as written in the file; for each, every 12-character (raw: 8-byte) window,
so a partial leak counts too.

CoreDumpTest: the relay started with an unlimited core size has RLIMIT_CORE 0 and is not dumpable
(its /proc/PID/fd, environ and mem belong to root), and SIGABRT leaves no core file where a control
process of the same user, limit and directory leaves one.
"""
import base64
import json
import os
import random
import re
import resource
import select
import signal
import smtplib
import string
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import DAY, HOST, Relay, SmtpClient, expected_tag, free_port  # noqa: E402

RELAY = KEYS = None

TEXT_WINDOW = 12   # characters of an encoding that count as a leak (72 bits of base64, 48 of hex)
RAW_WINDOW = 8     # bytes of the raw secret


def log_escaped(raw):
    """The relay log's rendering of bytes (relay/log.cpp log_value): \\xNN outside printable
    ASCII, backslash before quote and backslash."""
    out = []
    for b in raw:
        if b in (0x22, 0x5c):
            out.append("\\" + chr(b))
        elif b < 0x20 or b >= 0x7f:
            out.append("\\x%02x" % b)
        else:
            out.append(chr(b))
    return "".join(out).encode()


def encodings(secret):
    """Text forms a secret could leak in (bytes each)."""
    b64 = base64.b64encode(secret)
    return {"hex": secret.hex().encode(), "HEX": secret.hex().upper().encode(),
            "base64": b64, "base64-unpadded": b64.rstrip(b"="),
            "base64url": base64.urlsafe_b64encode(secret).rstrip(b"="),
            "log-escaped": log_escaped(secret)}


def windows(text, n):
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def find_leaks(output, secrets, written):
    """[(what, form, excerpt)] for every window of a secret or written field found in output."""
    found = []
    for name, secret in secrets.items():
        forms = [("raw", w) for w in windows(secret, RAW_WINDOW)]
        for form, text in encodings(secret).items():
            forms += [(form, w) for w in windows(text, TEXT_WINDOW)]
        for form, needle in forms:
            i = output.find(needle)
            if i >= 0:
                found.append((name, form, output[max(0, i - 60):i + len(needle) + 20]))
                break
    for name, field in written.items():
        for needle in windows(field, TEXT_WINDOW):
            i = output.find(needle)
            if i >= 0:
                found.append((name, "written field", output[max(0, i - 60):i + len(needle) + 20]))
                break
    return found


class RecordingRelay(Relay):
    """A Relay that also keeps its stderr byte for byte (the harness keeps decoded lines)."""

    def _read_stderr(self):
        self.raw_stderr = bytearray()
        super()._read_stderr()

    def _keep_stderr_line(self, raw):
        self.raw_stderr += raw
        return True


class NoSecretsTest(cases.RelayTestCase):
    maxDiff = None
    TMP_PREFIX = "batv-secrets-"
    KEY_FILE = None   # self.keys() runs batv-keys on self.key_path, which the test fills

    def setUp(self):
        super().setUp()
        self.key_path = os.path.join(self.dir, "keys.toml")
        self.output = bytearray()   # every byte any program printed or any peer received
        self.secrets = {}           # name -> secret bytes
        self.written = {}           # name -> the secret field as written in a key file
        self.rng = random.Random()

    # -- collecting --
    def keys(self, *args, stdin=None, now=None, path=None, want=None):
        cmd = [KEYS, "--keys", path or self.key_path]
        if now is not None:
            cmd += ["--now", str(now)]
        p = subprocess.run(cmd + list(args), input=stdin, capture_output=True, timeout=30)
        self.output += p.stdout + p.stderr
        if want is not None:
            self.assertEqual(p.returncode, want, (args, p.stdout, p.stderr))
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def note_key_file(self, path=None):
        """Every secret in the key file now, and its field as written."""
        with open(path or self.key_path, "rb") as f:
            text = f.read()
        for i, (kid, field) in enumerate(re.findall(
                rb'id = (\d+)\s*\nstate = "\w+"\s*\nsecret = "([^"]*)"', text)):
            name = "key %s (%s)" % (kid.decode(), field[:4].decode())
            self.written[name] = field
            self.secrets[name] = base64.b64decode(field)

    def replace_key_file(self, data, mode):
        """Atomically (a rename, as batv-keys does), so the watching relay sees one change."""
        tmp = self.key_path + ".new"
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, self.key_path)

    def check_config(self, config_path, want):
        p = subprocess.run([RELAY, "--check-config", config_path], capture_output=True,
                           timeout=30)
        self.output += p.stdout + p.stderr
        self.assertEqual(p.returncode, want, p.stdout + p.stderr)
        return (p.stdout + p.stderr).decode(errors="replace")

    def smtp(self, port, items):
        """A raw session: greeting, then one reply per item; every reply collected."""
        got = []
        with SmtpClient(port) as c:
            got.append(c.read_reply())
            for item in items:
                got.append(c.cmd(item) if item is not None else c.read_reply())
        for r in got:
            self.output += ("%d %s\n" % (r.code, r.text)).encode()
        return [r.code for r in got]

    def bounce(self, port, rcpt, data=True):
        items = ["EHLO mx.remote.test", "MAIL FROM:<>", "RCPT TO:<%s>" % rcpt]
        codes = self.smtp(port, items + (["DATA", "Subject: ndr\r\n\r\nbounce\r\n.", "QUIT"]
                                         if data else ["QUIT"]))
        return codes[3]

    def send_out(self, port):
        with smtplib.SMTP(HOST, port, timeout=10) as s:
            s.set_debuglevel(0)
            refused = s.sendmail("homer@example.com", ["bart@elsewhere.org"],
                                 b"Subject: out\r\n\r\nhello\r\n")
        self.assertEqual(refused, {})

    def random_secret(self, name, n=32):
        s = os.urandom(n)
        self.secrets[name] = s
        return s

    # -- the broken key files --
    def broken_key_files(self):
        """[(label, text, mode)] of broken key files, each with a fresh secret in it."""
        created = "created = 2026-01-01T00:00:00Z\n"
        head = '[[key]]\nid = 1\nstate = "signing"\n'
        out = []
        s = base64.b64encode(self.random_secret("broken: not base64")).decode()
        self.written["broken: not base64"] = s.encode()
        out.append(("not base64", head + 'secret = "%s!"\n' % s + created, 0o600))
        # A secret whose base64 is all digits, written without quotes: a TOML integer too large
        # for 64 bits, whose parser quotes it in its error message.
        digits = "".join(self.rng.choice(string.digits) for _ in range(40))
        self.secrets["broken: bare number"] = base64.b64decode(digits)
        self.written["broken: bare number"] = digits.encode()
        out.append(("bare number", head + "secret = %s\n" % digits + created, 0o600))
        s = base64.b64encode(self.random_secret("broken: unterminated")).decode()
        self.written["broken: unterminated"] = s.encode()
        out.append(("unterminated string", head + 'secret = "%s\n' % s + created, 0o600))
        s = base64.b64encode(self.random_secret("broken: oversize", 65)).decode()
        self.written["broken: oversize"] = s.encode()
        out.append(("oversize secret", head + 'secret = "%s"\n' % s + created, 0o600))
        s = base64.b64encode(self.random_secret("broken: duplicate id")).decode()
        self.written["broken: duplicate id"] = s.encode()
        out.append(("duplicate id", head + 'secret = "%s"\n' % s + created
                    + '[[key]]\nid = 1\nstate = "verify"\nsecret = "%s"\n' % s + created
                    + "stopped_signing = 2026-01-02T00:00:00Z\n", 0o600))
        return out

    # -- the test --
    def test_no_secret_in_any_output(self):
        now = int(time.time())
        # Keys: a random signing key 0 and a printable verify key 5.
        self.keys("rotate", want=0)
        printable = "".join(self.rng.choice(string.ascii_letters + string.digits)
                            for _ in range(24)).encode()
        self.secrets["key 5 (printable)"] = printable
        self.keys("import", "--id", "5", stdin=printable + b"\n", want=0)
        self.note_key_file()
        self.keys("list", want=0)
        self.keys("list", "--json", want=0)

        out_mx, in_mx = self.upstream(), self.upstream()
        metrics_port = free_port()
        relay = self.relay(
            [{"upstream": out_mx.port, "role": "outbound"},
             {"upstream": in_mx.port, "role": "inbound"}],  # XCLIENT not offered: a debug line
            relay_class=RecordingRelay, keyfile=self.key_path, start=False,
            extra_toml='[logging]\nlevel = "debug"\n[metrics]\nlisten = "%s:%d"\n'
                       % (HOST, metrics_port))
        self.check_config(relay.config_path, 0)
        stdout_path = os.path.join(self.dir, "relay.stdout")
        stdout = open(stdout_path, "wb")
        self.addCleanup(stdout.close)
        relay.start(env=None, stdout=stdout)
        out_port, in_port = relay.port(0), relay.port(1)

        # Outbound signing with key 0; the tag verifies with the CLI.
        self.send_out(out_port)
        tag0 = out_mx.transactions()[-1].sender
        self.assertTrue(tag0.startswith("prvs=0"), tag0)
        self.keys("verify", tag0, want=0)
        self.keys("sign", "homer@example.com", want=0)
        self.keys("sign", tag0, want=3)
        # prvs=KDDDSSSSSS=...: index 14 is the last hex digit of the signature.
        bad = tag0[:14] + ("0" if tag0[14] != "0" else "1") + tag0[15:]
        self.keys("verify", bad, want=1)
        rc, expired, _ = self.keys("sign", "homer@example.com", now=now - 10 * DAY, want=0)
        expired = expired.strip()
        self.keys("verify", expired, want=2)
        unknown = expected_tag("homer@example.com", now, key_id=7, secret=b"whatever")
        self.keys("verify", unknown, want=3)
        self.keys("verify", "prvs=0zzz=homer@example.com", want=4)

        # Inbound verdicts.
        tag5 = expected_tag("marge@example.com", now, key_id=5, secret=printable)
        self.assertEqual(self.bounce(in_port, tag0), 250)
        self.assertEqual(self.bounce(in_port, tag5), 250)
        for r in (bad, unknown, expired, "prvs=0zzz=homer@example.com", "homer@example.com"):
            self.assertEqual(self.bounce(in_port, r, data=False), 550, r)
        codes = self.smtp(in_port, ["EHLO x", "MAIL FROM:<lisa@other.org>", "RCPT TO:<%s>" % bad,
                                    "DATA", "Subject: hi\r\n\r\nautoreply\r\n.", "QUIT"])
        self.assertEqual(codes[3:6], [250, 354, 250])

        # Key-file management errors.
        self.keys("retire", "--id", "5", want=1)     # stopped signing just now: too early
        self.keys("retire", "--id", "0", want=1)     # the signing key
        self.keys("prune", want=0)
        used = base64.b64encode(self.random_secret("import: used id"))
        self.secrets["import: used id (as typed)"] = used
        self.keys("import", "--id", "0", stdin=used + b"\n", want=1)
        rc, _, _ = self.keys("import", "--id", "8", stdin=b"")
        self.assertNotEqual(rc, 0)
        # 65 bytes that do not end in a line feed: import drops one final LF (what `echo` adds),
        # so a random 65th byte of 0x0a would leave 64, a valid secret (1 run in 256 failed so).
        over = self.random_secret("import: oversize", 64) + b"!"
        self.secrets["import: oversize"] = over
        rc, _, _ = self.keys("import", "--id", "8", stdin=over)
        self.assertNotEqual(rc, 0)

        # Rotation: picked up by the watch; then SIGHUP; the old key's tags still verify.
        new_id = int(re.match(r"key (\d)", self.keys("rotate", want=0)[1]).group(1))
        self.note_key_file()
        rec = relay.wait_log(lambda r: r.get("event") == "reload", 10)
        self.assertEqual((rec or {}).get("result"), "ok", rec)
        relay.send_signal(signal.SIGHUP)
        self.assertEqual(len(relay.wait_logs(lambda r: r.get("event") == "reload", 2, 10)), 2)
        self.send_out(out_port)
        self.assertTrue(out_mx.transactions()[-1].sender.startswith("prvs=%d" % new_id))
        self.assertEqual(self.bounce(in_port, tag0), 250)

        # Broken key files: the watching relay, --check-config, batv-keys and a fresh relay.
        with open(self.key_path, "rb") as f:
            good = f.read()
        reloads = len(relay.logs("reload"))
        for label, text, mode in self.broken_key_files() + [("mode 0644", good, 0o644)]:
            with self.subTest(label):
                self.replace_key_file(text.encode() if isinstance(text, str) else text, mode)
                reloads += 1
                got = relay.wait_logs(lambda r: r.get("event") == "reload", reloads, 10)
                self.assertEqual(len(got), reloads, label)
                self.assertEqual(got[-1].get("result"), "failed", got[-1]["_raw"])
                self.check_config(relay.config_path, 78)
                rc, _, _ = self.keys("list")
                self.assertNotEqual(rc, 0, label)
                p = subprocess.run([RELAY, "--config", relay.config_path], capture_output=True,
                                   timeout=30)
                self.output += p.stdout + p.stderr
                self.assertEqual(p.returncode, 78, label)
                # Back to the good file before the next one (its own reload).
                self.replace_key_file(good, 0o600)
                reloads += 1
                got = relay.wait_logs(lambda r: r.get("event") == "reload", reloads, 10)
                self.assertEqual(got[-1].get("result"), "ok", got[-1]["_raw"])
        self.send_out(out_port)

        with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, metrics_port),
                                    timeout=10) as r:
            self.output += r.read()
        self.assertEqual(relay.stop(signal.SIGTERM, 15), 0)
        stdout.close()
        with open(stdout_path, "rb") as f:
            self.output += f.read()
        self.output += relay.raw_stderr
        for mx in (out_mx, in_mx):
            for conn in mx.conns:
                self.output += bytes(conn.raw) + bytes(conn.sent)

        # The search finds what it looks for (so a clean result means something).
        probe = {"probe": os.urandom(32)}
        for form in ("hex", "HEX", "base64", "base64url", "log-escaped"):
            text = b"x " + encodings(probe["probe"])[form][5:25] + b" y"
            self.assertTrue(find_leaks(text, probe, {}), form)
        self.assertTrue(find_leaks(b"k=" + probe["probe"][3:12], probe, {}))
        self.assertGreaterEqual(len(self.secrets), 10)
        self.assertGreater(len(self.output), 10000)
        # The debug log really was on, and the errors really were printed.
        text = bytes(self.output)
        for needle in (b"level=debug", b"event=reload result=failed", b"not valid base64",
                       b"are too open", b"bounce refused: bad signature"):
            self.assertIn(needle, text)
        leaks = find_leaks(text, self.secrets, self.written)
        self.assertFalse(leaks, "secrets in the output:\n" + "\n".join(
            "%s as %s: ...%r..." % x for x in leaks))


class CoreDumpTest(cases.RelayTestCase):
    """The relay keeps its keys out of core dumps (RLIMIT_CORE 0) and is not dumpable
    (PR_SET_DUMPABLE 0: no core, no ptrace or /proc/PID/mem for the same user): a relay started
    with an unlimited core size and killed by SIGABRT leaves no core where a control process
    (sleep, same user, same limit, same directory) leaves one."""

    NOBODY = 65534

    TMP_PREFIX = "batv-core-"
    TMP_MODE = 0o777    # the working directory, where core_pattern "core" writes
    KEY_FILE = None     # written after the probe below

    def setUp(self):
        super().setUp()
        self.uid = None             # run the relay as this uid (None: as we are)
        if os.geteuid() == 0:
            probe = subprocess.run([RELAY, "--version"], capture_output=True,
                                   preexec_fn=self.as_user(self.NOBODY))
            if probe.returncode == 0:
                self.uid = self.NOBODY
        self.key_path = os.path.join(self.dir, "keys.toml")
        harness.KeyFile(KEYS, self.key_path)
        if self.uid is not None:
            os.chown(self.key_path, self.uid, self.uid)

    @staticmethod
    def as_user(uid):
        def pre():
            resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY,) * 2)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
        return pre

    def cores(self):
        return [n for n in os.listdir(self.dir) if n.startswith("core")]

    def test_no_core_dump_and_not_dumpable(self):
        mx = self.upstream()
        relay = self.relay(mx, keyfile=self.key_path, start=False)
        # Control: a process of the same user with the same limit dumps core here (or the
        # kernel's core_pattern sends cores elsewhere and that part cannot be checked).
        ctl = subprocess.Popen(["/bin/sleep", "30"], cwd=self.dir,
                               preexec_fn=self.as_user(self.uid))
        time.sleep(0.2)
        ctl.send_signal(signal.SIGABRT)
        ctl.wait(10)
        control_dumped = bool(self.cores())
        for n in self.cores():
            os.unlink(os.path.join(self.dir, n))

        p = subprocess.Popen([RELAY, "--config", relay.config_path], cwd=self.dir,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, preexec_fn=self.as_user(self.uid))
        self.addCleanup(lambda: p.poll() is None and (p.kill(), p.wait(5)))
        self.addCleanup(p.stderr.close)
        log = b""
        deadline = time.monotonic() + 15
        while b"event=ready" not in log and time.monotonic() < deadline and p.poll() is None:
            if select.select([p.stderr], [], [], 0.5)[0]:
                chunk = os.read(p.stderr.fileno(), 65536)
                if not chunk:
                    break
                log += chunk
        self.assertIn(b"event=ready", log, log)
        self.assertNotIn(b"event=core_dumps", log)
        with open("/proc/%d/limits" % p.pid) as f:
            core = [l.split()[4:6] for l in f if l.startswith("Max core file size")]
        self.assertEqual(core, [["0", "0"]])
        with open("/proc/%d/status" % p.pid) as f:
            uid = int([l for l in f if l.startswith("Uid:")][0].split()[1])
        if uid != 0:
            # A non-dumpable process's private /proc files (fd/, environ, mem) belong to root,
            # not to its own user (the kernel's task_dump_owner()).
            for name in ("fd", "environ", "mem"):
                self.assertEqual(os.stat("/proc/%d/%s" % (p.pid, name)).st_uid, 0, name)
        p.send_signal(signal.SIGABRT)
        self.assertEqual(p.wait(10), -signal.SIGABRT)
        if not control_dumped:
            self.skipTest("no core file from the control process either (core_pattern %r)"
                          % open("/proc/sys/kernel/core_pattern").read().strip())
        self.assertEqual(self.cores(), [])
        if uid == 0:
            self.skipTest("dumpable flag unchecked: the relay ran as root (nobody cannot run %s)"
                          % RELAY)


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
