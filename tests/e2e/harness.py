"""End-to-end harness for batv-relay: real binaries, real sockets, Python 3 stdlib only.

Pieces (each usable on its own; every wait is bounded, every thread and process is stopped by
close()/stop(), so a test that fails half way still cleans up when it registers the cleanups):

  KeyFile(keys_bin, path)      key file with secret "secretkey" under key id 3 (the spec vectors'
                               key), imported with `batv-keys import --id 3 --signing`; rotate(),
                               verify(), break_file().
  Relay(relay_bin, workdir, keyfile, upstream_port, ...)
                               writes a TOML config, runs `batv-relay --config FILE`, waits for
                               `event=listening` per listener and `event=ready`, parses stderr
                               log lines (key=value, "quoted \\" values") on a thread.
                               port(i), logs(event), wait_log(pred, timeout), wait_logs(pred, n),
                               stop(sig, timeout) -> exit code, rss_kib(), close().
  ScriptedUpstream(...)        an SMTP next hop in a thread that records the raw bytes of each
                               connection and the parsed transactions (MAIL line, RCPT lines, raw
                               dot-stuffed DATA bytes, concatenated BDAT chunks), with fault
                               injection per stage: replies / close_at / stall_at / garbage_at /
                               endless_multiline_at / delays.
  SmtpSink(workdir)            Postfix's /usr/sbin/smtp-sink with -d dumps; parse_sink_dump().
  SmtpClient(port)             raw-socket SMTP client: cmd(), send(), read_reply(), wait_closed().
  BoundClient(port, source)    an SmtpClient connecting from a given loopback address.
  smtp_dialogue(port, items)   greeting + one reply per item (optionally pipelined).
  expected_tag(addr, now)      the prvs address the relay must produce (secret "secretkey", K=3,
                               lifetime 7); tag_matches(tagged, addr, t0, t1) for clock windows.
  closed_port()                a 127.0.0.1 port with nobody listening (connection refused).
  rss_kib(pid)                 VmRSS of a process, KiB.
  metrics_text(port)           the text of a relay's /metrics.
  scaled(seconds)              a wait scaled by BATV_TEST_TIMEOUT_FACTOR (see below).
  sanitizer_findings(text)     the lines of `text` that report an ASan/LSan/UBSan/memcheck error.
  run_checked(cmd, ...)        subprocess.run that raises AssertionError on a sanitizer finding.

The unittest base class of the test files (per-test directory, key file, relay, clients) is
cases.RelayTestCase; RelayLogMixin below is what it builds on (and what class-level fixtures use).

Environment (set by tools/test and tests/CMakeLists.txt, not by the test files):
  BATV_TEST_TIMEOUT_FACTOR     multiplies every wait of this harness (default 1): the sanitizer
                               tree sets 3, the valgrind tests 10. Only how long we wait for
                               something scales; what the tests check does not change.
  BATV_RELAY_WRAPPER           a command line the daemon runs under (e.g. "valgrind
                               --error-exitcode=99 ..."): Relay.start() runs WRAPPER batv-relay.

Sanitizer and memcheck findings fail the test: Relay.close() ends the relay with SIGTERM (so it
exits normally and LeakSanitizer / memcheck's leak check run), and raises AssertionError when its
stderr holds a finding, when it died of a signal nobody sent, or when it did not exit in time
(a shutdown hang). KeyFile, Relay.check_config and run_checked check the output of every short
run the same way.

Fault stages of ScriptedUpstream, matched case-insensitively, most specific first:
  "greeting", "EHLO:n" then "EHLO" (n-th EHLO on the connection, 1-based), "HELO", "XCLIENT",
  "MAIL", "RCPT:n" then "RCPT" (n = 1-based within the transaction), "DATA", "mid-DATA:N" (after
  N body bytes of DATA or BDAT; close_at / reset_at / stall_at / deaf_at / early only), "DOT" (the
  final dot, and the LAST BDAT chunk), "BDAT:n" then "BDAT" (n-th chunk), "RSET", "NOOP", "QUIT",
  "STARTTLS".
Fault kinds: close_at (close instead of replying), reset_at (TCP reset: SO_LINGER 0 close),
stall_at (keep reading, never reply), deaf_at (stop reading and never reply: the peer's writes
block), garbage_at (send `garbage`, then stall), endless_multiline_at, delays (reply late),
drip (send the reply one byte at a time), hangup_at (reply, then close), early (send a reply in
the middle of the body, then carry on reading it), and replies (any text: 4xx/5xx, oversize or
mixed-code multi-line replies, or two replies where one was asked for).

TLS in ScriptedUpstream (optional): with tls_cert/tls_key it advertises STARTTLS (until the
session is encrypted), answers STARTTLS with 220 and does the server side handshake with
Python's ssl module; tls_caps are the EHLO extensions after the handshake (default: caps);
tls_handshake_fault="garbage"|"close" answers 220 but then sends non-TLS bytes / closes instead
of handshaking. Per connection: tls_version, tls_cipher, tls_error, tls_sni, before_tls (bytes
pipelined after the STARTTLS line, discarded).
"""
import hashlib
import hmac
import os
import sys
import re
import select
import shlex
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections import namedtuple

HOST = "127.0.0.1"
SECRET = b"secretkey"
KEY_ID = 3
LIFETIME = 7
DAY = 86400
MiB = 1024 * 1024

DEFAULT_CAPS = ("PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                "DSN", "CHUNKING")


# ---------------------------------------------------------------------------------------------
# prvs

def expected_tag(address, now=None, key_id=KEY_ID, secret=SECRET, lifetime=LIFETIME):
    """The tagged address for `address` signed at unix time `now` (default: the current time).

    Per docs/batv-spec.md: DDD = (day + lifetime) mod 1000, HMAC-SHA1 over K DDD local@domain
    with the domain lowercased, first 3 bytes as lowercase hex."""
    if now is None:
        now = time.time()
    local, _, domain = address.rpartition("@")
    addr = local + "@" + domain.lower()
    ddd = "%03d" % ((int(now) // DAY + lifetime) % 1000)
    mac = hmac.new(secret, (str(key_id) + ddd + addr).encode("utf-8"), hashlib.sha1).hexdigest()
    return "prvs=%d%s%s=%s" % (key_id, ddd, mac[:6], addr)


def tag_matches(tagged, address, t0, t1, **kw):
    """True when `tagged` is the tag of `address` for some day between unix times t0 and t1
    (a message sent around midnight UTC may carry either day)."""
    return tagged in {expected_tag(address, t, **kw) for t in (t0, t1)}


# ---------------------------------------------------------------------------------------------
# small utilities

TIMEOUT_FACTOR = float(os.environ.get("BATV_TEST_TIMEOUT_FACTOR") or 1)
if not TIMEOUT_FACTOR >= 1:
    raise SystemExit("BATV_TEST_TIMEOUT_FACTOR must be a number >= 1")


def scaled(seconds):
    """`seconds` times BATV_TEST_TIMEOUT_FACTOR (None stays None)."""
    return None if seconds is None else seconds * TIMEOUT_FACTOR


# What ASan, LSan, UBSan and Valgrind's memcheck write when they find something.
# (A leak check that could not run, e.g. "LeakSanitizer has encountered a fatal error", counts too.)
_SANITIZER_LINE = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:"
                             r"|ERROR: UndefinedBehaviorSanitizer|Sanitizer has encountered a fatal"
                             r"|Sanitizer CHECK failed|==\d+== ERROR SUMMARY: [1-9]")


# Where such a report starts (memcheck writes its errors before the summary that counts them).
_REPORT_START = re.compile(_SANITIZER_LINE.pattern + r"|^==\d+== (Invalid|Conditional|Use of "
                           r"uninit|Syscall param|Mismatched|Source and destination|Argument|"
                           r"HEAP SUMMARY)")


def sanitizer_findings(text):
    """The lines of `text` (str or bytes) that report a sanitizer or memcheck error."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if _SANITIZER_LINE.search(line)]


def check_no_findings(what, text):
    """Raise AssertionError naming `what` when `text` reports a sanitizer/memcheck error."""
    found = sanitizer_findings(text)
    if found:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        raise AssertionError("%s: sanitizer/memcheck finding:\n%s\n--- full output ---\n%s"
                             % (what, "\n".join(found), text))


def run_checked(cmd, **kw):
    """subprocess.run(cmd, capture_output=True, **kw) whose stderr must hold no sanitizer
    finding (AssertionError otherwise)."""
    p = subprocess.run(cmd, capture_output=True, **kw)
    check_no_findings(" ".join(str(c) for c in cmd), p.stderr)
    return p


def free_port():
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def closed_port():
    """A port nobody listens on: connecting to it is refused."""
    return free_port()


def metrics_text(port, timeout=10.0, host=HOST):
    """The body of GET http://host:port/metrics (a relay's [metrics] listener)."""
    import urllib.request
    with urllib.request.urlopen("http://%s:%d/metrics" % (host, port), timeout=timeout) as f:
        return f.read().decode()


def rss_kib(pid, field="VmRSS"):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/%d/status" % (field, pid))


def wait_until(predicate, timeout, interval=0.02):
    """Poll predicate() until it returns a true value or `timeout` seconds pass; returns the
    last value."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        v = predicate()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


def wait_port(port, timeout=10.0, host=HOST):
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + scaled(timeout)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def dot_stuff(text_lines):
    """Wire form of a list of body lines (bytes, without CRLF): dots doubled, CRLF added."""
    out = bytearray()
    for line in text_lines:
        if line.startswith(b"."):
            out += b"."
        out += line + b"\r\n"
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# log parsing

_LOG_TOKEN = re.compile(r'\s*([A-Za-z0-9_.\-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_log_line(line):
    """Parse `ts=... level=info event=x key=value key="a \\"quoted\\" value"` into a dict.

    Quoted values have \\" and \\\\ unescaped (other escapes are kept as written). The raw line
    is kept under "_raw"; text that is not key=value (e.g. a plain error message) yields a dict
    with only "_raw"."""
    rec = {"_raw": line}
    pos = 0
    n = len(line)
    while pos < n:
        m = _LOG_TOKEN.match(line, pos)
        if not m:
            if rec.keys() == {"_raw"}:
                return rec
            # Skip an unparseable word and go on.
            nxt = line.find(" ", pos + 1)
            if nxt < 0:
                break
            pos = nxt
            continue
        key, val = m.group(1), m.group(2)
        if val.startswith('"') and val.endswith('"') and len(val) >= 2:
            val = re.sub(r'\\(["\\])', r"\1", val[1:-1])
        rec[key] = val
        pos = m.end()
    return rec


# ---------------------------------------------------------------------------------------------
# key file

class KeyFile:
    """A batv-keys key file holding secret "secretkey" as signing key 3 (mode 0600)."""

    def __init__(self, keys_bin, path, key_id=KEY_ID, secret=SECRET):
        self.bin = keys_bin
        self.path = path
        rc, out, err = self.run("import", "--id", str(key_id), "--signing", stdin=secret + b"\n")
        if rc != 0:
            raise RuntimeError("batv-keys import failed (%d): %s" % (rc, err))
        os.chmod(self.path, 0o600)

    def run(self, *args, stdin=None, now=None):
        cmd = [self.bin, "--keys", self.path]
        if now is not None:
            cmd += ["--now", str(now)]
        p = run_checked(cmd + list(args), input=stdin, timeout=scaled(30))
        return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")

    def rotate(self):
        """`batv-keys rotate`; returns the id of the new signing key."""
        rc, out, err = self.run("rotate")
        if rc != 0:
            raise RuntimeError("batv-keys rotate failed (%d): %s" % (rc, err))
        m = re.match(r"key (\d) ", out)
        if not m:
            raise RuntimeError("unexpected rotate output: %r" % out)
        return int(m.group(1))

    def verify(self, address):
        """(exit code, first word of the verdict) from `batv-keys verify`."""
        rc, out, _ = self.run("verify", address)
        return rc, (out.split() or [""])[0]

    def break_file(self):
        """Overwrite the key file with something that is not a key file (mode kept 0600)."""
        with open(self.path, "w") as f:
            f.write("this is [not a key file\n")
        os.chmod(self.path, 0o600)


# ---------------------------------------------------------------------------------------------
# TOML writing (only what the relay config needs)

def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError("cannot write %r as TOML" % (v,))


def _toml_key(k):
    """A bare key when TOML allows one, else a quoted key ("example.org")."""
    if re.fullmatch(r"[A-Za-z0-9_\-]+", k):
        return k
    return _toml_value(k)


def _toml_table(name, items):
    lines = ["[%s]" % name]
    for k, v in items.items():
        lines.append("%s = %s" % (_toml_key(k), _toml_value(v)))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# relay process

# Listener keys of the TLS contract (issue 5), written to the TOML only when a listener dict has them.
LISTENER_TLS_KEYS = ("tls_cert", "tls_key", "require_tls", "implicit_tls", "tls_min_version",
                     "tls_ciphers", "upstream_tls", "upstream_ca", "upstream_tls_name",
                     "allow_authenticated", "plaintext_auth_loopback", "accept_proxy_from")

TEST_TIMEOUTS = {"idle": 10, "command": 10, "data": 30, "upstream_connect": 3, "upstream_reply": 3,
                 "upstream_data_reply": 5, "shutdown_grace": 2}


# Listener roles without a next hop (they answer an MTA in place): written without `upstream`.
NOHOP_ROLES = ("milter", "policy", "socketmap")


class Relay:
    """A running `batv-relay --config FILE` with parsed stderr logs.

    listeners: list of dicts {"upstream": port, "role": "outbound", "allow_clients": [...],
    "forward_client": "xclient"|"proxy-v1"|"proxy-v2"|"none", and the TLS keys of
    LISTENER_TLS_KEYS: "tls_cert", "tls_key", "require_tls", "implicit_tls", "tls_min_version",
    "tls_ciphers", "upstream_tls", "upstream_ca", "upstream_tls_name"} (keys other than upstream
    optional; forward_client and the TLS keys are written only when given); default one outbound
    listener on
    127.0.0.1:0 towards `upstream_port`. A listener of a role in NOHOP_ROLES has no upstream:
    its keys are written as given ({"role": "policy", "listen": "unix:/path", "socket_mode":
    "0660"}); port(i) of a unix listener is its "unix:/path".
    timeouts / limits / signing / smtp: dicts merged over the defaults written to the file
    (TEST_TIMEOUTS for timeouts, hostname "relay.test" for smtp).
    verify_domains: domains.verify (left out of the file when None: the relay defaults it to
    sign); inbound: the [inbound] table (mode, exempt_local_parts, accept_untagged_from,
    mailer_daemon_is_bounce, bad_signature); domain_mode: the [inbound.domain_mode] table
    {"example.org": "monitor"}. Each is written only when given."""

    def __init__(self, relay_bin, workdir, keyfile, upstream_port=None, listeners=None,
                 timeouts=None, limits=None, signing=None, smtp=None, sign_domains=("example.com",),
                 lifetime_days=LIFETIME, threads=2, extra_toml="", config_name="relay.toml",
                 start=True, ready_timeout=10, verify_domains=None, inbound=None,
                 domain_mode=None):
        self.bin = relay_bin
        self.workdir = workdir
        self.keyfile = keyfile if isinstance(keyfile, str) else keyfile.path
        if listeners is None:
            listeners = [{"upstream": upstream_port}]
        self.listeners = listeners
        self.timeouts = dict(TEST_TIMEOUTS, **(timeouts or {}))
        self.limits = dict(limits or {})
        self.signing = dict(signing or {})
        self.smtp = dict({"hostname": "relay.test"}, **(smtp or {}))
        self.hostname = self.smtp.get("hostname")
        self.sign_domains = list(sign_domains)
        self.verify_domains = None if verify_domains is None else list(verify_domains)
        self.inbound = dict(inbound or {})
        self.domain_mode = None if domain_mode is None else dict(domain_mode)
        self.lifetime_days = lifetime_days
        self.threads = threads
        self.extra_toml = extra_toml
        self.config_path = os.path.join(workdir, config_name)
        self.proc = None
        self.stopped = False            # set by stop(), close() and send_signal(SIGTERM/SIGINT):
                                        # an exit the test asked for
        self._sent = set()              # signals the harness sent to end the process
        self._checked = False           # close() has checked the exit once
        self._records = []
        self._cond = threading.Condition()
        self._reader = None
        self._ports = []
        self.write_config()
        if start:
            self.start(ready_timeout)

    # -- config --
    def config_text(self):
        out = ["key_file = %s" % _toml_value(self.keyfile),
               "lifetime_days = %d" % self.lifetime_days,
               "threads = %d" % self.threads, ""]
        domains = {"sign": self.sign_domains}
        if self.verify_domains is not None:
            domains["verify"] = self.verify_domains
        out.append(_toml_table("domains", domains))
        for li in self.listeners:
            if li.get("role") in NOHOP_ROLES:
                # No next hop: every key given is written as it is (listen defaults to TCP).
                t = {"role": li["role"], "listen": li.get("listen", HOST + ":0")}
                t.update({k: v for k, v in li.items() if k not in ("role", "listen")})
                out.append("[[listener]]\n" + _toml_table("x", t).split("\n", 1)[1])
                continue
            up = li["upstream"]
            if isinstance(up, int):
                up = "%s:%d" % (HOST, up)
            t = {"role": li.get("role", "outbound"), "listen": li.get("listen", HOST + ":0"),
                 "upstream": up}
            if "allow_clients" in li:
                t["allow_clients"] = li["allow_clients"]
            if "forward_client" in li:
                t["forward_client"] = li["forward_client"]
            if "upstream_connect" in li:
                t["upstream_connect"] = li["upstream_connect"]
            for k in LISTENER_TLS_KEYS:
                if k in li:
                    t[k] = li[k]
            out.append("[[listener]]\n" + _toml_table("x", t).split("\n", 1)[1])
        for name, table in (("signing", self.signing), ("limits", self.limits),
                            ("timeouts", self.timeouts), ("smtp", self.smtp)):
            if table:
                out.append(_toml_table(name, table))
        if self.inbound:
            out.append(_toml_table("inbound", self.inbound))
        if self.domain_mode is not None:
            out.append(_toml_table("inbound.domain_mode", self.domain_mode))
        if "[process]" not in self.extra_toml:
            # The tests run as root (CI) and need the relay to stay able to reread root's key file.
            out.append("[process]\nrun_as_root = true\n")
        out.append(self.extra_toml)
        return "\n".join(out)

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    def check_config(self):
        """`batv-relay --check-config` on the written file: (exit code, stdout+stderr)."""
        p = run_checked([self.bin, "--check-config", self.config_path], timeout=scaled(30))
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    # -- process --
    def start(self, ready_timeout=10, env=None, stdout=subprocess.DEVNULL):
        """Run the relay; `stdout` is where its standard output goes (default: nowhere)."""
        ready_timeout = scaled(ready_timeout)
        wrapper = shlex.split(os.environ.get("BATV_RELAY_WRAPPER", ""))
        self.proc = subprocess.Popen(wrapper + [self.bin, "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=stdout,
                                     stderr=subprocess.PIPE,
                                     env=dict(os.environ, **env) if env else None)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        n = len(self.listeners)

        def ready():
            if self.proc.poll() is not None:
                return True
            listening = self.logs("listening")
            return len(listening) >= n and self.logs("ready")

        with self._cond:
            self._cond.wait_for(ready, timeout=ready_timeout)
        if self.proc.poll() is not None:
            self._reader.join(2)
            raise RuntimeError("batv-relay exited with %s before it was ready; stderr:\n%s"
                               % (self.proc.returncode, self.stderr_text()))
        listening = self.logs("listening")
        if len(listening) < n or not self.logs("ready"):
            text = self.stderr_text()
            self.close()
            raise RuntimeError("batv-relay not ready within %ss (want %d event=listening and "
                               "event=ready); stderr:\n%s" % (ready_timeout, n, text))
        by_index = {}
        for i, rec in enumerate(listening):
            idx = int(rec.get("listener", i))
            addr = rec.get("address", "")
            # A unix listener has no port: its entry is the socket path ("unix:/path").
            by_index[idx] = addr if addr.startswith("unix:") else int(addr.rsplit(":", 1)[1])
        self._ports = [by_index[k] for k in sorted(by_index)]
        self.wait_probes()

    def probing_listeners(self):
        """Indexes of the listeners that connect at MAIL (upstream_connect = "mail", the inbound
        default): the relay probes their next hop's EHLO in the background after start-up and
        every reload (event=upstream_probe)."""
        return [i for i, li in enumerate(self.listeners)
                if li.get("role") == "inbound" and li.get("upstream_connect", "mail") == "mail"]

    def wait_probes(self, after=0, timeout=20.0):
        """Wait for one event=upstream_probe (ok or failed) per probing listener among the log
        records from index `after` on (0: since start; len(logs()) before a reload: that
        reload's probes), so that EHLO offers what the probe learned. Returns those records."""
        want = set(self.probing_listeners())
        if not want:
            return []  # nothing probes: nothing to wait for

        def done():
            got = [x for x in self._records[after:] if x.get("event") == "upstream_probe"]
            return {int(x.get("listener", -1)) for x in got} >= want and got

        with self._cond:
            self._cond.wait_for(lambda: self.proc.poll() is not None or done(),
                                timeout=scaled(timeout))
        got = done()
        if want and not got:
            raise RuntimeError("no event=upstream_probe for listeners %s within %ss"
                               % (sorted(want), timeout))
        return got or []

    def _read_stderr(self):
        for raw in iter(self.proc.stderr.readline, b""):
            if not self._keep_stderr_line(raw):
                continue
            rec = parse_log_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            rec["_t"] = time.monotonic()
            with self._cond:
                self._records.append(rec)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _keep_stderr_line(self, raw):
        """Every raw stderr line (bytes) passes here first, on the reader thread; False: it is
        not kept as a log record. Subclasses count or copy lines here."""
        return True

    @property
    def pid(self):
        return self.proc.pid

    def port(self, listener_index=0):
        return self._ports[listener_index]

    def logs(self, event=None):
        with self._cond:
            return [r for r in self._records if event is None or r.get("event") == event]

    def stderr_text(self):
        with self._cond:
            return "\n".join(r["_raw"] for r in self._records)

    def wait_log(self, predicate, timeout=5.0):
        """The first log record for which predicate(record) is true, waiting up to `timeout`
        seconds; None when there is none by then. `predicate` may be an event name."""
        if isinstance(predicate, str):
            name = predicate
            predicate = lambda r: r.get("event") == name  # noqa: E731

        def find():
            for r in self._records:
                if predicate(r):
                    return r
            return None

        with self._cond:
            return self._cond.wait_for(find, timeout=scaled(timeout))

    def wait_logs(self, predicate, count, timeout=5.0):
        """All records matching predicate once there are at least `count` (or whatever there
        is after `timeout`)."""
        def find():
            got = [r for r in self._records if predicate(r)]
            return got if len(got) >= count else None

        with self._cond:
            got = self._cond.wait_for(find, timeout=scaled(timeout))
            return got if got is not None else [r for r in self._records if predicate(r)]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.stopped = True         # the test asked for the exit (see RelayLogMixin)
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Send `sig`, wait up to `timeout` for the exit; return the exit code (negative = died
        of a signal) or None when it had to be killed."""
        if self.proc is None:
            return None
        self.stopped = True
        if self.proc.poll() is None:
            self._sent.add(sig)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self._kill()
                return None
        self._reader.join(scaled(2))
        return self.proc.returncode

    def _kill(self):
        self._sent.add(signal.SIGKILL)
        self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if self._reader is not None:
            self._reader.join(2)

    def rss_kib(self, field="VmRSS"):
        return rss_kib(self.proc.pid, field)

    def close(self):
        """End the process if it still runs and check how it ended (always safe to call).

        A running relay gets SIGTERM, so that it shuts down and exits normally: LeakSanitizer
        and memcheck's leak check only run at a normal exit. Raises AssertionError (once) when
        stderr holds a sanitizer/memcheck finding, when the process died of a signal the
        harness did not send (abort, segfault), when it exited non-zero after the SIGTERM, or
        when it did not exit within shutdown_grace + 15 s of it (a shutdown hang; then it is
        killed)."""
        if self.proc is None:
            return
        problems = []
        if self.proc.poll() is None:
            self.stopped = True
            self._sent.add(signal.SIGTERM)
            self.proc.send_signal(signal.SIGTERM)
            limit = scaled(int(self.timeouts.get("shutdown_grace", 2)) + 15)
            try:
                if self.proc.wait(limit) != 0:
                    problems.append("exit status %s after SIGTERM" % self.proc.returncode)
            except subprocess.TimeoutExpired:
                self._kill()
                problems.append("no exit within %gs of SIGTERM (killed)" % limit)
        if self._reader is not None:
            self._reader.join(scaled(5))
        if self.proc.stderr:
            self.proc.stderr.close()
        rc = self.proc.returncode
        if not problems and rc is not None and rc < 0 and -rc not in self._sent:
            problems.append("died of signal %d" % -rc)
        if self._checked:
            return
        self._checked = True
        text = self.stderr_text()
        found = sanitizer_findings(text)
        if found:
            problems.append("sanitizer/memcheck finding:\n" + "\n".join(found))
        if problems:
            lines = text.splitlines()
            first = next((i for i, x in enumerate(lines) if _REPORT_START.search(x)), None)
            # The whole report from its first line (bounded), else the log tail.
            shown = lines[max(0, first - 5):first + 150] if first is not None else lines[-30:]
            shown = [x if len(x) <= 400 else x[:400] + "..." for x in shown]
            raise AssertionError("batv-relay (%s): %s\n--- stderr ---\n%s"
                                 % (self.config_path, "; ".join(problems), "\n".join(shown)))


# ---------------------------------------------------------------------------------------------
# scripted upstream

class Command:
    """One command line received by ScriptedUpstream."""
    __slots__ = ("line", "stage", "read_index", "t_recv", "t_reply", "reply")

    def __init__(self, line, stage, read_index, t_recv):
        self.line, self.stage, self.read_index, self.t_recv = line, stage, read_index, t_recv
        self.t_reply = None
        self.reply = None

    def __repr__(self):
        return "Command(%r, reply=%r)" % (self.line, self.reply)


class Transaction:
    """One MAIL transaction at ScriptedUpstream.

    mail: the MAIL line as received (str, no CRLF); rcpts: RCPT lines; data: raw DATA bytes
    between the 354 and the terminating ".\\r\\n" line (dot-stuffed as on the wire; up to
    store_limit bytes); bdat: concatenated BDAT chunks (up to store_limit); size / sha256: over
    all body bytes (DATA or BDAT); completed: the final dot or BDAT LAST arrived; final_reply:
    what we answered to it (None when we did not answer); reset: ended by RSET."""

    _seq = iter(range(1 << 62))  # creation order across connections (the relay reuses them)

    def __init__(self, mail):
        self.seq = next(Transaction._seq)
        self.mail = mail
        self.mail_reply = None
        self.rcpts = []
        self.rcpt_replies = []
        self.data_command = False
        self.data = bytearray()
        self.bdat = bytearray()
        self.chunks = []
        self.size = 0
        self._sha = hashlib.sha256()
        self.truncated = False
        self.completed = False
        self.final_reply = None
        self.reset = False
        self.early = None               # the reply sent in the middle of the body (fault "early")

    @property
    def sha256(self):
        return self._sha.hexdigest()

    @property
    def accepted(self):
        return self.completed and bool(self.final_reply) and self.final_reply[:1] == "2"

    @property
    def sender(self):
        m = re.match(r"(?i)MAIL FROM:<(.*?)>", self.mail)
        return m.group(1) if m else None

    @property
    def params(self):
        """The MAIL line after the closing '>' (leading space included)."""
        m = re.match(r"(?i)MAIL FROM:<.*?>(.*)$", self.mail)
        return m.group(1) if m else None

    def __repr__(self):
        return ("Transaction(mail=%r, rcpts=%r, size=%d, completed=%r, final=%r)"
                % (self.mail, self.rcpts, self.size, self.completed, self.final_reply))


class UpstreamConnection:
    """What ScriptedUpstream saw on one connection."""

    def __init__(self, index, sock, peer, raw_limit):
        self.index = index
        self.sock = sock
        self.peer = peer
        self.raw = bytearray()          # everything received, up to raw_limit bytes
        self.raw_total = 0
        self.raw_limit = raw_limit
        self.reads = []                 # (t, nbytes) per recv()
        self.sent = bytearray()         # everything we sent (capped at raw_limit too)
        self.commands = []              # Command objects in arrival order
        self.transactions = []
        self.ehlo = None
        self.tls_version = None         # e.g. "TLSv1.3" once the STARTTLS handshake succeeded
        self.tls_cipher = None
        self.tls_error = None           # why the handshake failed
        self.tls_sni = None             # server name the peer sent in its ClientHello
        self.before_tls = b""           # bytes pipelined after STARTTLS (discarded)
        self.xclient = None             # attributes of the last XCLIENT command
        self.offered = None             # EHLO keywords of the last EHLO reply (set() after HELO)
        self.nested_mail = 0            # MAIL commands refused because a transaction was open
        self.fault = None               # the fault that fired, e.g. ("close_at", "MAIL")
        self.peer_closed = False
        self.closed = threading.Event()

    def lines(self):
        return [c.line for c in self.commands]

    def find(self, verb):
        """Commands whose verb (first word, case-insensitive) is `verb`."""
        return [c for c in self.commands if c.line.split(" ", 1)[0].upper() == verb.upper()]


class _Closed(Exception):
    pass


class ScriptedUpstream:
    """An SMTP server in a background thread on 127.0.0.1:<port> that records what it gets.

    caps: EHLO extensions (default DEFAULT_CAPS); replies: {stage: "code text"} overrides;
    close_at / stall_at / garbage_at / endless_multiline_at: a stage name (see the module
    docstring) or a list of them; garbage: the bytes garbage_at sends; delays: {stage: seconds}
    before replying (the socket keeps being read meanwhile); fault_conns: connection indexes
    (0-based, in accept order) the faults apply to, None = all; store_limit / raw_limit: bytes
    kept of each message body / raw transcript (sizes and hashes always cover everything).
    reset_at / deaf_at / hangup_at: stage names as for close_at (see the module docstring);
    drip: {stage: seconds between the bytes of the reply}; early: {"mid-DATA:N": reply text}.
    An EHLO extension "XCLIENT ..." in caps makes it accept XCLIENT (default reply 220 and a new
    session, as Postfix; the attributes are kept in conn.xclient).
    tls_cert / tls_key: PEM files; when given, STARTTLS is offered (see the module docstring);
    tls_caps: extensions after STARTTLS (default caps); tls_handshake_fault: None | "garbage" |
    "close"."""

    GREETING = "220 upstream.test ESMTP scripted"
    MAX_LINE = 65536
    STALL_MAX = 60.0        # a stalled connection is dropped after this many seconds anyway
    DEAF_MAX = 15.0         # a deaf connection (not reading) is dropped after this long
    CONN_MAX = 300.0        # no connection lives longer than this
    ENDLESS_CAP = 100000    # lines sent by endless_multiline_at

    def __init__(self, caps=DEFAULT_CAPS, replies=None, close_at=None, stall_at=None,
                 garbage_at=None, garbage=b"HELLO\r\n", endless_multiline_at=None, delays=None,
                 fault_conns=None, store_limit=16 * MiB, raw_limit=16 * MiB, greeting=None,
                 tls_cert=None, tls_key=None, tls_caps=None, tls_handshake_fault=None,
                 reset_at=None, deaf_at=None, hangup_at=None, drip=None, early=None):
        self.caps = list(caps)
        self.tls_caps = list(caps if tls_caps is None else tls_caps)
        self.tls_handshake_fault = tls_handshake_fault
        self._tls_ctx = None
        if tls_cert:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert, tls_key)

            def sni(sslsock, name, _ctx):
                sslsock.batv_sni = name
            ctx.sni_callback = sni
            self._tls_ctx = ctx
        self.greeting = greeting or self.GREETING
        self.store_limit = store_limit
        self.raw_limit = raw_limit
        self.set_faults(replies, close_at, stall_at, garbage_at, garbage, endless_multiline_at,
                        delays, fault_conns, reset_at, deaf_at, hangup_at, drip, early)
        self.conns = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self._lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((HOST, 0))
        self._lsock.listen(64)
        self._lsock.settimeout(0.1)
        self.port = self._lsock.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    # -- configuration --
    def set_faults(self, replies=None, close_at=None, stall_at=None, garbage_at=None,
                   garbage=b"HELLO\r\n", endless_multiline_at=None, delays=None, fault_conns=None,
                   reset_at=None, deaf_at=None, hangup_at=None, drip=None, early=None):
        """Replace every fault setting (affects commands handled from now on)."""
        norm = lambda x: {s.upper() for s in ([x] if isinstance(x, str) else (x or []))}  # noqa
        self.replies = {k.upper(): v for k, v in (replies or {}).items()}
        self.close_at = norm(close_at)
        self.stall_at = norm(stall_at)
        self.garbage_at = norm(garbage_at)
        self.garbage = garbage
        self.endless_at = norm(endless_multiline_at)
        self.delays = {k.upper(): v for k, v in (delays or {}).items()}
        self.reset_at = norm(reset_at)
        self.deaf_at = norm(deaf_at)
        self.hangup_at = norm(hangup_at)
        self.drip = {k.upper(): v for k, v in (drip or {}).items()}
        self.early = {k.upper(): v for k, v in (early or {}).items()}
        if isinstance(fault_conns, int):
            fault_conns = {fault_conns}
        self.fault_conns = fault_conns

    def clear_faults(self):
        self.set_faults()

    # -- results --
    def connections(self):
        with self._lock:
            return list(self.conns)

    def transactions(self):
        """Every transaction, in the order they began (one connection may serve several
        client sessions: the relay keeps idle next-hop connections, timeouts.upstream_idle)."""
        return sorted((t for c in self.connections() for t in c.transactions), key=lambda t: t.seq)

    def accepted(self):
        return [t for t in self.transactions() if t.accepted]

    def wait_transactions(self, n, timeout=5.0, accepted=True):
        """Wait until at least n (accepted, by default) transactions exist; return them all."""
        get = self.accepted if accepted else self.transactions
        wait_until(lambda: len(get()) >= n, timeout)
        return get()

    def wait_connections(self, n, timeout=5.0):
        wait_until(lambda: len(self.connections()) >= n, timeout)
        return self.connections()

    # -- server --
    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                sock, peer = self._lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self._lock:
                conn = UpstreamConnection(len(self.conns), sock, peer, self.raw_limit)
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def close(self):
        self._stop.set()
        try:
            self._lsock.close()
        except OSError:
            pass
        self._acceptor.join(5)
        for c in self.connections():
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)

    # -- one connection --
    def _faulty(self, conn):
        return self.fault_conns is None or conn.index in self.fault_conns

    def _lookup(self, conn, table, keys):
        if not self._faulty(conn):
            return None
        for k in keys:
            if k in table:
                return k
        return None

    def _serve(self, conn):
        conn.sock.setblocking(False)
        conn.deadline = time.monotonic() + self.CONN_MAX
        conn.buf = bytearray()
        conn.tx = None
        conn.rcpt_n = 0
        conn.bdat_n = 0
        conn.ehlo_n = 0
        try:
            self._answer(conn, None, ["GREETING"], self.greeting)
            while True:
                line = self._read_line(conn)
                if line is None:
                    return
                if not self._command(conn, line):
                    return
        except _Closed:
            pass
        except OSError:
            pass
        finally:
            try:
                conn.sock.close()
            except OSError:
                pass
            conn.closed.set()

    def _recv(self, conn, timeout):
        """Wait up to timeout for data; append to conn.buf. Raises _Closed on EOF/stop."""
        if self._stop.is_set() or time.monotonic() > conn.deadline:
            raise _Closed()
        pending = conn.sock.pending() if isinstance(conn.sock, ssl.SSLSocket) else 0
        if not pending:
            r, _, _ = select.select([conn.sock], [], [], min(timeout, 0.1))
            if not r:
                return 0
        try:
            data = conn.sock.recv(262144)
        except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return 0
        except OSError:
            conn.peer_closed = True
            raise _Closed()
        if not data:
            conn.peer_closed = True
            raise _Closed()
        now = time.monotonic()
        conn.reads.append((now, len(data)))
        conn.raw_total += len(data)
        room = conn.raw_limit - len(conn.raw)
        if room > 0:
            conn.raw += data[:room]
        conn.buf += data
        return len(data)

    def _read_line(self, conn):
        while True:
            i = conn.buf.find(b"\n")
            if i >= 0:
                raw = bytes(conn.buf[:i + 1])
                del conn.buf[:i + 1]
                conn.line_read_index = len(conn.reads) - 1
                conn.line_t = conn.reads[-1][0] if conn.reads else time.monotonic()
                return raw.rstrip(b"\r\n").decode("utf-8", errors="surrogateescape")
            if len(conn.buf) > self.MAX_LINE:
                raw = bytes(conn.buf)
                conn.buf.clear()
                conn.line_read_index = len(conn.reads) - 1
                conn.line_t = time.monotonic()
                return raw.decode("utf-8", errors="surrogateescape")
            self._recv(conn, 0.1)

    def _send(self, conn, data, timeout=5.0):
        """Send all of data; raises _Closed when the peer is gone or stops reading."""
        view = memoryview(data)
        deadline = time.monotonic() + scaled(timeout)
        while view:
            if self._stop.is_set() or time.monotonic() > deadline:
                raise _Closed()
            _, w, _ = select.select([], [conn.sock], [], 0.1)
            if not w:
                continue
            try:
                n = conn.sock.send(view)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                continue
            except OSError:
                conn.peer_closed = True
                raise _Closed()
            if len(conn.sent) < conn.raw_limit:
                conn.sent += view[:n]
            view = view[n:]

    def _reply(self, conn, text, cmd=None):
        data = text.encode("utf-8", errors="surrogateescape")
        if not data.endswith(b"\n"):
            data += b"\r\n"
        self._send(conn, data)
        if cmd is not None:
            cmd.t_reply = time.monotonic()
            cmd.reply = text

    def _pause(self, conn, seconds):
        """Wait `seconds` while still reading what the peer sends."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self._recv(conn, left)

    def _stage_faults(self, conn, keys, cmd=None):
        """Apply close/stall/garbage/endless faults for the first matching stage key.
        Returns True when the connection must end (the fault took over)."""
        k = self._lookup(conn, self.close_at, keys)
        if k:
            conn.fault = ("close_at", k)
            return True
        k = self._lookup(conn, self.reset_at, keys)
        if k:
            conn.fault = ("reset_at", k)
            self._reset(conn)
            return True
        k = self._lookup(conn, self.deaf_at, keys)
        if k:
            conn.fault = ("deaf_at", k)
            self._deaf(conn)
            return True
        k = self._lookup(conn, self.stall_at, keys)
        if k:
            conn.fault = ("stall_at", k)
            try:
                self._pause(conn, self.STALL_MAX)
            except _Closed:
                pass
            return True
        k = self._lookup(conn, self.garbage_at, keys)
        if k:
            conn.fault = ("garbage_at", k)
            self._send(conn, self.garbage)
            try:
                self._pause(conn, self.STALL_MAX)
            except _Closed:
                pass
            return True
        k = self._lookup(conn, self.endless_at, keys)
        if k:
            conn.fault = ("endless_multiline_at", k)
            block = b"250-x\r\n" * 1000
            try:
                for _ in range(self.ENDLESS_CAP // 1000):
                    self._send(conn, block, timeout=5.0)
            except _Closed:
                pass
            return True
        return False

    @staticmethod
    def _reset(conn):
        """Make the close that follows a TCP reset (RST) instead of a FIN."""
        try:
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def _deaf(self, conn):
        """Stop reading (the peer's writes fill the socket buffers and block) and never reply;
        the connection is dropped after DEAF_MAX or at close()."""
        end = time.monotonic() + self.DEAF_MAX
        while not self._stop.is_set() and time.monotonic() < end:
            time.sleep(0.05)

    def _answer(self, conn, cmd, keys, default):
        """Delay, fault or reply for one command. Returns the reply text, or None when a fault
        ended the connection."""
        k = self._lookup(conn, self.delays, keys)
        if k:
            self._pause(conn, self.delays[k])
        if self._stage_faults(conn, keys, cmd):
            raise _Closed()
        k = self._lookup(conn, self.replies, keys)
        text = self.replies[k] if k else default
        hangup = self._lookup(conn, self.hangup_at, keys)
        k = self._lookup(conn, self.drip, keys)
        if k:
            conn.fault = ("drip", k)
            data = text.encode("utf-8", errors="surrogateescape")
            if not data.endswith(b"\n"):
                data += b"\r\n"
            for i in range(len(data)):
                self._send(conn, data[i:i + 1])
                self._pause(conn, self.drip[k])
            if cmd is not None:
                cmd.t_reply = time.monotonic()
                cmd.reply = text
        else:
            self._reply(conn, text, cmd)
        if hangup:
            conn.fault = ("hangup_at", hangup)
            raise _Closed()
        return text

    def _command(self, conn, line):
        verb = line.split(" ", 1)[0].upper()
        cmd = Command(line, verb, getattr(conn, "line_read_index", -1),
                      getattr(conn, "line_t", time.monotonic()))
        conn.commands.append(cmd)
        if verb in ("EHLO", "HELO"):
            conn.ehlo = line
            conn.ehlo_n += 1
            default = "250 upstream.test"
            if verb == "EHLO":
                if conn.tls_version:
                    names = ["upstream.test"] + self.tls_caps
                else:
                    names = ["upstream.test"] + self.caps
                    if self._tls_ctx is not None:
                        names.append("STARTTLS")
                default = "\r\n".join(("250 " if i == len(names) - 1 else "250-") + n
                                        for i, n in enumerate(names))
            r = self._answer(conn, cmd, ["EHLO:%d" % conn.ehlo_n, verb] if verb == "EHLO" else [verb],
                             default)
            # What this session offers now, from the reply as sent (scripted ones included).
            conn.offered = {x[4:].split(" ")[0].upper() for x in r.split("\r\n")[1:] if x[4:]}
            conn.tx = None
        elif verb == "MAIL" and conn.tx is not None and not conn.tx.completed \
                and (conn.tx.mail_reply or "").startswith("2"):
            # As Postfix: a transaction is open until the end of data or RSET (RFC 5321 4.1.4).
            conn.nested_mail += 1
            self._reply(conn, "503 5.5.1 Error: nested MAIL command", cmd)
        elif verb == "MAIL":
            conn.tx = Transaction(line)
            conn.transactions.append(conn.tx)
            conn.rcpt_n = 0
            conn.bdat_n = 0
            conn.tx.mail_reply = self._answer(conn, cmd, ["MAIL"], "250 2.1.0 Ok")
        elif verb == "RCPT":
            conn.rcpt_n += 1
            tx = conn.tx
            if tx is None or not (tx.mail_reply or "").startswith("2"):
                default = "503 5.5.1 Error: need MAIL command"
            else:
                default = "250 2.1.5 Ok"
            if tx is not None:
                tx.rcpts.append(line)
            r = self._answer(conn, cmd, ["RCPT:%d" % conn.rcpt_n, "RCPT"], default)
            if tx is not None:
                tx.rcpt_replies.append(r)
        elif verb == "DATA":
            tx = conn.tx
            ok = tx is not None and any(r.startswith("2") for r in tx.rcpt_replies)
            default = "354 End data with <CR><LF>.<CR><LF>" if ok else \
                "503 5.5.1 Error: need RCPT command"
            r = self._answer(conn, cmd, ["DATA"], default)
            if r.startswith("354"):
                if tx is None:
                    tx = conn.tx = Transaction("")
                    conn.transactions.append(tx)
                tx.data_command = True
                self._read_data(conn, tx)
                tx.completed = True
                dcmd = Command(".", "DOT", len(conn.reads) - 1, time.monotonic())
                conn.commands.append(dcmd)
                try:
                    self._answer(conn, dcmd, ["DOT"], "250 2.0.0 Ok: queued as %d" % id(tx))
                finally:        # what was sent, also when the connection ends right after
                    tx.final_reply = dcmd.reply
                conn.tx = None
        elif verb == "BDAT":
            self._bdat(conn, cmd, line)
        elif verb == "RSET":
            if conn.tx is not None and not conn.tx.completed:
                conn.tx.reset = True
            conn.tx = None
            self._answer(conn, cmd, ["RSET"], "250 2.0.0 Ok")
        elif verb == "NOOP":
            self._answer(conn, cmd, ["NOOP"], "250 2.0.0 Ok")
        elif verb == "QUIT":
            self._answer(conn, cmd, ["QUIT"], "221 2.0.0 Bye")
            return False
        elif verb == "XCLIENT" and any(c.upper().split()[0] == "XCLIENT" for c in self.caps):
            conn.xclient = line[8:]
            r = self._answer(conn, cmd, ["XCLIENT"], self.greeting)
            if r.startswith("2"):       # XCLIENT_README: a new session, EHLO again
                conn.tx = None
                conn.ehlo = None
        elif verb == "STARTTLS" and self._tls_ctx is not None:
            if conn.tls_version:
                self._reply(conn, "503 5.5.1 Error: TLS already active", cmd)
            elif line.strip().upper() != "STARTTLS":
                self._reply(conn, "501 5.5.4 Syntax: STARTTLS", cmd)
            else:
                r = self._answer(conn, cmd, ["STARTTLS"], "220 2.0.0 Ready to start TLS")
                if r.startswith("220"):
                    self._start_tls(conn)
        else:
            self._reply(conn, "502 5.5.2 Error: command not recognized", cmd)
        return True

    HANDSHAKE_TIMEOUT = 10.0

    def _start_tls(self, conn):
        """Server side TLS handshake after our 220 to STARTTLS; the SMTP state is reset."""
        conn.before_tls = bytes(conn.buf)
        conn.buf.clear()
        if self.tls_handshake_fault == "garbage":
            conn.fault = ("tls_handshake_fault", "garbage")
            self._send(conn, b"this is not TLS\r\n" * 4)
            raise _Closed()
        if self.tls_handshake_fault == "close":
            conn.fault = ("tls_handshake_fault", "close")
            raise _Closed()
        raw = conn.sock
        tls = self._tls_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        conn.sock = tls
        deadline = time.monotonic() + self.HANDSHAKE_TIMEOUT
        while True:
            if self._stop.is_set() or time.monotonic() > deadline:
                conn.tls_error = "handshake timeout"
                raise _Closed()
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                select.select([tls], [], [], 0.1)
            except ssl.SSLWantWriteError:
                select.select([], [tls], [], 0.1)
            except (ssl.SSLError, OSError) as e:
                conn.tls_error = "%s: %s" % (type(e).__name__, e)
                raise _Closed()
        conn.tls_version = tls.version()
        conn.tls_cipher = (tls.cipher() or (None,))[0]
        conn.tls_sni = getattr(tls, "batv_sni", None)
        conn.tx = None
        conn.ehlo = None

    def _store(self, tx, buf, chunk):
        tx.size += len(chunk)
        tx._sha.update(chunk)
        room = self.store_limit - len(buf)
        if room > 0:
            buf += chunk[:room]
        if len(chunk) > max(room, 0):
            tx.truncated = True

    def _mid_data_fault(self, conn, tx, pending=0):
        """close_at / reset_at / stall_at / deaf_at / early "mid-DATA:N" once N body bytes
        arrived (`pending` of them still in the buffer)."""
        if not self._faulty(conn):
            return
        got = tx.size + pending
        for k, text in self.early.items():
            if k.startswith("MID-DATA:") and got >= int(k.split(":", 1)[1]) and not tx.early:
                tx.early = text
                conn.fault = ("early", k)
                self._reply(conn, text)
        for table, name in ((self.close_at, "close_at"), (self.reset_at, "reset_at"),
                            (self.stall_at, "stall_at"), (self.deaf_at, "deaf_at")):
            for k in table:
                if k.startswith("MID-DATA:") and got >= int(k.split(":", 1)[1]):
                    conn.fault = (name, k)
                    if name == "reset_at":
                        self._reset(conn)
                    elif name == "deaf_at":
                        self._deaf(conn)
                    elif name == "stall_at":
                        try:
                            self._pause(conn, self.STALL_MAX)
                        except _Closed:
                            pass
                    raise _Closed()

    def _read_data(self, conn, tx):
        """Consume the DATA body up to the ".\\r\\n" line; store the raw bytes before it."""
        at_start = True
        while True:
            buf = conn.buf
            self._mid_data_fault(conn, tx, len(buf))
            if at_start:
                if buf.startswith(b".\r\n"):
                    del buf[:3]
                    return
                if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                    self._recv(conn, 0.1)
                    continue
            i = buf.find(b"\r\n.\r\n")
            if i >= 0:
                self._store(tx, tx.data, bytes(buf[:i + 2]))
                del buf[:i + 5]
                return
            keep = 4
            if len(buf) > keep:
                n = len(buf) - keep
                self._store(tx, tx.data, bytes(buf[:n]))
                del buf[:n]
                at_start = False
            self._recv(conn, 0.1)

    def _bdat(self, conn, cmd, line):
        m = re.match(r"(?i)BDAT +(\d+)( +LAST)? *$", line)
        tx = conn.tx
        if not m:
            self._reply(conn, "501 5.5.4 Syntax: BDAT size [LAST]", cmd)
            return
        n, last = int(m.group(1)), bool(m.group(2))
        chunking = conn.offered is None or "CHUNKING" in conn.offered
        ok = chunking and tx is not None and any(r.startswith("2") for r in tx.rcpt_replies)
        # Read the chunk (always, to stay in sync).
        got = 0
        while got < n:
            if not conn.buf:
                self._recv(conn, 0.1)
                continue
            take = bytes(conn.buf[:n - got])
            del conn.buf[:len(take)]
            got += len(take)
            if ok:
                self._store(tx, tx.bdat, take)
                self._mid_data_fault(conn, tx)
        if not chunking:    # not offered on this session (e.g. not after XCLIENT): unknown
            self._reply(conn, "502 5.5.1 Error: command not implemented", cmd)
            return
        if not ok:
            self._reply(conn, "503 5.5.1 Error: need RCPT command", cmd)
            return
        conn.bdat_n += 1
        tx.chunks.append(n)
        keys = ["BDAT:%d" % conn.bdat_n, "BDAT"]
        if last:
            tx.completed = True
            keys = ["DOT"] + keys
            try:
                self._answer(conn, cmd, keys, "250 2.0.0 Ok: queued as %d" % id(tx))
            finally:
                tx.final_reply = cmd.reply
            conn.tx = None
        else:
            self._answer(conn, cmd, keys, "250 2.0.0 Ok: %d octets" % n)


# ---------------------------------------------------------------------------------------------
# Postfix smtp-sink

SinkMessage = namedtuple("SinkMessage", "path client proto helo mail_args rcpt_args sender "
                                        "recipients message")

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"


def parse_sink_dump(data, path=None):
    """Parse one smtp-sink -d dump file (bytes).

    Format (smtp-sink(1) DUMP FILE FORMAT): X-Client-Addr, X-Client-Proto, optional X-Helo-Args,
    X-Mail-Args (once), X-Rcpt-Args (one per RCPT), then a three-line Received: header, then the
    message as received (lines LF-terminated), then one empty line. Returns a SinkMessage whose
    sender/recipients are the addresses inside <> of the MAIL/RCPT args and whose message is the
    bytes after the Received header, without the final empty line (LF line ends; smtp-sink
    writes the lines as they came, so dot-stuffing is NOT undone: "..x" stays "..x")."""
    lines = data.split(b"\n")
    fields = {"X-Client-Addr": None, "X-Client-Proto": None, "X-Helo-Args": None,
              "X-Mail-Args": None}
    rcpts = []
    i = 0
    while i < len(lines):
        line = lines[i].decode("utf-8", errors="surrogateescape")
        name, sep, value = line.partition(": ")
        if line.startswith("Received: "):
            i += 1
            # Continuation lines of the Received header start with a tab.
            while i < len(lines) and lines[i].startswith(b"\t"):
                i += 1
            break
        if not sep or not name.startswith("X-"):
            raise ValueError("not an smtp-sink dump header: %r" % line)
        if name == "X-Rcpt-Args":
            rcpts.append(value)
        else:
            fields[name] = value
        i += 1
    else:
        raise ValueError("smtp-sink dump without a Received: header")
    body = b"\n".join(lines[i:])
    if body.endswith(b"\n\n"):
        body = body[:-1]
    elif body == b"\n":
        body = b""

    def addr(args):
        if args is None:
            return None
        m = re.match(r"<(.*?)>", args)
        return m.group(1) if m else args.split(" ", 1)[0]

    return SinkMessage(path, fields["X-Client-Addr"], fields["X-Client-Proto"],
                       fields["X-Helo-Args"], fields["X-Mail-Args"], rcpts,
                       addr(fields["X-Mail-Args"]), [addr(r) for r in rcpts], body)


class SmtpSink:
    """Postfix smtp-sink on 127.0.0.1:<free port>, dumping each message to a file of its own
    (in a private /tmp directory; workdir holds smtp-sink's output, sink.out). messages() parses
    the dumps; close() stops the process and removes the dump directory."""

    def __init__(self, workdir, extra_args=(), start_timeout=10.0):
        # As root smtp-sink must drop to "nobody", which then needs to reach the dump
        # directory: a directory of its own under /tmp (removed by close()), since the
        # caller's temporary directory is usually mode 0700.
        self.dir = tempfile.mkdtemp(prefix="batv-e2e-sink-")
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            os.chmod(self.dir, 0o777)
            cmd += ["-u", "nobody"]
        self.port = free_port()
        self.log_path = os.path.join(workdir, "sink.out")
        self._log = open(self.log_path, "wb")
        cmd += ["-c", "-d", os.path.join(self.dir, "%M."), *extra_args, "%s:%d" % (HOST, self.port),
                "100"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        if not wait_port(self.port, start_timeout) or self.proc.poll() is not None:
            self.close()
            raise RuntimeError("smtp-sink did not start on port %d" % self.port)

    def files(self):
        return sorted(os.path.join(self.dir, n) for n in os.listdir(self.dir))

    def messages(self):
        out = []
        for p in self.files():
            with open(p, "rb") as f:
                out.append(parse_sink_dump(f.read(), p))
        return out

    def wait_messages(self, n, timeout=10.0):
        """Parsed dumps once there are n complete ones (or whatever exists at the timeout)."""
        def complete():
            try:
                msgs = self.messages()
            except ValueError:
                return None      # a dump still being written
            return msgs if len(msgs) >= n else None
        got = wait_until(complete, timeout, 0.05)
        return got if got is not None else self.messages()

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# SMTP client side

class MalformedReply(ValueError):
    """A reply line that is not `ddd`, `ddd text` or `ddd-text`; args[0] is the line."""


Reply = namedtuple("Reply", "code text")
Reply.__doc__ = "One SMTP reply: code (int) and text (lines after the code, joined by '\\n')."


class SmtpClient:
    """A raw-socket SMTP client that reads replies strictly (code, '-' continuation)."""

    def __init__(self, port, timeout=10.0, host=HOST, source=None):
        self.timeout = scaled(timeout)
        self.sock = socket.create_connection((host, port), timeout=self.timeout,
                                             source_address=None if source is None else (source, 0))
        self.buf = bytearray()

    @property
    def local_port(self):
        return self.sock.getsockname()[1]

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def cmd(self, line, timeout=None):
        """Send one command line (CRLF added) and return its reply."""
        self.send(line.encode("utf-8") + b"\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply(timeout)

    def _read_line(self, deadline):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout("no complete reply line within the timeout")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed by the peer (pending %r)" % bytes(self.buf))
            self.buf += data

    def read_reply(self, timeout=None):
        """One (possibly multi-line) reply. Raises EOFError when the peer closed first and
        socket.timeout when it does not come within `timeout` (default: the client timeout)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else scaled(timeout))
        texts = []
        while True:
            raw = self._read_line(deadline)
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise MalformedReply(line)
            texts.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), "\n".join(texts))

    def read_replies(self, n, timeout=None):
        return [self.read_reply(timeout) for _ in range(n)]

    def wait_closed(self, timeout=5.0):
        """True when the peer closes within `timeout` (data arriving meanwhile is discarded
        into self.buf)."""
        deadline = time.monotonic() + scaled(timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.buf += data

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BoundClient(SmtpClient):
    """SmtpClient whose socket is bound to the loopback address `source` (e.g. 127.0.0.2) before
    it connects, so that the relay (and a next hop told by XCLIENT/PROXY) sees that client."""

    def __init__(self, port, source, timeout=10.0, host=HOST):
        super().__init__(port, timeout, host, source=source)


def smtp_dialogue(port, items, pipelined=False, timeout=10.0, greeting=True, host=HOST):
    """Connect, read the greeting (when `greeting`), then for every item send it and read one
    reply. A str item gets CRLF appended; a bytes item is sent as is; None sends nothing and
    only reads a reply. With pipelined=True all items are sent in one write, then the replies
    are read. Returns the list of Reply (code, text), greeting first; it stops early (shorter
    list) when the relay closes the connection or a reply times out, and after a malformed
    reply line, which it returns as Reply(0, line)."""
    def wire(item):
        if item is None:
            return b""
        return item.encode("utf-8") + b"\r\n" if isinstance(item, str) else item

    out = []
    with SmtpClient(port, timeout, host) as c:
        try:
            if greeting:
                out.append(c.read_reply())
            if pipelined:
                c.send(b"".join(wire(i) for i in items))
                for _ in items:
                    out.append(c.read_reply())
            else:
                for item in items:
                    if item is not None:
                        c.send(wire(item))
                    out.append(c.read_reply())
        except MalformedReply as e:
            out.append(Reply(0, e.args[0]))
        except (EOFError, socket.timeout, ConnectionError):
            pass
    return out


def tmpdir(prefix="batv-e2e-"):
    return tempfile.TemporaryDirectory(prefix=prefix)


class RelayLogMixin:
    """For unittest.TestCase subclasses: a relay that died by itself fails the test, and a failed
    test prints the relay's log tail (all of it with BATV_E2E_LOGS=1). Register both with
    watch_relay(relay) right after creating the Relay."""

    def watch_relay(self, relay):
        self.addCleanup(self._show_logs, relay)   # runs after close (cleanups are LIFO)
        self.addCleanup(relay.close)
        self.addCleanup(self._check_alive, relay)  # runs before close

    def _check_alive(self, relay):
        """A relay that died by itself (crash, abort, sanitizer) fails the test."""
        if relay.proc is not None and relay.proc.poll() is not None and not relay.stopped:
            relay.close()
            raise AssertionError("batv-relay died during the test (exit status %s); log tail:\n%s"
                                 % (relay.proc.returncode,
                                    "\n".join(relay.stderr_text().splitlines()[-15:])))

    def _failed(self):
        """In a cleanup: True when this test failed. (Cleanups run inside unittest's own
        bookkeeping, where _outcome.success reads True; the result object already lists this
        test when it failed.)"""
        result = getattr(getattr(self, "_outcome", None), "result", None)
        return result is not None and any(
            t is self for t, _ in getattr(result, "failures", []) + getattr(result, "errors", []))

    def _show_logs(self, relay):
        if self._failed() or os.environ.get("BATV_E2E_LOGS"):
            lines = relay.stderr_text().splitlines()
            if not os.environ.get("BATV_E2E_LOGS"):
                lines = [x if len(x) <= 300 else x[:300] + "..." for x in lines[-80:]]
            sys.stderr.write("\n--- batv-relay log, %s ---\n%s\n--- end ---\n"
                             % (self.id(), "\n".join(lines)))


# The binaries under test, set by run_tests() (cases.RelayTestCase uses them).
RELAY_BIN = KEYS_BIN = None


def run_tests(module_globals):
    """The shared main() of the e2e files: `--relay PATH --keys PATH` set the module's RELAY and
    KEYS (absolute paths); every other argument goes to unittest."""
    import argparse
    import unittest
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True)
    ap.add_argument("--keys", required=True)
    args, rest = ap.parse_known_args()
    global RELAY_BIN, KEYS_BIN
    RELAY_BIN = module_globals["RELAY"] = os.path.abspath(args.relay)
    KEYS_BIN = module_globals["KEYS"] = os.path.abspath(args.keys)
    unittest.main(module=module_globals["__name__"], argv=[sys.argv[0]] + rest, verbosity=2)
