#!/usr/bin/env python3
"""batv-relay --check-config end to end, with the shipped example config and real key files.

Usage: test_check_config.py --relay PATH --keys PATH/batv-keys --source SRC_DIR
"""
import argparse
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
from harness import run_checked  # noqa: E402  (a sanitizer finding in any run fails the test)

RELAY = KEYS = SRC = None


def check(config):
    p = run_checked([RELAY, "--check-config", config], timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


class CheckConfigTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.d = self.dir.name
        with open(os.path.join(SRC, "conf", "batv-relay.example.toml")) as f:
            self.example = f.read()
        # The example names a relative key file: "keys.toml" beside the config.
        self.assertRegex(self.example, r'(?m)^key_file = "keys\.toml"')
        self.config = os.path.join(self.d, "relay.toml")
        with open(self.config, "w") as f:
            f.write(self.example)
        self.keyfile = os.path.join(self.d, "keys.toml")

    def tearDown(self):
        self.dir.cleanup()

    def rotate(self):
        p = run_checked([KEYS, "--keys", self.keyfile, "rotate"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_example_config_with_keys_is_ok(self):
        self.rotate()
        self.assertEqual(check(self.config), (0, "configuration OK\n", ""))

    def test_missing_key_file(self):
        rc, out, err = check(self.config)
        self.assertEqual(rc, 78)
        self.assertEqual(out, "")
        self.assertEqual(err, f"{self.keyfile}: no such key file (key_file, set in {self.config})\n")

    def test_too_open_key_file(self):
        self.rotate()
        os.chmod(self.keyfile, 0o640)
        rc, _, err = check(self.config)
        self.assertEqual(rc, 78)
        self.assertIn("permissions 0640 are too open", err)
        self.assertIn(f"chmod 600 {self.keyfile}", err)

    def test_unreadable_key_file(self):
        if os.geteuid() == 0:
            # root reads anything; a directory in its place is unreadable as a key file for all.
            os.mkdir(self.keyfile)
            rc, _, err = check(self.config)
            self.assertEqual(rc, 78)
            self.assertIn("not a regular file", err)
        else:
            self.rotate()
            os.chmod(self.keyfile, 0o000)
            rc, _, err = check(self.config)
            self.assertEqual(rc, 78)
            self.assertIn("cannot open key file", err)

    def test_broken_key_file_names_line(self):
        with open(self.keyfile, "w") as f:
            f.write('[[key]]\nid = 3\nstate = "signing"\nsecret = "!!"\ncreated = 2026-01-01T00:00:00Z\n')
        os.chmod(self.keyfile, 0o600)
        rc, _, err = check(self.config)
        self.assertEqual(rc, 78)
        self.assertIn(f"{self.keyfile}:4:10: key[0].secret: not valid base64", err)

    def test_all_config_errors_reported_together(self):
        self.rotate()
        broken = self.example.replace("lifetime_days = 7", "lifetime_days = 31", 1)
        broken = broken.replace('hash = "exact"', 'hash = "sha256"', 1)
        broken += "\nbogus_key = 1\n"
        self.assertNotEqual(broken, self.example)
        with open(self.config, "w") as f:
            f.write(broken)
        rc, out, err = check(self.config)
        self.assertEqual(rc, 78)
        self.assertEqual(out, "")
        lines = err.strip().split("\n")
        self.assertGreaterEqual(len(lines), 3, err)
        for line in lines:
            self.assertRegex(line, "^" + re.escape(self.config) + r":\d+:\d+: ")
        self.assertIn("lifetime_days", err)
        self.assertIn("hash", err)
        self.assertIn("bogus_key", err)

    def test_syntax_error_and_missing_file(self):
        with open(self.config, "w") as f:
            f.write("key_file = \n")
        rc, _, err = check(self.config)
        self.assertEqual(rc, 78)
        self.assertRegex(err, "^" + re.escape(self.config) + r":1:\d+: ")
        rc, _, err = check(os.path.join(self.d, "absent.toml"))
        self.assertEqual(rc, 78)
        self.assertIn("absent.toml", err)

    def test_usage_and_version(self):
        p = run_checked([RELAY], timeout=30)
        self.assertEqual(p.returncode, 64)
        p = run_checked([RELAY, "--version"], timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assertRegex(p.stdout.decode(), r"^batv-relay \d+\.\d+\.\d+\n$")


def main():
    global RELAY, KEYS, SRC
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--source", required=True)
    args, rest = ap.parse_known_args()
    RELAY, KEYS, SRC = args.relay, args.keys, args.source
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)


if __name__ == "__main__":
    main()
