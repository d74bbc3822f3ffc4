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

    def domain_keys_config(self):
        """The example with two [[domain_keys]] rings (customer.example + www, other.example)."""
        text = self.example.replace(
            'sign = ["example.com"]',
            'sign = ["example.com", "customer.example", "www.customer.example", "other.example"]', 1)
        self.assertNotEqual(text, self.example)
        text = text.replace("\n[[listener]]", '\n[[domain_keys]]\ndomains = ["customer.example", '
                            '"www.customer.example"]\nkey_file = "keys.d/customer.toml"\n'
                            '[[domain_keys]]\ndomains = ["other.example"]\nkey_file = "other.toml"\n'
                            "\n[[listener]]", 1)
        with open(self.config, "w") as f:
            f.write(text)
        os.mkdir(os.path.join(self.d, "keys.d"))
        self.customer = os.path.join(self.d, "keys.d", "customer.toml")
        self.other = os.path.join(self.d, "other.toml")
        self.rotate()
        for path, times in ((self.customer, 2), (self.other, 1)):
            for _ in range(times):
                p = run_checked([KEYS, "--keys", path, "rotate"], timeout=30)
                self.assertEqual(p.returncode, 0, p.stderr)

    def test_domain_keys_every_ring_listed(self):
        self.domain_keys_config()
        rc, out, err = check(self.config)
        self.assertEqual((rc, err), (0, ""), out)
        self.assertEqual(out.splitlines(), [
            "configuration OK",
            f"ring default: {self.keyfile}: 1 key, signing key 0, domains: (every other domain)",
            f"ring customer.example: {self.customer}: 2 keys, signing key 1, domains: customer.example "
            "www.customer.example",
            f"ring other.example: {self.other}: 1 key, signing key 0, domains: other.example",
        ])
        # A staged key shows its switch.
        p = run_checked([KEYS, "--keys", self.other, "rotate", "--at", "+1d"], timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        rc, out, _ = check(self.config)
        self.assertRegex(out, r"(?m)^ring other\.example: .*: 2 keys, signing key 0, key 1 signs from "
                              r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ, domains: other\.example$")

    def test_domain_keys_each_ring_file_checked(self):
        self.domain_keys_config()
        # Too open, missing: each reported with the file and the entry that set it; all at once.
        os.chmod(self.customer, 0o644)
        os.unlink(self.other)
        rc, out, err = check(self.config)
        self.assertEqual((rc, out), (78, ""))
        lines = err.splitlines()
        self.assertEqual(len(lines), 2, err)
        self.assertIn("permissions 0644 are too open", lines[0])
        self.assertIn(f"(domain_keys[0].key_file, set at {self.config}:", lines[0])
        self.assertEqual(lines[1], f"{self.other}: no such key file (domain_keys[1].key_file, set at "
                                   f"{self.config}:{self.entry_line(1)}:1)")

    def entry_line(self, i):
        with open(self.config) as f:
            starts = [n for n, line in enumerate(f, 1) if line.startswith("[[domain_keys]]")]
        return starts[i]

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
