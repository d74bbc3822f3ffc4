#!/usr/bin/env python3
"""The manual pages against the programs they document.

Usage: test_manpages.py --relay PATH/batv-relay --keys PATH/batv-keys --man-dir BUILD/man
                        --source SRC

  - `man --warnings -l` renders each built page (build/man/*.[58]) without a warning;
  - batv-keys(8): every command and every exit code that `batv-keys --help` lists has an entry
    in COMMANDS (`*rotate*`) and EXIT STATUS (`*64*`), and the page lists none that the help
    does not; every option of the help (--now, ...) appears in OPTIONS;
  - batv-relay(8): every option of `batv-relay --help` has an entry in OPTIONS;
  - the pages name each other and the packaged paths consistently (SEE ALSO).
Key and default coverage of batv-relay.toml(5) is checked against the loader itself by the unit
test tests/unit/config_manpage_test.cpp.
"""
import argparse
import os
import re
import subprocess
import sys
import unittest

ARGS = None


def run(cmd, **kw):
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, **kw)


def sections(scd):
    """{SECTION NAME: [lines]} of an scdoc source ("# NAME" headings)."""
    out, current = {}, None
    for line in scd.splitlines():
        if line.startswith("# "):
            current = line[2:].strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def entries(lines):
    """The bold words that start an entry line: "*rotate*", "*import* *--id* _N_" -> rotate, ..."""
    out = []
    for line in lines:
        m = re.match(r"^\*([^*]+)\*", line)
        if m:
            out.append(m.group(1).replace("\\", ""))
    return out


SECTION_ALIASES = {"subcommands": "commands", "positionals": "arguments"}


def help_sections(text):
    """{"commands": [...], "options": [...], "exit codes": [...]} from a usage text whose sections
    start with "NAME:" at column 0 (any case; CLI11 writes "SUBCOMMANDS:" and "OPTIONS:") and list
    one item per line indented by two spaces (continuation lines are indented deeper). An option
    item "-h,--help" or "-h, --help" gives both names."""
    out, current = {}, None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z][A-Za-z ]*):\s*$", line)
        if m:
            name = m.group(1).lower()
            current = SECTION_ALIASES.get(name, name)
            out.setdefault(current, [])
            continue
        m = re.match(r"^  (\S+(?:, -\S+)*)", line)
        if current and m:
            if current == "options":
                out[current].extend(x for x in re.split(r",\s*", m.group(1)) if x.startswith("-"))
            else:
                out[current].append(m.group(1).rstrip(","))
    return out


def help_exit_codes(text):
    """The exit codes a help text lists after "exit codes:" (any case), up to the next blank line
    or section: one per indented line ("  64  usage error") or a paragraph ("0 ok; 1 refused;
    verify 1-4 ...; 64 usage"), ranges expanded."""
    m = re.search(r"(?im)^exit codes:", text)
    if not m:
        return []
    block = []
    for line in text[m.end():].splitlines()[0:]:
        if block and (not line.strip() or re.match(r"^[A-Za-z][A-Za-z ]*:\s*$", line)):
            break
        block.append(line)
    codes = set()
    for a, b in re.findall(r"(?<![\w/.-])(\d+)(?:-(\d+))?(?![\w/.-])", "\n".join(block)):
        codes.update(range(int(a), int(b or a) + 1))
    return sorted(codes)


def read(path):
    with open(path) as f:
        return f.read()


class ManPages(unittest.TestCase):

    def page_src(self, rel):
        return read(os.path.join(ARGS.source, rel))

    def test_man_renders_without_warnings(self):
        pages = sorted(p for p in os.listdir(ARGS.man_dir) if re.search(r"\.[58]$", p))
        self.assertEqual(pages, ["batv-keys.8", "batv-relay.8", "batv-relay.toml.5"])
        for p in pages:
            with self.subTest(page=p):
                r = run(["man", "--warnings", "-l", os.path.join(ARGS.man_dir, p)],
                        env=dict(os.environ, MANWIDTH="80", PAGER="cat"))
                self.assertEqual(r.returncode, 0, r.stderr.decode())
                self.assertEqual(r.stderr.decode(), "", "man --warnings: %s" % p)
                text = re.sub(rb".\x08", b"", r.stdout)  # overstrike bold and underline
                self.assertIn(b"\nNAME\n", text)
                # The gzipped copy that is installed is the same page.
                gz = os.path.join(ARGS.man_dir, p + ".gz")
                self.assertTrue(os.path.exists(gz), gz)
                self.assertEqual(run(["gzip", "-dc", gz]).stdout, read(os.path.join(ARGS.man_dir, p)).encode())

    def test_batv_keys_commands_and_exit_codes(self):
        r = run([ARGS.keys, "--help"])
        self.assertEqual(r.returncode, 0)
        text = r.stdout.decode()
        h = help_sections(text)
        for s in ("commands", "options"):
            self.assertIn(s, h, "batv-keys --help has no %r section:\n%s" % (s, text))
            self.assertTrue(h[s], s)
        help_codes = help_exit_codes(text)
        self.assertTrue(help_codes, "batv-keys --help lists no exit codes:\n" + text)
        page = sections(self.page_src("tools/batv-keys.8.scd"))
        commands = entries(page["COMMANDS"])
        codes = entries(page["EXIT STATUS"])
        options_text = "\n".join(page["OPTIONS"] + page["COMMANDS"])
        self.assertEqual(sorted(c.split("*")[0].strip() for c in commands), sorted(h["commands"]),
                         "batv-keys(8) COMMANDS vs batv-keys --help")
        self.assertEqual(sorted(int(c) for c in codes), help_codes,
                         "batv-keys(8) EXIT STATUS vs batv-keys --help")
        # Every option of the help, and of each command's own help, is in the page.
        options = set(h["options"])
        for cmd in h["commands"]:
            rc = run([ARGS.keys, cmd, "--help"])
            self.assertEqual(rc.returncode, 0, "%s --help: %s" % (cmd, rc.stderr.decode()))
            options.update(help_sections(rc.stdout.decode()).get("options", []))
        for opt in sorted(options):
            self.assertIn("*%s*" % opt, options_text, "batv-keys(8) lacks option %s" % opt)
        # Each exit code the help lists is one the program really uses: a usage error is 64,
        # a missing key file 66, verify of an untagged address 4.
        missing = os.path.join(os.path.dirname(ARGS.man_dir), "no-such-keys.toml")
        self.assertEqual(run([ARGS.keys, "--bogus"]).returncode, 64)
        self.assertEqual(run([ARGS.keys, "--keys", missing, "list"]).returncode, 66)

    def test_batv_relay_options(self):
        r = run([ARGS.relay, "--help"])
        self.assertEqual(r.returncode, 0)
        opts = sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", r.stdout.decode())))
        self.assertTrue(opts)
        page = sections(self.page_src("relay/batv-relay.8.scd"))
        documented = entries(page["OPTIONS"])
        for o in opts:
            self.assertIn(o, documented, "batv-relay(8) OPTIONS lacks %s" % o)
        for o in documented:
            for word in re.findall(r"--[a-z-]+", o):
                self.assertIn(word, opts + ["--help"], "batv-relay(8) documents %s, unknown to --help" % word)
        # Exit codes of the page: 78 for a bad config is real.
        bad = os.path.join(os.path.dirname(ARGS.man_dir), "no-such-relay.toml")
        self.assertEqual(run([ARGS.relay, "--check-config", bad]).returncode, 78)
        self.assertIn("78", entries(page["EXIT STATUS"]))

    def test_cross_references(self):
        for rel, others in (("relay/batv-relay.8.scd", ("batv-keys*(8)", "batv-relay.toml*(5)")),
                            ("tools/batv-keys.8.scd", ("batv-relay*(8)", "batv-relay.toml*(5)")),
                            ("conf/batv-relay.toml.5.scd", ("batv-relay*(8)", "batv-keys*(8)"))):
            see_also = "\n".join(sections(self.page_src(rel))["SEE ALSO"])
            for o in others:
                self.assertIn("*" + o, see_also, rel)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--relay", required=True)
    ap.add_argument("--keys", required=True)
    ap.add_argument("--man-dir", required=True)
    ap.add_argument("--source", required=True)
    ARGS, rest = ap.parse_known_args()
    unittest.main(argv=[sys.argv[0]] + rest, verbosity=2)
