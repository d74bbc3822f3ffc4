#!/usr/bin/env python3
"""batv-keys end to end: the real binary, real files, every command and exit code.

Usage: test_batv_keys.py --bin PATH/batv-keys
"""
import argparse
import json
import os
import re
import stat
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import run_checked  # noqa: E402  (a sanitizer finding in any run fails the test)

BIN = None
T1 = 1700000000  # 2023-11-14T22:13:20Z, day 19675
DAY = 86400


def run(keys, *args, stdin=None, now=None):
    cmd = [BIN, "--keys", keys]
    if now is not None:
        cmd += ["--now", str(now)]
    cmd += list(args)
    p = run_checked(cmd, input=stdin, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def listing(keys, now=T1):
    rc, out, err = run(keys, "list", "--json", now=now)
    assert rc == 0, err
    return json.loads(out)


class BatvKeysTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.keys = os.path.join(self.dir.name, "keys.toml")

    def tearDown(self):
        self.dir.cleanup()

    def test_round_trip_rotate_sign_verify_retire_prune(self):
        rc, out, err = run(self.keys, "rotate", now=T1)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^key 0 \([0-9a-f]{12}\) is now the signing key\n$")
        self.assertEqual(stat.S_IMODE(os.stat(self.keys).st_mode), 0o600)
        rc, tag0, _ = run(self.keys, "sign", "homer@Example.com", now=T1)
        self.assertEqual(rc, 0)
        self.assertRegex(tag0, r"^prvs=0682[0-9a-f]{6}=homer@example\.com\n$")
        tag0 = tag0.strip()

        rc, out, err = run(self.keys, "rotate", now=T1 + DAY)
        self.assertEqual(rc, 0, err)
        self.assertIn("key 1", out)
        self.assertIn("key 0", out)
        self.assertIn("now only verifies", out)
        rc, tag1, _ = run(self.keys, "sign", "homer@example.com", now=T1 + DAY)
        self.assertTrue(tag1.startswith("prvs=1683"), tag1)
        tag1 = tag1.strip()

        # Both keys verify their own tags.
        for tag in (tag0, tag1):
            rc, out, _ = run(self.keys, "verify", tag, now=T1 + DAY)
            self.assertEqual((rc, out), (0, "valid homer@example.com\n"))

        keys = listing(self.keys, now=T1 + DAY)
        self.assertEqual([k["id"] for k in keys], [0, 1])
        self.assertEqual(keys[0]["state"], "verify")
        self.assertEqual(keys[0]["stopped_signing"], "2023-11-15T22:13:20Z")
        # Tags signed just before the stop are valid through day 19676 + 7 = 19683; +1 day margin.
        self.assertEqual(keys[0]["retirable_after"], "2023-11-24T00:00:00Z")
        self.assertEqual(keys[1]["state"], "signing")
        self.assertIsNone(keys[1]["stopped_signing"])

        # Retiring key 0 while its tags can be valid is refused, with the date it becomes safe.
        rc, out, err = run(self.keys, "retire", "--id", "0", now=T1 + 2 * DAY)
        self.assertEqual(rc, 1)
        self.assertIn("2023-11-24T00:00:00Z", err)
        self.assertIn("--force", err)
        rc, _, err = run(self.keys, "retire", "--id", "1", now=T1 + 2 * DAY)
        self.assertEqual(rc, 1)
        self.assertIn("signing key", err)
        # prune finds nothing yet.
        rc, out, _ = run(self.keys, "prune", now=T1 + 2 * DAY)
        self.assertEqual((rc, out), (0, "nothing to prune\n"))
        # --force removes it; its tags are then unknown_key (exit 3).
        rc, out, err = run(self.keys, "retire", "--id", "0", "--force", now=T1 + 2 * DAY)
        self.assertEqual(rc, 0, err)
        self.assertIn("retired key 0", out)
        rc, out, _ = run(self.keys, "verify", tag0, now=T1 + 2 * DAY)
        self.assertEqual((rc, out), (3, "unknown_key homer@example.com\n"))

        # prune: rotate again, then after the window only the demoted key goes.
        run(self.keys, "rotate", now=T1 + 3 * DAY)
        rc, out, _ = run(self.keys, "prune", now=T1 + 10 * DAY)
        self.assertEqual((rc, out), (0, "nothing to prune\n"))
        rc, out, _ = run(self.keys, "prune", now=T1 + 12 * DAY)
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^retired key 1 ")
        self.assertEqual([(k["id"], k["state"]) for k in listing(self.keys, now=T1 + 12 * DAY)],
                         [(2, "signing")])

    def test_verify_exit_codes(self):
        run(self.keys, "import", "--id", "3", "--signing", stdin=b"secretkey\n", now=T1)
        cases = [
            ("prvs=368291fcbb=user@example.com", T1, 0, "valid user@example.com"),
            ("<PRVS=368291FCBB=user@example.com>", T1, 0, "valid user@example.com"),
            ("prvs=368291fcbc=user@example.com", T1, 1, "bad_signature user@example.com"),
            ("prvs=368291fcbb=user@example.com", 1700611200, 2, "expired user@example.com"),
            ("prvs=468291fcbb=user@example.com", T1, 3, "unknown_key user@example.com"),
            ("prvs=234d5777c=user@example.com", T1, 4, "malformed"),
            ("user@example.com", T1, 4, "untagged"),
            # ISO-8601 --now, the wrap vector.
            ("prvs=3006593a90=user@example.com", "2024-10-10T12:00:00Z", 0, "valid user@example.com"),
        ]
        for addr, now, want_rc, want_out in cases:
            with self.subTest(addr=addr, now=now):
                rc, out, err = run(self.keys, "verify", addr, now=now)
                self.assertEqual((rc, out.strip()), (want_rc, want_out), err)

    def test_import_exim_secret_reproduces_spec_vectors(self):
        rc, out, err = run(self.keys, "import", "--id", "3", "--signing", stdin=b"secretkey\n", now=T1)
        self.assertEqual(rc, 0, err)
        self.assertIn("warning: the secret is only 9 bytes", err)
        self.assertNotIn("secretkey", out + err)
        for now, want in [(T1, "prvs=368291fcbb=user@example.com"),
                          ("2023-11-15T00:00:00Z", "prvs=3683a5ba89=user@example.com"),
                          (1727438400, "prvs=3000748d38=user@example.com")]:
            rc, out, _ = run(self.keys, "sign", "user@example.com", now=now)
            self.assertEqual((rc, out.strip()), (0, want))
        # A second import under a used id is refused; a verify-only import keeps the signer.
        rc, _, err = run(self.keys, "import", "--id", "3", stdin=b"other\n", now=T1)
        self.assertEqual(rc, 1)
        self.assertIn("exists already", err)
        rc, out, err = run(self.keys, "import", "--id", "4", stdin=b"old-exim-secret\r\n", now=T1)
        self.assertEqual(rc, 0, err)
        keys = {k["id"]: k for k in listing(self.keys)}
        self.assertEqual(keys[3]["state"], "signing")
        self.assertEqual(keys[4]["state"], "verify")
        # Only one trailing newline is stripped: "\r\n" counts as one.
        with open(self.keys) as f:
            self.assertIn('secret = "b2xkLWV4aW0tc2VjcmV0"', f.read())  # base64("old-exim-secret")
        # Empty and oversize secrets are bad data (65, EX_DATAERR), not usage errors.
        self.assertEqual(run(self.keys, "import", "--id", "5", stdin=b"\n")[0], 65)
        self.assertEqual(run(self.keys, "import", "--id", "5", stdin=b"x" * 65)[0], 65)
        # The first key of a file must sign.
        other = os.path.join(self.dir.name, "other.toml")
        rc, _, err = run(other, "import", "--id", "1", stdin=b"secret\n")
        self.assertEqual(rc, 1)
        self.assertIn("--signing", err)
        self.assertFalse(os.path.exists(other))

    def test_sign_refusals_exit_3(self):
        run(self.keys, "rotate", now=T1)
        for addr, reason in [("<>", "null_sender"), ("prvs=368291fcbb=u@example.com", "already_tagged"),
                             ("SRS0=a=b=c=d@example.com", "already_tagged"),
                             ('"a b"@example.com', "quoted_local_part"),
                             ("a" * 49 + "@example.com", "too_long"), ("nodomain", "malformed_address")]:
            with self.subTest(addr=addr):
                rc, out, _ = run(self.keys, "sign", addr, now=T1)
                self.assertEqual((rc, out), (3, "not signed: " + reason + "\n"))

    def test_list_never_shows_secrets(self):
        run(self.keys, "import", "--id", "7", "--signing", stdin=b"secretkey-that-must-not-leak\n", now=T1)
        rc, text, _ = run(self.keys, "list", now=T1)
        self.assertEqual(rc, 0)
        self.assertRegex(text, r"(?m)^7 +signing +2023-11-14T22:13:20Z +- +- +[0-9a-f]{12}$")
        rc, js, _ = run(self.keys, "list", "--json", now=T1)
        for out in (text, js):
            self.assertNotIn("secretkey", out)
            self.assertNotIn("c2VjcmV0a2V5", out)  # nor its base64

    def test_rotate_refuses_when_all_ids_are_used_and_names_the_key_to_retire(self):
        for i in range(10):
            rc, _, err = run(self.keys, "rotate", now=T1 + i * DAY)
            self.assertEqual(rc, 0, err)
        ids = [k["id"] for k in listing(self.keys, now=T1 + 10 * DAY)]
        self.assertEqual(ids, list(range(10)))
        rc, _, err = run(self.keys, "rotate", now=T1 + 10 * DAY)
        self.assertEqual(rc, 1)
        # Key 0 stopped signing first (day 1) and is safe after day 1 + 7 + 1 + 1 margin.
        self.assertIn("retire --id 0", err)
        self.assertIn("is safe to retire now", err)
        # Rotation cycles: after retiring key 0, the next rotate from signer 9 reuses id 0.
        run(self.keys, "retire", "--id", "0", now=T1 + 10 * DAY)
        rc, out, _ = run(self.keys, "rotate", now=T1 + 10 * DAY)
        self.assertEqual(rc, 0)
        self.assertTrue(out.startswith("key 0 "), out)

    def test_concurrent_rotations_lose_no_key(self):
        run(self.keys, "rotate", now=T1)
        results = []

        def worker():
            results.append(run(self.keys, "rotate", now=T1)[0])

        threads = [threading.Thread(target=worker) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(results, [0] * 6)
        keys = listing(self.keys)
        self.assertEqual(len(keys), 7)
        self.assertEqual(sum(k["state"] == "signing" for k in keys), 1)

    def test_file_errors_and_usage(self):
        # Missing file: 66; too open: 77, with the chmod hint; broken: 65 with file:line:col.
        rc, _, err = run(self.keys, "list")
        self.assertEqual(rc, 66)
        self.assertIn("no such key file", err)
        run(self.keys, "rotate")
        os.chmod(self.keys, 0o644)
        rc, _, err = run(self.keys, "sign", "a@example.com")
        self.assertEqual(rc, 77)
        self.assertIn("chmod 600 " + self.keys, err)
        os.chmod(self.keys, 0o600)
        with open(self.keys, "a") as f:
            f.write("\n[[key]]\nid = 11\n")
        rc, _, err = run(self.keys, "list")
        self.assertEqual(rc, 65)
        self.assertRegex(err, re.escape(self.keys) + r":\d+:\d+: key\[1\]\.id: key id 11 is out of range 0-9")
        # Usage errors: 64.
        for args in (["frobnicate"], ["sign"], ["retire"], ["import"], ["--now", "tomorrow", "list"],
                     ["--lifetime", "31", "list"], ["--hash", "md5", "list"], ["list", "--bogus"]):
            with self.subTest(args=args):
                self.assertEqual(run(self.keys, *args)[0], 64)
        p = run_checked([BIN, "list"])
        self.assertEqual(p.returncode, 64)
        self.assertIn(b"--keys FILE", p.stderr)

    def test_lifetime_and_hash_options(self):
        run(self.keys, "import", "--id", "1", "--signing", stdin=b"secretkey\n", now=T1)
        rc, out, _ = run(self.keys, "--lifetime", "30", "sign", "u@example.com", now=T1)
        self.assertTrue(out.startswith("prvs=1705"), out)
        tag = out.strip()
        self.assertEqual(run(self.keys, "--lifetime", "30", "verify", tag, now=T1 + 30 * DAY)[0], 0)
        self.assertEqual(run(self.keys, "--lifetime", "30", "verify", tag, now=T1 + 31 * DAY)[0], 2)
        rc, out, _ = run(self.keys, "--hash", "lowercase-local", "sign", "John.Doe@example.com", now=T1)
        self.assertEqual(out.strip(), "prvs=1682d14978=John.Doe@example.com")


def run_raw(*args, stdin=None):
    p = run_checked([BIN] + list(args), input=stdin, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def tag_key(tag):
    """The key digit of a prvs tag."""
    m = re.match(r"^prvs=(\d)", tag)
    assert m, tag
    return int(m.group(1))


class ConventionsTest(unittest.TestCase):
    """batv-keys by the conventions of a Unix command (CLI11)."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.keys = os.path.join(self.dir.name, "keys.toml")
        rc, _, err = run(self.keys, "import", "--id", "3", "--signing", stdin=b"secretkey\n", now=T1)
        self.assertEqual(rc, 0, err)

    def tearDown(self):
        self.dir.cleanup()

    def assert_usage_error(self, rc, err, command=None):
        """64, one line on stderr that ends by pointing at the right --help; no help dump."""
        self.assertEqual(rc, 64, err)
        self.assertEqual(err.count("\n"), 1, err)
        want = "try batv-keys %s--help\n" % (command + " " if command else "")
        self.assertTrue(err.endswith(want), err)
        self.assertTrue(err.startswith("batv-keys: "), err)
        self.assertNotIn("Usage:", err)

    def test_double_dash_ends_options(self):
        # A local part may start with "-": after "--" it is the ADDRESS.
        rc, out, err = run(self.keys, "sign", "--", "-alice@example.com", now=T1)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^prvs=3682[0-9a-f]{6}=-alice@example\.com\n$")
        rc, out, err = run(self.keys, "verify", "--", out.strip(), now=T1)
        self.assertEqual((rc, out), (0, "valid -alice@example.com\n"), err)
        # Without "--" it is an unknown option, and the message says what to do.
        rc, _, err = run(self.keys, "sign", "-alice@example.com", now=T1)
        self.assert_usage_error(rc, err, "sign")
        self.assertIn("goes after --", err)

    def test_option_equals_value(self):
        rc, out, err = run_raw("--keys=" + self.keys, "--now=%d" % T1, "sign", "--lifetime=30",
                               "--hash=exact", "u@example.com")
        self.assertEqual((rc, out), (0, run(self.keys, "--lifetime", "30", "sign", "u@example.com",
                                            now=T1)[1]), err)
        self.assertTrue(out.startswith("prvs=3705"), out)
        # Global options may follow the command as well.
        rc, out2, err = run_raw("sign", "u@example.com", "--keys", self.keys, "--now", str(T1),
                                "--lifetime=30")
        self.assertEqual((rc, out2), (0, out), err)

    def test_per_command_help(self):
        rc, out, err = run_raw("sign", "--help")
        self.assertEqual(rc, 0, err)
        self.assertIn("Usage: batv-keys sign", out)
        for opt in ("ADDRESS", "--hash", "--lifetime"):
            self.assertIn(opt, out)
        for opt in ("--force", "--json", "--at", "--signing", "--margin"):
            self.assertNotIn(opt, out)
        rc, out, _ = run_raw("rotate", "--help")
        self.assertEqual(rc, 0)
        self.assertIn("--at T", out)
        self.assertIn("+30m", out)
        rc, out, _ = run_raw("--help")
        self.assertEqual(rc, 0)
        for cmd in ("rotate", "promote", "import", "list", "retire", "prune", "sign", "verify"):
            self.assertRegex(out, r"(?m)^  %s " % cmd)
        self.assertIn("--keys FILE", out)

    def test_options_that_do_not_apply_are_refused(self):
        with open(self.keys, "rb") as f:
            before = f.read()
        cases = [
            (["list", "--force"], "list"), (["sign", "--json", "a@example.com"], "sign"),
            (["verify", "--at", "+1h", "a@example.com"], "verify"), (["rotate", "--id", "4"], "rotate"),
            (["prune", "--hash", "exact"], "prune"), (["import", "--id", "4", "--force"], "import"),
            (["--hash", "exact", "list"], "list"), (["--margin", "2", "sign", "a@example.com"], "sign"),
            (["retire", "--id", "3", "--signing"], "retire"), (["promote", "--id", "3", "--json"], "promote"),
        ]
        for args, cmd in cases:
            with self.subTest(args=args):
                rc, out, err = run(self.keys, *args, now=T1, stdin=b"another-secret\n")
                self.assert_usage_error(rc, err, cmd)
                self.assertEqual(out, "")
        with open(self.keys, "rb") as f:
            self.assertEqual(f.read(), before)  # none of them did anything

    def test_usage_errors_are_one_line(self):
        cases = [
            (["frobnicate"], None, "unknown command 'frobnicate'"),
            ([], None, "no command"),
            (["sign"], "sign", "ADDRESS is required"),
            (["sign", "a@example.com", "b@example.com"], "sign", "unexpected argument 'b@example.com'"),
            (["retire"], "retire", "--id is required"),
            (["retire", "--id", "12"], "retire", "12"),
            (["retire", "--id"], "retire", "--id"),
            (["--now", "tomorrow", "list"], None, "--now wants"),
            (["list", "--lifetime", "31"], "list", "31"),
            (["verify", "--hash", "md5", "a@example.com"], "verify", "md5"),
            (["list", "--bogus"], "list", "--bogus is not an option of list"),
            (["rotate", "--at", "soon"], "rotate", "--at wants"),
        ]
        for args, cmd, text in cases:
            with self.subTest(args=args):
                rc, out, err = run(self.keys, *args)
                self.assert_usage_error(rc, err, cmd)
                self.assertIn(text, err)
        rc, _, err = run_raw("list")
        self.assert_usage_error(rc, err, "list")
        self.assertIn("--keys FILE", err)

    def test_version_like_batv_relay(self):
        rc, out, err = run_raw("--version")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^batv-keys \d+\.\d+\.\d+\n$")
        relay = os.path.join(os.path.dirname(BIN), "batv-relay")
        if os.path.exists(relay):
            p = run_checked([relay, "--version"], timeout=30)
            self.assertEqual(p.stdout.decode().replace("batv-relay", "batv-keys"), out)

    def test_sysexits(self):
        # 65: bad data, on stdin or in the key file.
        self.assertEqual(run(self.keys, "import", "--id", "5", stdin=b"")[0], 65)
        # 74: standard input cannot be read (a directory).
        fd = os.open(self.dir.name, os.O_RDONLY)
        try:
            p = run_checked([BIN, "--keys", self.keys, "import", "--id", "5"], stdin=fd, timeout=30)
        finally:
            os.close(fd)
        self.assertEqual(p.returncode, 74, p.stderr)
        self.assertIn(b"cannot read standard input", p.stderr)
        # 66: no such key file.
        self.assertEqual(run(os.path.join(self.dir.name, "none.toml"), "list")[0], 66)
        # 73: the key file cannot be created (its directory is a file).
        blocker = os.path.join(self.dir.name, "file")
        open(blocker, "w").close()
        rc, _, err = run(os.path.join(blocker, "keys.toml"), "rotate")
        self.assertEqual(rc, 73, err)
        # 78: the --config file is broken.
        conf = os.path.join(self.dir.name, "relay.toml")
        with open(conf, "w") as f:
            f.write("key_file = 5\n")
        p = run_checked([BIN, "--config", conf, "list"], timeout=30)
        self.assertEqual(p.returncode, 78, p.stderr)
        self.assertIn(conf.encode(), p.stderr)


class StagedRotationTest(unittest.TestCase):
    """rotate --at T: the new key verifies at once and signs from T; promote; the refusals."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.keys = os.path.join(self.dir.name, "keys.toml")
        rc, _, err = run(self.keys, "import", "--id", "3", "--signing", stdin=b"secretkey\n", now=T1)
        self.assertEqual(rc, 0, err)

    def tearDown(self):
        self.dir.cleanup()

    def content(self):
        with open(self.keys, "rb") as f:
            return f.read()

    def sign_key(self, now):
        rc, out, err = run(self.keys, "sign", "user@example.com", now=now)
        self.assertEqual(rc, 0, err)
        return tag_key(out), out.strip()

    def test_staged_key_verifies_now_and_signs_from_t(self):
        t = T1 + 3600
        rc, out, err = run(self.keys, "rotate", "--at", "+1h", now=T1)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^key 4 \([0-9a-f]{12}\) is staged: it verifies now and signs from "
                              r"2023-11-14T23:13:20Z \(in 1h\); key 3 \([0-9a-f]{12}\) signs until then")
        with open(self.keys) as f:
            text = f.read()
        self.assertIn('state = "staged"', text)
        self.assertIn("activate_at = 2023-11-14T23:13:20Z", text)
        written = self.content()

        keys = {k["id"]: k for k in listing(self.keys, now=T1)}
        self.assertEqual((keys[3]["state"], keys[3]["activate_at"]), ("signing", None))
        self.assertEqual((keys[4]["state"], keys[4]["activate_at"]), ("staged", "2023-11-14T23:13:20Z"))
        self.assertIsNone(keys[4]["stopped_signing"])
        rc, text, _ = run(self.keys, "list", now=T1 + 60)
        self.assertIn("key 4 signs from 2023-11-14T23:13:20Z (in 59m); key 3 signs until then\n", text)

        # The old key signs up to T, the new one from T; tags of both verify all along.
        k_before, tag_old = self.sign_key(t - 1)
        k_at, tag_new = self.sign_key(t)
        self.assertEqual((k_before, k_at), (3, 4))
        self.assertEqual(self.sign_key(T1)[0], 3)
        for now in (T1, t - 1, t, t + DAY):
            for tag in (tag_old, tag_new):
                rc, out, _ = run(self.keys, "verify", tag, now=now)
                self.assertEqual((rc, out), (0, "valid user@example.com\n"), (tag, now))
        # From T on, list shows the switch as done: 4 signs, 3 stopped at T.
        keys = {k["id"]: k for k in listing(self.keys, now=t)}
        self.assertEqual((keys[4]["state"], keys[4]["activate_at"]), ("signing", None))
        self.assertEqual((keys[3]["state"], keys[3]["stopped_signing"]), ("verify", "2023-11-14T23:13:20Z"))
        # Reading never rewrote the file: every relay holding it switches on its own.
        self.assertEqual(self.content(), written)
        # The next change after T writes the settled form.
        rc, out, err = run(self.keys, "import", "--id", "7", stdin=b"old-secret-xyz\n", now=t + 5)
        self.assertEqual(rc, 0, err)
        with open(self.keys) as f:
            text = f.read()
        self.assertNotIn('state = "staged"', text)
        self.assertNotIn("activate_at", text)
        self.assertEqual(self.sign_key(t + 10)[0], 4)
        keys = {k["id"]: k for k in listing(self.keys, now=t + 10)}
        self.assertEqual(keys[3]["stopped_signing"], "2023-11-14T23:13:20Z")

    def test_time_forms_and_bounds(self):
        for at, want in [("+90s", T1 + 90), ("+30m", T1 + 1800), ("+2h", T1 + 7200), ("+1d", T1 + DAY),
                         (str(T1 + 5), T1 + 5), ("2023-11-15T00:00:00Z", 1700006400), ("+30d", T1 + 30 * DAY)]:
            with self.subTest(at=at):
                keys = os.path.join(self.dir.name, "k%d.toml" % want)
                run(keys, "import", "--id", "1", "--signing", stdin=b"secretkey\n", now=T1)
                rc, _, err = run(keys, "rotate", "--at", at, now=T1)
                self.assertEqual(rc, 0, err)
                staged = [k for k in listing(keys, now=T1) if k["state"] == "staged"]
                self.assertEqual(len(staged), 1)
                self.assertEqual(staged[0]["activate_at"],
                                 time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(want)))
        before = self.content()
        for at, text in [("+0s", "is not in the future"), (str(T1 - 1), "is not in the future"),
                         ("2023-11-14T00:00:00Z", "is not in the future"),
                         ("+31d", "more than 30 days ahead"), (str(T1 + 30 * DAY + 1), "more than 30 days ahead"),
                         ("+5", "--at wants"), ("+5w", "--at wants"), ("tomorrow", "--at wants")]:
            with self.subTest(at=at):
                rc, _, err = run(self.keys, "rotate", "--at", at, now=T1)
                self.assertEqual(rc, 64, err)
                self.assertIn(text, err)
                self.assertEqual(err.count("\n"), 1, err)
        self.assertEqual(self.content(), before)

    def test_one_staged_key_at_a_time(self):
        rc, _, err = run(self.keys, "rotate", "--at", "+1h", now=T1)
        self.assertEqual(rc, 0, err)
        before = self.content()
        for args in (["rotate", "--at", "+2h"], ["rotate"]):
            with self.subTest(args=args):
                rc, _, err = run(self.keys, *args, now=T1 + 60)
                self.assertEqual(rc, 1, err)
                self.assertIn("key 4 is staged (it signs from 2023-11-14T23:13:20Z)", err)
                self.assertIn("promote --id 4", err)
        rc, _, err = run(self.keys, "import", "--id", "6", "--signing", stdin=b"abcdefghijklmnopq\n", now=T1)
        self.assertEqual(rc, 1, err)
        self.assertIn("staged", err)
        self.assertEqual(self.content(), before)
        # Once T has passed the staged key is the signer, and a new rotation is fine.
        rc, out, err = run(self.keys, "rotate", "--at", "+1h", now=T1 + 3600)
        self.assertEqual(rc, 0, err)
        self.assertIn("key 5", out)
        self.assertIn("key 4", out)
        # A rotation without a signer to keep signing cannot be staged.
        empty = os.path.join(self.dir.name, "empty.toml")
        rc, _, err = run(empty, "rotate", "--at", "+1h", now=T1)
        self.assertEqual(rc, 1, err)
        self.assertIn("rotate without --at", err)
        self.assertFalse(os.path.exists(empty))

    def test_promote_and_cancel(self):
        run(self.keys, "rotate", "--at", "+1h", now=T1)
        rc, _, err = run(self.keys, "promote", "--id", "3", now=T1)
        self.assertEqual(rc, 1)
        self.assertIn("key 3 is not staged (it is the signing key)", err)
        rc, _, err = run(self.keys, "promote", "--id", "8", now=T1)
        self.assertEqual(rc, 1)
        self.assertIn("there is no key 8", err)
        rc, out, err = run(self.keys, "promote", "--id", "4", now=T1 + 60)
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^key 4 \([0-9a-f]{12}\) is now the signing key; key 3 \([0-9a-f]{12}\) now only verifies\n$")
        self.assertEqual(self.sign_key(T1 + 60)[0], 4)
        keys = {k["id"]: k for k in listing(self.keys, now=T1 + 60)}
        self.assertEqual(keys[3]["stopped_signing"], "2023-11-14T22:14:20Z")
        self.assertEqual((keys[4]["state"], keys[4]["activate_at"]), ("signing", None))
        # Staging again and retiring the staged key cancels it: key 3... key 4 keeps signing after T.
        run(self.keys, "rotate", "--at", "+1h", now=T1 + 60)
        rc, out, err = run(self.keys, "retire", "--id", "5", now=T1 + 120)
        self.assertEqual(rc, 0, err)
        self.assertIn("retired key 5", out)
        self.assertEqual(self.sign_key(T1 + 2 * 3600)[0], 4)

class DomainKeysTest(unittest.TestCase):
    """--config FILE --domain D: every command on D's ring; sign/verify pick the ring by the
    address's domain. Default ring: key 3 "secretkey"; a.example: key 1; b.example and
    www.b.example: key 2 (both made by rotate, so their secrets are random)."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        d = self.dir.name
        self.conf = os.path.join(d, "relay.toml")
        self.default = os.path.join(d, "keys.toml")
        os.mkdir(os.path.join(d, "keys.d"))
        self.a = os.path.join(d, "keys.d", "a.toml")
        self.b = os.path.join(d, "b.toml")
        with open(self.conf, "w") as f:
            f.write('key_file = "keys.toml"\n'
                    '[domains]\nsign = ["example.com", "a.example", "b.example", "www.b.example"]\n'
                    '[[domain_keys]]\ndomains = ["a.example"]\nkey_file = "keys.d/a.toml"\n'
                    '[[domain_keys]]\ndomains = ["B.example", "www.b.example"]\nkey_file = "%s"\n'
                    '[[listener]]\nrole = "outbound"\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:25"\n'
                    % self.b)
        rc, _, err = run(self.default, "import", "--id", "3", "--signing", stdin=b"secretkey\n", now=T1)
        self.assertEqual(rc, 0, err)
        # Ring a: key 0 then rotated to key 1; ring b: keys 0, 1, 2 (so the ids differ per ring).
        for domain, times in (("a.example", 2), ("b.example", 3)):
            for i in range(times):
                rc, out, err = self.cfg("--domain", domain, "rotate", now=T1 + i)
                self.assertEqual(rc, 0, err)

    def tearDown(self):
        self.dir.cleanup()

    def cfg(self, *args, now=T1 + 10):
        p = run_checked([BIN, "--config", self.conf, "--now", str(now)] + list(args), timeout=30)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def test_each_command_acts_on_the_domains_ring_only(self):
        # rotate wrote each ring's own file, relative names resolved against the config's directory.
        self.assertEqual([k["id"] for k in listing(self.a)], [0, 1])
        self.assertEqual([k["id"] for k in listing(self.b)], [0, 1, 2])
        self.assertEqual([k["id"] for k in listing(self.default)], [3])
        self.assertEqual(stat.S_IMODE(os.stat(self.a).st_mode), 0o600)
        # list --json by domain; any case; a second domain of an entry is the same ring.
        for domain, ids in (("a.example", [0, 1]), ("B.EXAMPLE", [0, 1, 2]), ("www.b.example", [0, 1, 2]),
                            ("example.com", [3])):
            rc, out, err = self.cfg("--domain", domain, "list", "--json")
            self.assertEqual(rc, 0, err)
            self.assertEqual([k["id"] for k in json.loads(out)], ids, domain)
        # sign / verify with --domain.
        rc, tag_a, err = self.cfg("--domain", "a.example", "sign", "user@a.example")
        self.assertEqual(rc, 0, err)
        self.assertTrue(tag_a.startswith("prvs=1"), tag_a)
        self.assertEqual(self.cfg("--domain", "a.example", "verify", tag_a.strip())[:2],
                         (0, "valid user@a.example\n"))
        # promote / retire / import / prune take it as well (retire: key 0 of ring a, forced).
        rc, out, err = self.cfg("--domain", "a.example", "retire", "--id", "0", "--force")
        self.assertEqual(rc, 0, err)
        self.assertEqual([k["id"] for k in listing(self.a)], [1])
        self.assertEqual([k["id"] for k in listing(self.b)], [0, 1, 2])
        p = run_checked([BIN, "--config", self.conf, "--domain", "b.example", "import", "--id", "7"],
                        input=b"imported-b\n", timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual([k["id"] for k in listing(self.b)], [0, 1, 2, 7])
        self.assertEqual([k["id"] for k in listing(self.a)], [1])
        rc, out, err = self.cfg("--domain", "b.example", "prune", now=T1 + 60 * DAY)
        self.assertEqual(rc, 0, err)
        self.assertEqual([k["id"] for k in listing(self.b, now=T1 + 60 * DAY)], [2, 7])
        rc, out, err = self.cfg("--domain", "a.example", "rotate", "--at", "+1h")
        self.assertEqual(rc, 0, err)
        rc, out, err = self.cfg("--domain", "a.example", "promote", "--id", "2")
        self.assertEqual(rc, 0, err)
        self.assertEqual([k["state"] for k in listing(self.a, now=T1 + 20)], ["verify", "signing"])
        self.assertEqual([k["state"] for k in listing(self.b, now=T1 + 20)], ["signing", "verify"])

    def test_sign_and_verify_pick_the_ring_by_the_address(self):
        tags = {}
        for addr, key in (("user@a.example", "1"), ("user@b.example", "2"), ("user@www.b.example", "2"),
                          ("user@example.com", "3"), ("user@elsewhere.org", "3")):
            rc, out, err = self.cfg("sign", addr)
            self.assertEqual(rc, 0, err)
            self.assertTrue(out.startswith("prvs=" + key), (addr, out))
            tags[addr] = out.strip()
            self.assertEqual(self.cfg("verify", out.strip())[:2], (0, "valid %s\n" % addr))
        self.assertEqual(tags["user@example.com"], "prvs=368291fcbb=user@example.com")  # the spec's tag
        # The offline check by file agrees: each tag verifies with its ring's file only.
        self.assertEqual(run(self.a, "verify", tags["user@a.example"], now=T1 + 10)[0], 0)
        self.assertEqual(run(self.b, "verify", tags["user@a.example"], now=T1 + 10)[0], 1)  # key 1 of b: other secret
        self.assertEqual(run(self.a, "verify", tags["user@b.example"], now=T1 + 10)[0], 3)  # no key 2 in a
        # Another ring's tag moved to a domain: refused by that domain's ring.
        moved = tags["user@a.example"].replace("@a.example", "@b.example")
        rc, out, _ = self.cfg("verify", moved)
        self.assertEqual((rc, out.split()[0]), (1, "bad_signature"))
        rc, out, _ = self.cfg("verify", "<" + tags["user@b.example"] + ">")
        self.assertEqual(rc, 0, out)
        # --domain wins over the address: the ring named is the one used.
        self.assertEqual(self.cfg("--domain", "a.example", "verify", tags["user@b.example"])[0], 3)
        # No subdomain match: mail.a.example is the default ring's.
        rc, out, _ = self.cfg("sign", "user@mail.a.example")
        self.assertTrue(out.startswith("prvs=3"), out)

    def test_refusals(self):
        # A domain the config does not know: refused, nothing written (a typo must not rotate the
        # default ring).
        before = listing(self.default)
        rc, _, err = self.cfg("--domain", "a.exampel", "rotate")
        self.assertEqual(rc, 64, err)
        self.assertIn("a.exampel is in neither domains.sign, domains.verify nor any [[domain_keys]]", err)
        self.assertTrue(err.endswith("try batv-keys rotate --help\n"), err)
        self.assertEqual(listing(self.default), before)
        self.assertEqual(self.cfg("--domain", "bad..domain", "list")[0], 64)
        # --domain needs --config and excludes --keys.
        rc, _, err = self.cfg("--keys", self.default, "--domain", "a.example", "list")
        self.assertEqual(rc, 64, err)
        self.assertIn("--domain and --keys exclude each other", err)
        p = run_checked([BIN, "--domain", "a.example", "list"], timeout=30)
        self.assertEqual(p.returncode, 64, p.stderr)
        self.assertIn(b"--domain needs --config", p.stderr)
        # A ring whose file is missing: 66, naming the file.
        os.unlink(self.a)
        rc, _, err = self.cfg("--domain", "a.example", "list")
        self.assertEqual(rc, 66, err)
        self.assertIn(self.a, err)
        # Too open: 77 for that ring, the others still work.
        os.chmod(self.b, 0o644)
        self.assertEqual(self.cfg("--domain", "b.example", "list")[0], 77)
        self.assertEqual(self.cfg("--domain", "example.com", "list")[0], 0)


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args, rest = ap.parse_known_args()
    BIN = args.bin
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
