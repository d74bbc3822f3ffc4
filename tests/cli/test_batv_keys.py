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
        # Empty and oversize secrets.
        self.assertEqual(run(self.keys, "import", "--id", "5", stdin=b"\n")[0], 64)
        self.assertEqual(run(self.keys, "import", "--id", "5", stdin=b"x" * 65)[0], 64)
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


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    args, rest = ap.parse_known_args()
    BIN = args.bin
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
