"""A private Postfix instance for end-to-end tests (Python 3 stdlib only).

PostfixInstance(workdir=None, xclient_hosts="", proxy_protocol=None, relay_port=None, ...)
starts a Postfix of its own on 127.0.0.1:<free port>: its own config directory (main.cf,
master.cf), queue directory, data directory and log file, all under a fresh directory (never
the system instance in /etc/postfix; the system binaries in /usr/sbin and /usr/lib/postfix/sbin
are used as they are). Needs root (Postfix's master drops to the "postfix" user by itself).

    pf = PostfixInstance(xclient_hosts="127.0.0.1")          # or proxy_protocol="haproxy"
    try:
        ... SMTP to 127.0.0.1:pf.port ...
        pf.wait_for(lambda: pf.clients(), timeout=10)
    finally:
        pf.stop()

Mail that Postfix accepts (from mynetworks = 127.0.0.0/8, to any domain) goes to the discard
transport (logged "status=sent (...)"), or with relay_port=N to [127.0.0.1]:N (e.g. a
harness.ScriptedUpstream, which then sees the Received: header Postfix added). Postfix logs
(maillog_file, through its own postlogd) go to <dir>/log/maillog:

  log_lines()                    all lines so far
  wait_log(regex, timeout)       the first re.Match over the log lines (None after timeout)
  connects()                     [Connect(name, addr, port)] of smtpd "connect from NAME[ADDR]:PORT"
  disconnects()                  [Disconnect(name, addr, port, counts)], counts e.g.
                                 "ehlo=2 xclient=0/1 mail=1 rcpt=1 data=1 quit=1 commands=6/7"
                                 (smtpd 3.7 counts even an accepted XCLIENT as 0/1)
  clients()                      [Client(queue_id, name, addr, port)] of smtpd
                                 "QUEUEID: client=NAME[ADDR]:PORT" (port None without
                                 client_port_logging)
  header_warnings()              [HeaderWarning(queue_id, header, name, addr, port, sender, rcpt,
                                 proto, helo)] from the header_checks WARN rule on every Subject:
                                 header (where Postfix logs the HELO of an accepted message)
  delivered()                    [(queue_id, to, relay, status)] of delivery agent status= lines
  wait_delivered(n, timeout)     the first n "status=sent" deliveries (or what there is)
  wait_for(predicate, timeout)   harness.wait_until
  postconf(name)                 a parameter's effective value (postconf -c DIR -h)
  sendmail(args, message)        Postfix's sendmail -C DIR (needs pickup=True): exit code, output
  postmap_query(key, table)      postmap -c DIR -q KEY TABLE: (exit code, stdout, stderr)
  flush()                        postqueue -c DIR -f: deliver what is deferred now (needs pickup)
  stop(timeout)                  postfix stop, bounded wait, then SIGKILL of any leftover
                                 process of the instance; always safe to call (also close()).
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import namedtuple

try:
    from harness import HOST, free_port, wait_until
except ImportError:                                   # pragma: no cover - used stand-alone
    import sys
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from harness import HOST, free_port, wait_until

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTMAP = "/usr/sbin/postmap"
POSTQUEUE = "/usr/sbin/postqueue"
SENDMAIL = "/usr/sbin/sendmail"
DAEMON_DIR = "/usr/lib/postfix/sbin"

Client = namedtuple("Client", "queue_id name addr port")
Connect = namedtuple("Connect", "name addr port")
Disconnect = namedtuple("Disconnect", "name addr port counts")
HeaderWarning = namedtuple("HeaderWarning", "queue_id header name addr port sender rcpt proto helo")
Delivery = namedtuple("Delivery", "queue_id to relay status")

# Lines in maillog_file look like
#   "Mar  3 10:00:00 mx postfix-e2e/smtpd[123]: connect from unknown[127.0.0.2]"
# (the time stamp format varies with the Postfix version; only the part after "]: " is parsed).
_PROG = r"\S+/(?P<prog>[a-z\-]+)\[\d+\]: "
_NAMADDR = r"(?P<name>[^\[\s]*)\[(?P<addr>[^\]]*)\](?::(?P<port>\d+))?"
_CONNECT = re.compile(_PROG + r"connect from " + _NAMADDR)
_CLIENT = re.compile(_PROG + r"(?P<qid>[0-9A-Za-z]+): client=" + _NAMADDR)
_WARN = re.compile(_PROG + r"(?P<qid>[0-9A-Za-z]+): warning: header (?P<header>.*?) from "
                   + _NAMADDR + r"; from=<(?P<sender>[^>]*)> "
                   r"to=<(?P<rcpt>[^>]*)>(?: proto=(?P<proto>\S+))?(?: helo=<(?P<helo>[^>]*)>)?")
_DISCONNECT = re.compile(_PROG + r"disconnect from " + _NAMADDR + r" (?P<counts>.*)")
_DELIVERY = re.compile(_PROG + r"(?P<qid>[0-9A-Za-z]+): to=<(?P<to>[^>]*)>,.*? relay=(?P<relay>[^,]*),"
                       r".*? status=(?P<status>\S+)")


class PostfixError(RuntimeError):
    pass


class PostfixInstance:
    """A private Postfix (see the module docstring). Attributes: port, dir, config_dir,
    queue_dir, data_dir, log_path, master_pid."""

    def __init__(self, workdir=None, xclient_hosts="", proxy_protocol=None, relay_port=None,
                 port=None, myhostname="mx.test", smtpd_options=None, main_cf_extra=None,
                 client_port_logging=True, command_filter=None, master_cf_extra=None,
                 pickup=False, files=None, start=True, start_timeout=30.0):
        """workdir: the instance goes in a fresh directory created inside it (default: the
        system temporary directory); it is made traversable for the postfix user and removed
        by stop(). xclient_hosts: smtpd_authorized_xclient_hosts (str or list; "" = nobody).
        proxy_protocol: None or "haproxy" (smtpd_upstream_proxy_protocol on the smtpd
        service). relay_port: deliver accepted mail to [127.0.0.1]:relay_port instead of
        discarding it. smtpd_options: extra "-o name=value" for the smtpd service (dict).
        main_cf_extra: extra main.cf parameters (dict), written last. client_port_logging:
        smtpd_client_port_logging (log lines show NAME[ADDR]:PORT). command_filter: lines of a
        regexp table for smtpd_command_filter (e.g. ["/^XCLIENT / XCLIENT ADDR=bogus"]), to
        make Postfix see a different command than the one sent. master_cf_extra: rows
        appended to master.cf as given (str or list of str; continuation lines "  -o ..."
        included). pickup: add the pickup service, so that mail submitted with sendmail
        (sendmail()) is delivered. files: {name: text} written into the config directory
        (e.g. texthash: tables, which need no postmap)."""
        if os.geteuid() != 0:
            raise PostfixError("a private Postfix instance needs root")
        self.port = port or free_port()
        self.myhostname = myhostname
        self.xclient_hosts = xclient_hosts if isinstance(xclient_hosts, str) \
            else ", ".join(xclient_hosts)
        self.proxy_protocol = proxy_protocol
        self.relay_port = relay_port
        self.smtpd_options = dict(smtpd_options or {})
        self.main_cf_extra = dict(main_cf_extra or {})
        self.client_port_logging = client_port_logging
        self.command_filter = list(command_filter or [])
        self.master_cf_extra = [master_cf_extra] if isinstance(master_cf_extra, str) \
            else list(master_cf_extra or [])
        self.pickup = pickup
        self.files = dict(files or {})
        self.dir = tempfile.mkdtemp(prefix="batv-e2e-postfix-", dir=workdir)
        # Postfix daemons run as user postfix: every directory above the queue must be
        # searchable, and nothing may be group/world writable.
        os.chmod(self.dir, 0o755)
        self._open_parents()
        self.config_dir = os.path.join(self.dir, "etc")
        self.queue_dir = os.path.join(self.dir, "spool")
        self.data_dir = os.path.join(self.dir, "lib")
        self.log_dir = os.path.join(self.dir, "log")
        self.log_path = os.path.join(self.log_dir, "maillog")
        for d in (self.config_dir, self.queue_dir, self.data_dir, self.log_dir):
            os.mkdir(d, 0o755)
        shutil.chown(self.data_dir, "postfix", "postfix")   # master.lock, verify/postscreen caches
        self.master_pid = None
        self._started = False
        self.write_config()
        if start:
            self.start(start_timeout)

    def _open_parents(self):
        """Make sure the postfix user can reach self.dir (e.g. a 0700 test temp directory)."""
        path = os.path.dirname(self.dir)
        self._chmodded = []
        while path not in ("/", ""):
            st = os.stat(path)
            if st.st_mode & 0o001 == 0:
                os.chmod(path, st.st_mode | 0o011)
                self._chmodded.append((path, st.st_mode & 0o7777))
            path = os.path.dirname(path)

    # -- configuration --
    def main_cf(self):
        p = {
            "compatibility_level": "3.6",
            "config_directory": self.config_dir,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "command_directory": "/usr/sbin",
            "daemon_directory": DAEMON_DIR,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "postfix-e2e",
            "maillog_file": self.log_path,
            "maillog_file_prefixes": self.log_dir,
            "myhostname": self.myhostname,
            "mydomain": "test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "",
            "smtpd_authorized_xclient_hosts": self.xclient_hosts,
            "smtpd_banner": "$myhostname ESMTP e2e",
            # No DNS in tests: names come from /etc/hosts or are "unknown".
            "smtpd_peername_lookup": "no",
            "smtp_host_lookup": "native",
            "smtp_dns_support_level": "disabled",
            "smtputf8_enable": "yes",
            # The HELO of an accepted message shows up only in such log lines.
            "header_checks": "regexp:" + os.path.join(self.config_dir, "header_checks"),
            "smtpd_log_access_permit_actions": "static:all",
            "smtpd_client_port_logging": "yes" if self.client_port_logging else "no",
            # Quick, bounded queue behaviour; no bounces to anybody.
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "maximal_queue_lifetime": "1m",
            "bounce_queue_lifetime": "0",
            "delay_warning_time": "0",
            "notify_classes": "",
            "soft_bounce": "no",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "anvil_rate_time_unit": "60s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "200",
            "smtpd_timeout": "30s",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            "default_destination_concurrency_limit": "5",
            "in_flow_delay": "0",
            "daemon_timeout": "120s",
            "ipc_idle": "5s",
            "max_idle": "10s",
        }
        if self.relay_port is not None:
            p["relayhost"] = "[%s]:%d" % (HOST, self.relay_port)
            p["default_transport"] = "smtp"
        else:
            p["default_transport"] = "discard:e2e"
            p["relayhost"] = ""
        if self.command_filter:
            p["smtpd_command_filter"] = "regexp:" + os.path.join(self.config_dir,
                                                                 "command_filter")
        p.update(self.main_cf_extra)
        return "".join("%s = %s\n" % kv for kv in p.items())

    def master_cf(self):
        svc = "%s:%d inet  n  -  n  -  -  smtpd" % (HOST, self.port)
        opts = dict(self.smtpd_options)
        if self.proxy_protocol:
            opts.setdefault("smtpd_upstream_proxy_protocol", self.proxy_protocol)
        for k, v in opts.items():
            svc += "\n  -o %s=%s" % (k, v)
        rows = [
            svc,
            "cleanup   unix  n  -  n  -    0  cleanup",
            "qmgr      unix  n  -  n  300  1  qmgr",
            "rewrite   unix  -  -  n  -    -  trivial-rewrite",
            "tlsmgr    unix  -  -  n  1000? 1  tlsmgr",
            "bounce    unix  -  -  n  -    0  bounce",
            "defer     unix  -  -  n  -    0  bounce",
            "trace     unix  -  -  n  -    0  bounce",
            "verify    unix  -  -  n  -    1  verify",
            "flush     unix  n  -  n  1000? 0 flush",
            "proxymap  unix  -  -  n  -    -  proxymap",
            "smtp      unix  -  -  n  -    -  smtp",
            "relay     unix  -  -  n  -    -  smtp",
            "error     unix  -  -  n  -    -  error",
            "retry     unix  -  -  n  -    -  error",
            "discard   unix  -  -  n  -    -  discard",
            "showq     unix  n  -  n  -    -  showq",
            "anvil     unix  -  -  n  -    1  anvil",
            "scache    unix  -  -  n  -    1  scache",
            "postlog   unix-dgram n - n -  1  postlogd",
        ]
        if self.pickup:
            rows.append("pickup    unix  n  -  n  60   1  pickup")
        rows += self.master_cf_extra
        return "\n".join(rows) + "\n"

    def write_config(self):
        files = {"main.cf": self.main_cf(), "master.cf": self.master_cf(),
                 "header_checks": "/^Subject:/ WARN\n"}
        if self.command_filter:
            files["command_filter"] = "".join(x + "\n" for x in self.command_filter)
        files.update(self.files)
        for name, text in files.items():
            path = os.path.join(self.config_dir, name)
            with open(path, "w") as f:
                f.write(text)
            os.chmod(path, 0o644)

    def _run(self, *args, timeout=30.0, check=False):
        env = dict(os.environ, MAIL_CONFIG=self.config_dir)
        p = subprocess.run([POSTFIX, "-c", self.config_dir, *args], capture_output=True,
                           timeout=timeout, env=env, stdin=subprocess.DEVNULL)
        out = (p.stdout + p.stderr).decode(errors="replace")
        if check and p.returncode != 0:
            raise PostfixError("postfix %s failed (%d): %s\n%s"
                               % (" ".join(args), p.returncode, out, self.log_text()[-3000:]))
        return p.returncode, out

    def postconf(self, name):
        p = subprocess.run([POSTCONF, "-c", self.config_dir, "-h", name], capture_output=True,
                           timeout=30)
        return p.stdout.decode(errors="replace").strip()

    def _env(self):
        return dict(os.environ, MAIL_CONFIG=self.config_dir)

    def sendmail(self, args, message, timeout=30.0):
        """Submit `message` (bytes) with Postfix's sendmail -C CONFIG_DIR ARGS... (through
        postdrop into the maildrop queue; the pickup service, pickup=True, takes it from
        there): (exit code, stdout+stderr)."""
        p = subprocess.run([SENDMAIL, "-C", self.config_dir] + list(args), input=message,
                           capture_output=True, timeout=timeout, env=self._env())
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    def postmap_query(self, key, table, timeout=30.0):
        """`postmap -c CONFIG_DIR -q KEY TABLE`: (exit code, stdout, stderr); exit 1 = not
        found, 0 = found (stdout is the value)."""
        p = subprocess.run([POSTMAP, "-c", self.config_dir, "-q", key, table],
                           capture_output=True, timeout=timeout, env=self._env(),
                           stdin=subprocess.DEVNULL)
        return (p.returncode, p.stdout.decode(errors="replace"),
                p.stderr.decode(errors="replace"))

    def flush(self, timeout=30.0):
        """`postqueue -c CONFIG_DIR -f`: attempt every deferred message now (postqueue also
        wakes the pickup service: the instance needs pickup=True or its own pickup row)."""
        p = subprocess.run([POSTQUEUE, "-c", self.config_dir, "-f"], capture_output=True,
                           timeout=timeout, env=self._env(), stdin=subprocess.DEVNULL)
        return p.returncode, (p.stdout + p.stderr).decode(errors="replace")

    def check(self):
        """`postfix -c DIR check` (creates missing queue directories): (exit code, output)."""
        return self._run("check")

    # -- process --
    def _pid_file(self):
        return os.path.join(self.queue_dir, "pid", "master.pid")

    def _read_master_pid(self):
        try:
            with open(self._pid_file()) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def start(self, timeout=30.0):
        """`postfix start` (master -w waits for the master's initialisation), then wait for
        the smtpd port. Raises PostfixError with the log on failure (after cleaning up)."""
        self._started = True
        try:
            rc, out = self._run("start", timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise PostfixError("postfix start did not finish within %ss" % timeout)
        self.master_pid = self._read_master_pid()
        if rc != 0 or not wait_until(lambda: _listening(self.port), 10):
            text = self.log_text()[-4000:]
            self.stop()
            raise PostfixError("postfix start failed (%d): %s\nlog:\n%s" % (rc, out, text))

    def running(self):
        return self.master_pid is not None and _alive(self.master_pid)

    def _instance_pids(self):
        """Processes of this instance: the master's process group (master calls setsid) plus
        anything whose environment names our config directory."""
        pids = set()
        want = ("MAIL_CONFIG=" + self.config_dir).encode()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if not _alive(pid):
                continue
            try:
                if self.master_pid and os.getpgid(pid) == self.master_pid:
                    pids.add(pid)
                    continue
                with open("/proc/%d/environ" % pid, "rb") as f:
                    if want in f.read().split(b"\0"):
                        pids.add(pid)
            except (OSError, ProcessLookupError):
                continue
        pids.discard(os.getpid())
        return pids

    def stop(self, timeout=15.0):
        """Stop the instance (postfix stop, bounded), kill leftovers, remove the directory.
        Safe to call more than once, and after a failed start."""
        if self._started:
            self._started = False
            if self.master_pid is None:
                self.master_pid = self._read_master_pid()
            try:
                self._run("stop", timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            if self.master_pid:
                wait_until(lambda: not _alive(self.master_pid), timeout)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                left = self._instance_pids()
                if not left:
                    break
                for pid in left:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
                wait_until(lambda: not any(_alive(p) for p in left), 3)
        self._keep_log()
        shutil.rmtree(self.dir, ignore_errors=True)
        for path, mode in reversed(getattr(self, "_chmodded", [])):
            try:
                os.chmod(path, mode)
            except OSError:
                pass
        self._chmodded = []

    close = stop

    def _keep_log(self):
        """The log survives stop() in memory (log_text() still works afterwards)."""
        try:
            with open(self.log_path, "r", errors="replace") as f:
                self._saved_log = f.read()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- logs --
    def log_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except OSError:
            return getattr(self, "_saved_log", "")

    def log_lines(self):
        return self.log_text().splitlines()

    def wait_log(self, regex, timeout=10.0):
        rx = re.compile(regex) if isinstance(regex, str) else regex

        def find():
            for line in self.log_lines():
                m = rx.search(line)
                if m:
                    return m
            return None
        return wait_until(find, timeout, 0.05)

    def wait_for(self, predicate, timeout=10.0):
        return wait_until(predicate, timeout, 0.05)

    def _matches(self, rx):
        out = []
        for line in self.log_lines():
            m = rx.search(line)
            if m:
                out.append(m)
        return out

    @staticmethod
    def _port(m):
        return int(m["port"]) if m["port"] else None

    def connects(self):
        return [Connect(m["name"], m["addr"], self._port(m)) for m in self._matches(_CONNECT)
                if m["prog"] == "smtpd"]

    def disconnects(self):
        return [Disconnect(m["name"], m["addr"], self._port(m), m["counts"])
                for m in self._matches(_DISCONNECT) if m["prog"] == "smtpd"]

    def clients(self):
        return [Client(m["qid"], m["name"], m["addr"], self._port(m))
                for m in self._matches(_CLIENT) if m["prog"] == "smtpd"]

    def header_warnings(self):
        return [HeaderWarning(m["qid"], m["header"], m["name"], m["addr"], self._port(m),
                              m["sender"], m["rcpt"], m["proto"], m["helo"])
                for m in self._matches(_WARN)]

    def delivered(self):
        return [Delivery(m["qid"], m["to"], m["relay"], m["status"])
                for m in self._matches(_DELIVERY)]

    def wait_delivered(self, n=1, timeout=15.0):
        def got():
            d = [x for x in self.delivered() if x.status == "sent"]
            return d if len(d) >= n else None
        r = wait_until(got, timeout, 0.05)
        return r if r is not None else [x for x in self.delivered() if x.status == "sent"]


def _listening(port, host=HOST):
    """True when /proc/net/tcp shows a LISTEN socket on host:port (no probe connection, which
    would show up in the Postfix log)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
