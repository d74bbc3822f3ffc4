#!/usr/bin/env python3
"""The Debian package, installed for real: build, lint, install, run, upgrade, remove, purge.

Usage: test_package.py --build-dir BUILD --source SRC     (as root; exit 77 = skipped)

Runs as root (CI: a fresh Debian 12) and leaves the machine as it found it: it refuses to start
(skip) when batv-relay is installed or a batv-relay user exists, and whatever happens it purges
the package, removes the user and any dependency it had apt install.

  1. cpack builds the .deb from the build tree into a private directory; lintian finds no error
     and no warning that tools/package.d/lintian-overrides does not justify.
  2. A second package, "rebuilt" from the first with dpkg-deb: version +pkgtest1 and a changed
     conffile (the package's next release).
  3. dpkg -i (apt-get -f install when dependencies are missing). Checked: the system user and
     group, /etc/batv-relay root:batv-relay 0750, the first key owned by batv-relay with mode
     0600, relay.toml a conffile, `batv-relay --check-config /etc/batv-relay/relay.toml` (as
     root and as the package's user), the unit, sysusers.d, tmpfiles.d and the manual pages.
     Running postinst configure again changes nothing (idempotent; the key is not rewritten).
  4. /usr/sbin/batv-relay as the package's user (setpriv), with a copy of the packaged config
     whose listeners use kernel-chosen loopback ports and whose next hop is smtp-sink: a message
     goes through and arrives with a prvs tag that `batv-keys verify` finds valid with the
     packaged key file.
  5. The admin edits relay.toml; dpkg -i of the second package keeps the edit (--force-confold:
     the package's new version lands in relay.toml.dpkg-dist), the key file is untouched.
  6. dpkg -r: the programs are gone, config, key and user stay. dpkg -P: nothing of the package
     is left (files, /etc/batv-relay, /run/batv-relay, the user and group, deb-systemd-helper
     state); postrm purge run once more is harmless.
  7. Once more, where systemd-sysusers is missing: postinst makes the same user with useradd.
Not covered here: a machine where systemd runs (CI containers have none), where postinst also
enables and starts the unit and prerm stops it.
"""
import argparse
import glob
import grp
import hashlib
import os
import pwd
import re
import shutil
import signal
import smtplib
import stat
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import harness  # noqa: E402
from harness import HOST, SmtpSink, parse_log_line, scaled  # noqa: E402

ARGS = None
PKG = "batv-relay"
USER = "batv-relay"
ETC = "/etc/batv-relay"
CONF = ETC + "/relay.toml"
KEYS = ETC + "/keys.toml"
UPGRADE_MARK = "# batv-relay package test: the next release changed this conffile"
ADMIN_MARK = "# the admin's own edit"


def run(cmd, check=True, timeout=300, **kw):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    out = p.stdout.decode(errors="replace")
    if check and p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s" % (" ".join(cmd), p.returncode, out))
    return p.returncode, out


def installed_packages():
    _, out = run(["dpkg-query", "-W", "-f", "${Package}\\t${Status}\\n"])
    return {line.split("\t")[0] for line in out.splitlines() if line.endswith("install ok installed")}


def package_status():
    rc, out = run(["dpkg-query", "-W", "-f", "${Status} ${Version}", PKG], check=False)
    return out.strip() if rc == 0 else "not-known"


def user_exists():
    try:
        pwd.getpwnam(USER)
        return True
    except KeyError:
        return False


def group_exists():
    try:
        grp.getgrnam(USER)
        return True
    except KeyError:
        return False


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def systemd_state():
    """What deb-systemd-helper keeps about the unit: enable symlinks, masks, state files."""
    return (glob.glob("/var/lib/systemd/deb-systemd-helper-enabled/**/*batv-relay*", recursive=True)
            + glob.glob("/var/lib/systemd/deb-systemd-helper-masked/*batv-relay*")
            + glob.glob("/etc/systemd/system/**/batv-relay.service", recursive=True)
            + glob.glob("/etc/systemd/system/batv-relay.service"))


def dpkg_env():
    # Non-interactive dpkg and apt, whatever the caller's environment.
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive", DEBCONF_NONINTERACTIVE_SEEN="true")


class PackageTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="batv-pkg-")
        os.chmod(cls.work, 0o755)   # the package's user reads the config copy from here
        cls.before = installed_packages()

    @classmethod
    def tearDownClass(cls):
        # Whatever happened: the package, its user and what apt brought in for it go.
        if package_status() != "not-known":
            run(["dpkg", "--purge", PKG], check=False, env=dpkg_env())
        if user_exists():
            run(["userdel", USER], check=False)
        if group_exists():
            run(["groupdel", USER], check=False)
        added = sorted(installed_packages() - cls.before)
        if added:
            run(["apt-get", "purge", "-y", "-q"] + added, check=False, env=dpkg_env())
        shutil.rmtree(cls.work, ignore_errors=True)

    # -- the steps, in order (one test: each step needs the one before) --
    def test_package_lifecycle(self):
        t0 = time.monotonic()
        deb, upgrade = self.build()
        self.lint(deb)
        self.install(deb)
        self.check_installed()
        self.check_idempotent_postinst()
        self.send_through_packaged_relay()
        self.upgrade_keeps_admin_edit(upgrade)
        self.remove_and_purge(deb)
        self.install_without_sysusers(deb)
        sys.stderr.write("package lifecycle: %.1f s\n" % (time.monotonic() - t0))

    def build(self):
        out_dir = os.path.join(self.work, "cpack")
        env = dict(os.environ)
        env.setdefault("SOURCE_DATE_EPOCH", str(int(time.time())))
        run(["cpack", "-G", "DEB", "--config", os.path.join(ARGS.build_dir, "CPackConfig.cmake"),
             "-B", out_dir], env=env)
        debs = glob.glob(os.path.join(out_dir, "batv-relay_*.deb"))
        self.assertEqual(len(debs), 1, debs)
        deb = debs[0]
        _, arch = run(["dpkg", "--print-architecture"])
        self.assertRegex(os.path.basename(deb), r"^batv-relay_[0-9][0-9.]*_%s\.deb$" % re.escape(arch.strip()))
        # Dependencies come from the binaries: libc, libstdc++, OpenSSL and toml++ at least.
        _, depends = run(["dpkg-deb", "-f", deb, "Depends"])
        for lib in ("libc6", "libstdc++6", "libssl3", "libtomlplusplus3"):
            self.assertIn(lib, depends)
        self.version = run(["dpkg-deb", "-f", deb, "Version"])[1].strip()

        # The next release: same files, version +pkgtest1, relay.toml changed.
        tree = os.path.join(self.work, "upgrade-tree")
        run(["dpkg-deb", "-R", deb, tree])
        conf = os.path.join(tree, CONF.lstrip("/"))
        with open(conf, "a") as f:
            f.write("\n%s\n" % UPGRADE_MARK)
        control = os.path.join(tree, "DEBIAN", "control")
        with open(control) as f:
            text = f.read()
        self.new_version = self.version + "+pkgtest1"
        text = re.sub(r"^Version: .*$", "Version: " + self.new_version, text, flags=re.M)
        with open(control, "w") as f:
            f.write(text)
        md5 = os.path.join(tree, "DEBIAN", "md5sums")
        with open(md5) as f:
            lines = f.read().splitlines()
        with open(conf, "rb") as f:
            digest = hashlib.md5(f.read()).hexdigest()
        lines = [("%s  %s" % (digest, CONF.lstrip("/")) if l.endswith(" " + CONF.lstrip("/")) else l)
                 for l in lines]
        with open(md5, "w") as f:
            f.write("\n".join(lines) + "\n")
        upgrade = os.path.join(self.work, "batv-relay_%s.deb" % self.new_version)
        run(["dpkg-deb", "--root-owner-group", "-b", tree, upgrade])
        return deb, upgrade

    def lint(self, deb):
        # Errors and warnings fail; tools/package.d/lintian-overrides (installed with the
        # package) holds the justified exceptions, informational tags included.
        rc, out = run(["lintian", "--fail-on", "error,warning", "--tag-display-limit", "0", deb],
                      check=False, timeout=600)
        out = "\n".join(l for l in out.splitlines() if "root privileges" not in l)
        self.assertEqual(rc, 0, "lintian:\n" + out)
        self.assertNotRegex(out, r"(?m)^[EW]: ", out)

    def install(self, deb):
        rc, out = run(["dpkg", "-i", deb], check=False, env=dpkg_env())
        if rc != 0:
            # Missing dependencies: dpkg leaves the package unconfigured, apt completes it.
            run(["apt-get", "-f", "install", "-y", "-q"], env=dpkg_env(), timeout=900)
        self.assertEqual(package_status(), "install ok installed " + self.version, out)

    def check_installed(self):
        u = pwd.getpwnam(USER)
        self.assertLess(u.pw_uid, 1000, "not a system user")
        self.assertEqual(grp.getgrgid(u.pw_gid).gr_name, USER)
        self.assertIn(u.pw_shell, ("/usr/sbin/nologin", "/sbin/nologin"))
        self.assertFalse(os.path.exists(u.pw_dir) and u.pw_dir != "/nonexistent", u.pw_dir)

        st = os.stat(ETC)
        self.assertEqual((st.st_uid, grp.getgrgid(st.st_gid).gr_name, stat.S_IMODE(st.st_mode)),
                         (0, USER, 0o750), ETC)
        st = os.lstat(KEYS)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)), (USER, 0o600), KEYS)
        _, listing = run(["batv-keys", "--keys", KEYS, "list"])
        self.assertRegex(listing, r"signing", listing)
        self.assertFalse(os.path.exists(KEYS + ".lock"))

        _, conffiles = run(["dpkg-query", "-W", "-f", "${Conffiles}", PKG])
        self.assertIn(CONF, conffiles)
        with open(CONF) as f:
            packaged = f.read()
        for addr in re.findall(r'^listen = "([^"]+)"', packaged, re.M):
            self.assertTrue(addr.startswith("127.0.0.1:") or addr.startswith("[::1]:"),
                            "packaged listener not on loopback: %s" % addr)
        self.assertIn('key_file = "/etc/batv-relay/keys.toml"', packaged)

        _, out = run(["/usr/sbin/batv-relay", "--check-config", CONF])
        self.assertIn("configuration OK", out)
        _, out = run(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups",
                      "/usr/sbin/batv-relay", "--check-config", CONF])
        self.assertIn("configuration OK", out)

        for path in ("/usr/bin/batv-keys", "/lib/systemd/system/batv-relay.service",
                     "/usr/lib/sysusers.d/batv-relay.conf", "/usr/lib/tmpfiles.d/batv-relay.conf",
                     "/usr/share/doc/batv-relay/copyright", "/usr/share/doc/batv-relay/README.md",
                     "/usr/share/doc/batv-relay/batv-relay.example.toml",
                     "/usr/share/batv-relay/grafana/batv-relay.json",
                     "/usr/share/batv-relay/prometheus/batv-relay.rules.yml"):
            self.assertTrue(os.path.exists(path), path)
        with open("/lib/systemd/system/batv-relay.service") as f:
            unit = f.read()
        self.assertIn("ExecStart=/usr/sbin/batv-relay --config /etc/batv-relay/relay.toml", unit)
        self.assertIn("User=batv-relay", unit)
        for page in ("batv-relay", "batv-keys", "batv-relay.toml"):
            rc, where = run(["man", "-w", page], check=False)
            self.assertEqual(rc, 0, "man -w %s: %s" % (page, where))
            self.assertTrue(where.strip().startswith("/usr/share/man/"), where)
        if shutil.which("systemd-analyze"):
            rc, out = run(["systemd-analyze", "verify", "/lib/systemd/system/batv-relay.service"],
                          check=False)
            # Offline (no systemd running) verify still parses every directive and checks that
            # the binaries and the Documentation= manual pages exist.
            self.assertEqual(rc, 0, out)
            self.assertNotRegex(out, r"Unknown (key|section)|Failed to parse", out)
            # The hardening stays where it is: an exposure level of at most 2.0 ("OK").
            rc, out = run(["systemd-analyze", "security", "--offline=yes", "--threshold=20",
                           "/lib/systemd/system/batv-relay.service"], check=False)
            self.assertEqual(rc, 0, out[-3000:])

    def check_idempotent_postinst(self):
        before = (sha256(KEYS), os.stat(KEYS).st_mtime_ns, os.stat(KEYS).st_uid)
        with open(CONF) as f:
            conf_before = f.read()
        run(["/var/lib/dpkg/info/batv-relay.postinst", "configure", self.version], env=dpkg_env())
        self.assertEqual((sha256(KEYS), os.stat(KEYS).st_mtime_ns, os.stat(KEYS).st_uid), before)
        with open(CONF) as f:
            self.assertEqual(f.read(), conf_before)
        # A key file the admin replaced (say, the fleet's) is never overwritten either.
        self.assertTrue(user_exists())

    def send_through_packaged_relay(self):
        sink = SmtpSink(self.work)
        self.addCleanup(sink.close)
        with open(CONF) as f:
            text = f.read()
        # The packaged config, with kernel-chosen loopback ports and smtp-sink as the next hop.
        text, n = re.subn(r'^listen = "127\.0\.0\.1:\d+"', 'listen = "127.0.0.1:0"', text, flags=re.M)
        self.assertGreaterEqual(n, 2, "the packaged config has fewer listeners than expected")
        text = re.sub(r'^upstream = "[^"]+"', 'upstream = "%s:%d"' % (HOST, sink.port), text, flags=re.M)
        copy = os.path.join(self.work, "relay.toml")
        with open(copy, "w") as f:
            f.write(text)
        os.chmod(copy, 0o644)
        proc = subprocess.Popen(["setpriv", "--reuid", USER, "--regid", USER, "--init-groups",
                                 "/usr/sbin/batv-relay", "--config", copy],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        lines = []
        try:
            ports = {}
            deadline = time.monotonic() + scaled(15)
            while time.monotonic() < deadline:
                raw = proc.stderr.readline()
                if not raw:
                    break
                rec = parse_log_line(raw.decode(errors="replace").rstrip("\n"))
                lines.append(rec["_raw"])
                if rec.get("event") == "listening":
                    ports[rec.get("role")] = int(rec["address"].rsplit(":", 1)[1])
                if rec.get("event") == "ready":
                    break
            self.assertIn("outbound", ports, "\n".join(lines))
            with open("/proc/%d/status" % proc.pid) as f:
                uid = re.search(r"^Uid:\s+(\d+)", f.read(), re.M).group(1)
            self.assertEqual(int(uid), pwd.getpwnam(USER).pw_uid, "not running as the package's user")
            with smtplib.SMTP(HOST, ports["outbound"], timeout=scaled(10)) as s:
                s.sendmail("homer@example.com", ["bart@elsewhere.org"],
                           b"Subject: package test\r\n\r\nthrough the packaged relay\r\n")
            msgs = sink.wait_messages(1, timeout=scaled(10))
            self.assertEqual(len(msgs), 1)
            sender = msgs[0].sender
            self.assertRegex(sender, r"^prvs=\d\d{3}[0-9a-f]{6}=homer@example\.com$", sender)
            rc, verdict = run(["batv-keys", "--keys", KEYS, "verify", sender], check=False)
            self.assertEqual(rc, 0, verdict)
            self.assertTrue(verdict.startswith("valid"), verdict)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(scaled(30))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            rest = proc.stderr.read().decode(errors="replace")
            proc.stderr.close()
        self.assertEqual(proc.returncode, 0, "\n".join(lines) + rest)

    def upgrade_keeps_admin_edit(self, upgrade):
        with open(CONF) as f:
            text = f.read()
        text = text.replace("threads = 0", "threads = 2  " + ADMIN_MARK, 1)
        self.assertIn(ADMIN_MARK, text)
        with open(CONF, "w") as f:
            f.write(text)
        key_before = (sha256(KEYS), os.stat(KEYS).st_uid, stat.S_IMODE(os.stat(KEYS).st_mode))
        # The upgrade runs the scripts' "systemd is running" branch: /run/systemd/system exists
        # for its duration (made here when missing, removed after). With no systemd behind it,
        # systemctl fails and policy-rc.d (if any) refuses the restart: the upgrade must still
        # succeed.
        made = [d for d in ("/run/systemd", "/run/systemd/system") if not os.path.exists(d)]
        for d in made:
            os.mkdir(d)
        try:
            run(["dpkg", "--force-confold", "--force-confdef", "-i", upgrade], env=dpkg_env())
        finally:
            for d in reversed(made):
                os.rmdir(d)
        self.assertEqual(package_status(), "install ok installed " + self.new_version)
        with open(CONF) as f:
            now = f.read()
        self.assertIn(ADMIN_MARK, now, "the admin's edit was lost")
        self.assertNotIn(UPGRADE_MARK, now)
        with open(CONF + ".dpkg-dist") as f:
            self.assertIn(UPGRADE_MARK, f.read(), "the new release's conffile was not kept beside it")
        self.assertEqual((sha256(KEYS), os.stat(KEYS).st_uid, stat.S_IMODE(os.stat(KEYS).st_mode)),
                         key_before)
        _, out = run(["/usr/sbin/batv-relay", "--check-config", CONF])
        self.assertIn("configuration OK", out)

    def remove_and_purge(self, deb):
        _, listing = run(["dpkg-deb", "-c", deb])
        files = [l.split()[-1].lstrip(".") for l in listing.splitlines() if not l.startswith("d")]
        control = os.path.join(self.work, "control")
        run(["dpkg-deb", "-e", deb, control])

        run(["dpkg", "-r", PKG], env=dpkg_env())
        self.assertFalse(os.path.exists("/usr/sbin/batv-relay"))
        self.assertFalse(os.path.exists("/usr/bin/batv-keys"))
        self.assertTrue(os.path.exists(CONF), "remove must keep the conffile")
        self.assertTrue(os.path.exists(KEYS), "remove must keep the key")
        self.assertTrue(user_exists(), "remove must keep the user")

        run(["dpkg", "-P", PKG], env=dpkg_env())
        self.assertEqual(package_status(), "not-known")
        left = [f for f in files if os.path.lexists(f)]
        self.assertEqual(left, [], "files of the package left after purge")
        for path in (ETC, "/run/batv-relay"):
            self.assertFalse(os.path.lexists(path), path + " left after purge")
        self.assertFalse(user_exists(), "user left after purge")
        self.assertFalse(group_exists(), "group left after purge")
        self.assertEqual(systemd_state(), [], "systemd state left after purge")
        # Idempotent: the scripts once more, on a system where everything is already gone
        # ("remove" masks the unit until purge, as dh_installsystemd does; purge unmasks).
        for script, arg in (("postrm", "purge"), ("prerm", "remove"), ("postrm", "remove"),
                            ("postrm", "purge")):
            run(["sh", os.path.join(control, script), arg])
        self.assertFalse(os.path.lexists(ETC))
        self.assertEqual(systemd_state(), [], "systemd state left by the scripts")


    def install_without_sysusers(self, deb):
        """Where systemd-sysusers is missing (a minimal container), postinst creates the same
        user with useradd: dpkg runs with a PATH that has every program but systemd-sysusers."""
        farm = os.path.join(self.work, "path-without-sysusers")
        os.mkdir(farm)
        for d in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            if not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                if name == "systemd-sysusers" or os.path.lexists(os.path.join(farm, name)):
                    continue
                os.symlink(os.path.join(d, name), os.path.join(farm, name))
        # The package's own programs, not installed yet (the links dangle until dpkg unpacks).
        for path in ("/usr/bin/batv-keys", "/usr/sbin/batv-relay"):
            os.symlink(path, os.path.join(farm, os.path.basename(path)))
        env = dict(dpkg_env(), PATH=farm)
        run(["dpkg", "-i", deb], env=env)
        u = pwd.getpwnam(USER)
        self.assertLess(u.pw_uid, 1000)
        self.assertEqual(grp.getgrgid(u.pw_gid).gr_name, USER)
        self.assertEqual((u.pw_dir, u.pw_shell), ("/nonexistent", "/usr/sbin/nologin"))
        self.assertFalse(os.path.exists("/nonexistent"))
        st = os.stat(KEYS)
        self.assertEqual((pwd.getpwuid(st.st_uid).pw_name, stat.S_IMODE(st.st_mode)), (USER, 0o600))
        run(["dpkg", "-P", PKG], env=env)
        self.assertFalse(user_exists())
        self.assertFalse(os.path.lexists(ETC))
        self.assertEqual(systemd_state(), [])


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", required=True)
    ap.add_argument("--source", required=True)
    ARGS, rest = ap.parse_known_args()
    ARGS.build_dir = os.path.abspath(ARGS.build_dir)
    if os.geteuid() != 0:
        print("skipped: the package test installs a package and needs root (CI runs as root)")
        return 77
    for tool in ("dpkg", "dpkg-deb", "cpack", "lintian", "setpriv", "smtp-sink"):
        if not shutil.which(tool) and not os.path.exists("/usr/sbin/" + tool):
            print("skipped: %s is missing (tools/lib.sh installs it)" % tool)
            return 77
    if package_status() != "not-known":
        print("skipped: batv-relay is installed on this machine (%s); not touching it" % package_status())
        return 77
    if user_exists() or group_exists():
        print("skipped: a batv-relay user or group exists already; not touching it")
        return 77
    prog = unittest.main(argv=[sys.argv[0]] + rest, verbosity=2, exit=False)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
