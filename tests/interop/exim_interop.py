#!/usr/bin/env python3
"""Live BATV prvs interop test: Exim's ${prvs}/${prvscheck} against batv-relay's crypto library.

    exim_interop.py --exim-dir DIR --oracle PATH [--count N] [--seed S]

DIR is prepared by tests/interop/fetch-exim.sh (an unpacked, not installed, Debian 12 Exim plus a
`run-exim` wrapper); PATH is the prvs-oracle binary (tests/prvs-oracle.cpp). Python stdlib only.

For N random cases (random UTC day 2020-2040, fixed groups on the days around the 999 -> 000 DDD
wrap, random time of day including the midnight edges, key id 0-9, a 1-64 byte printable secret
without Exim's expansion metacharacters { } $ \\, a random address with a mixed-case local part):
  a)  Exim signs under a frozen faketime clock; the oracle must verify the tag as "valid ADDR", both
      at signing time and on a random later day inside the 7-day window.
  b)  the oracle signs at the same clock: its tag must be byte-identical to Exim's (the domains are
      lowercase) and Exim's ${prvscheck} must accept it ($prvscheck_result = 1), at signing time
      and on the later day.
  c)  negatives: one signature hex digit flipped -> Exim rejects it and the oracle says
      bad_signature; 8 days after signing the oracle says expired (Exim's window differs, see
      docs/batv-spec.md section 2, so only our verdict is checked); the tag with "PRVS=" and hex
      upper-cased still verifies for us (the spec accepts either case).
Every Exim tag is also recomputed with Python's hmac, so a mismatch report says which side is off.

Exim runs once per clock with many expressions (`exim -be` prints one line per argument); each line
is prefixed with its index and Exim's own $tod_epoch is checked against the intended clock.

Exit status: 0 all agree, 1 any mismatch (the first ones are printed), 77 Exim not available (ctest
SKIP_RETURN_CODE), 2 usage.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import hmac
import os
import random
import re
import shutil
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field

SKIP = 77
DAY = 86400
LIFETIME = 7

# Printable ASCII without the characters that are special inside an Exim expansion argument.
SECRET_ALPHABET = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "{}$\\")
LOCAL_ALPHABET = string.ascii_letters + string.digits + ".+-_"
DOMAIN_ALPHABET = string.ascii_lowercase + string.digits

FIRST_DAY = (datetime.date(2020, 1, 1) - datetime.date(1970, 1, 1)).days  # 18262
LAST_DAY = (datetime.date(2040, 12, 31) - datetime.date(1970, 1, 1)).days  # 25932

# Clocks that always get a group of their own: the spec's wrap epochs (day 19999 signs DDD 006,
# day 19992 signs DDD 999), then for every DDD wrap in 2020-2040 the signing days that produce
# DDD 999 and 000 (d = 992, 993 mod 1000) and the last day before the wrap, plus midnight edges.
FIXED_EPOCHS = [1727956800, 1727352000, 1700000000]
for _w in range(19000, LAST_DAY, 1000):
    FIXED_EPOCHS += [(_w - 8) * DAY + 43210, (_w - 7) * DAY + 3600, (_w - 1) * DAY + 86399]
FIXED_EPOCHS += [19993 * DAY, 19994 * DAY + 86399, 20000 * DAY + 1]


def utc(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def ref_tag(secret: bytes, key_id: int, epoch: int, address: str, lifetime: int = LIFETIME) -> str:
    """The prvs tag per docs/batv-spec.md section 1, computed with Python's hmac."""
    ddd = "%03d" % ((epoch // DAY + lifetime) % 1000)
    mac = hmac.new(secret, f"{key_id}{ddd}{address}".encode("latin-1"), hashlib.sha1).hexdigest()
    local, _, domain = address.rpartition("@")
    return f"prvs={key_id}{ddd}{mac[:6]}={local}@{domain}"


def flip_hex(tag: str, rng: random.Random) -> str:
    """The tag with one of the six signature hex digits changed (positions 9-14 of "prvs=KDDDSSSSSS=")."""
    pos = 9 + rng.randrange(6)
    new = rng.choice([c for c in "0123456789abcdef" if c != tag[pos].lower()])
    return tag[:pos] + new + tag[pos + 1:]


def upper_tag(tag: str) -> str:
    """ "PRVS=" and the signature hex digits upper-cased; the address is unchanged."""
    return "PRVS=" + tag[5:15].upper() + tag[15:]


# --- random inputs ---------------------------------------------------------------------------------

def random_secret(rng: random.Random) -> bytes:
    n = rng.choice([1, 64, rng.randint(1, 64), rng.randint(1, 64), rng.randint(8, 40)])
    return "".join(rng.choice(SECRET_ALPHABET) for _ in range(n)).encode()


def random_local(rng: random.Random, alphabet: str = LOCAL_ALPHABET) -> str:
    n = rng.choice([1, 48, rng.randint(1, 48), rng.randint(1, 48), rng.randint(3, 20)])
    while True:
        local = "".join(rng.choice(alphabet) for _ in range(n))
        # A local part starting with "prvs" could not be told apart from a tag by the prefix rule.
        if not local.lower().startswith("prvs"):
            return local


def random_domain(rng: random.Random) -> str:
    labels = []
    for _ in range(rng.randint(1, 3)):
        n = rng.randint(1, 12)
        label = "".join(rng.choice(DOMAIN_ALPHABET) for _ in range(n))
        if n > 2 and rng.random() < 0.3:
            i = rng.randrange(1, n - 1)
            label = label[:i] + "-" + label[i + 1:]
        labels.append(label)
    labels.append(rng.choice(["com", "org", "net", "de", "example", "co.uk", "test"]))
    return ".".join(labels)


def random_tod(rng: random.Random) -> int:
    # The clock is frozen (faketime -f "YYYY-mm-dd HH:MM:SS"), so the midnight edges are safe.
    return rng.choice([0, 1, 86399, rng.randrange(DAY), rng.randrange(DAY), rng.randrange(DAY)])


def random_epoch(rng: random.Random) -> int:
    return rng.randint(FIRST_DAY, LAST_DAY) * DAY + random_tod(rng)


# --- Exim ------------------------------------------------------------------------------------------

class EximUnavailable(Exception):
    pass


class EximError(Exception):
    pass


class Exim:
    """Runs DIR/run-exim -be under a frozen faketime clock, several expressions per process."""

    def __init__(self, exim_dir: str):
        self.run_exim = os.path.join(exim_dir, "run-exim")
        self.exim_dir = exim_dir
        self.faketime = shutil.which("faketime")
        self.invocations = 0

    def check_available(self) -> None:
        if not (os.path.isfile(self.run_exim) and os.access(self.run_exim, os.X_OK)):
            raise EximUnavailable(f"no {self.run_exim} (run tests/interop/fetch-exim.sh {self.exim_dir})")
        if not self.faketime:
            raise EximUnavailable("faketime is not installed (apt-get install faketime)")
        try:
            out = self._run(1700000000, ["${prvs{user@example.com}{secretkey}{3}}"], check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise EximUnavailable(f"cannot run {self.run_exim}: {e}") from e
        if out is None:
            raise EximUnavailable(f"{self.run_exim} does not run (see the output above)")
        if out != ["prvs=368291fcbb=user@example.com"]:
            raise EximError(f"Exim's smoke test (spec vector 1) gave {out!r}")

    def version(self) -> str:
        """ "4.96 (Debian exim4-daemon-light 4.96-15+deb12u10)", or what can be found of it."""
        ver = "unknown"
        try:
            out = subprocess.run([self.run_exim, "-bV"], capture_output=True, text=True, timeout=30).stdout
            m = re.search(r"Exim version (\S+)", out)
            if m:
                ver = m.group(1)
        except (OSError, subprocess.SubprocessError):
            pass
        debs = os.path.join(self.exim_dir, "debs")
        try:
            for f in sorted(os.listdir(debs)):
                if f.startswith("exim4-daemon-light_") and f.endswith(".deb"):
                    pkg = subprocess.run(["dpkg-deb", "-f", os.path.join(debs, f), "Version"],
                                         capture_output=True, text=True, timeout=30).stdout.strip()
                    if pkg:
                        ver += f" (Debian exim4-daemon-light {pkg})"
                    break
        except (OSError, subprocess.SubprocessError):
            pass
        return ver

    def _run(self, epoch: int, exprs: list[str], check: bool = True) -> list[str] | None:
        args = [self.faketime, "-f", utc(epoch), self.run_exim, "-be", "<clock>$tod_epoch"]
        args += [f"<{i}>{e}" for i, e in enumerate(exprs)]
        env = dict(os.environ, TZ="UTC")
        env.pop("FAKETIME", None)
        p = subprocess.run(args, capture_output=True, env=env, timeout=120)
        self.invocations += 1
        out = p.stdout.decode("latin-1")
        if p.returncode != 0 and not check:
            sys.stderr.write(out + p.stderr.decode("latin-1", "replace"))
            return None
        results: dict[str, str] = {}
        for line in out.splitlines():
            m = re.match(r"<(clock|\d+)>(.*)$", line)
            if m:
                results[m.group(1)] = m.group(2)
        problems = []
        if p.returncode != 0:
            problems.append(f"exit status {p.returncode}")
        if results.get("clock") != str(epoch):
            problems.append(f"Exim's clock is {results.get('clock')!r}, wanted {epoch} ({utc(epoch)})")
        missing = [i for i in range(len(exprs)) if str(i) not in results]
        if missing:
            problems.append(f"no result for expression {exprs[missing[0]]!r}")
        if problems:
            raise EximError("; ".join(problems) + "\n--- exim stdout:\n" + out +
                            "--- exim stderr:\n" + p.stderr.decode("latin-1", "replace"))
        return [results[str(i)] for i in range(len(exprs))]

    def expand(self, epoch: int, exprs: list[str]) -> list[str]:
        out = self._run(epoch, exprs)
        assert out is not None
        return out


def exim_sign_expr(address: str, secret: bytes, key_id: int) -> str:
    return "${prvs{%s}{%s}{%d}}" % (address, secret.decode(), key_id)


def exim_check_expr(tag: str, secret: bytes) -> str:
    # $prvscheck_result is "1" for a valid tag (signature and Exim's expiry rule), empty otherwise.
    return "${prvscheck{%s}{%s}{[$prvscheck_result]$prvscheck_address}}" % (tag, secret.decode())


def run_oracle(path: str, lines: list[str]) -> list[str]:
    """One oracle process for a whole batch: all questions in, one answer line each out."""
    p = subprocess.run([path], input="".join(l + "\n" for l in lines), capture_output=True,
                       text=True, timeout=300)
    answers = p.stdout.splitlines()
    if p.returncode != 0 or len(answers) != len(lines):
        raise RuntimeError(f"prvs-oracle exited {p.returncode} after {len(answers)} of {len(lines)} "
                           f"answers; stderr: {p.stderr.strip()}")
    return answers


# --- the test --------------------------------------------------------------------------------------

@dataclass
class Case:
    epoch: int
    secret: bytes
    key_id: int
    address: str
    later: int = 0    # a clock 1-7 days later, inside the window
    expired: int = 0  # a clock 8 days later (day after the expiry day)
    flip_seed: int = 0
    exim_tag: str = ""
    oracle_tag: str = ""

    def describe(self) -> str:
        return (f"clock {self.epoch} ({utc(self.epoch)} UTC, day {self.epoch // DAY}) K={self.key_id} "
                f"secret={self.secret.decode()!r} (hex {self.secret.hex()}) address={self.address!r}")


@dataclass
class Mismatch:
    check: str
    case: Case
    lines: list[tuple[str, str]] = field(default_factory=list)


def make_cases(count: int, rng: random.Random, per_clock: int = 5) -> list[Case]:
    cases = []
    later_for: dict[int, int] = {}
    epochs = list(FIXED_EPOCHS)
    while len(epochs) * per_clock < count:
        epochs.append(random_epoch(rng))
    for i in range(count):
        epoch = epochs[i % len(epochs)]
        address = f"{random_local(rng)}@{random_domain(rng)}"
        day = epoch // DAY
        # One later clock per signing clock (Exim runs once per clock), drawn when first needed.
        if epoch not in later_for:
            later_for[epoch] = (day + rng.randint(1, LIFETIME)) * DAY + random_tod(rng)
        expired = (day + LIFETIME + 1) * DAY + random_tod(rng)
        cases.append(Case(epoch, random_secret(rng), rng.randrange(10), address, later_for[epoch],
                          expired, rng.randrange(1 << 30)))
    return cases


def group_by(cases: list[Case], clock) -> dict[int, list[Case]]:
    groups: dict[int, list[Case]] = {}
    for c in cases:
        groups.setdefault(clock(c), []).append(c)
    return groups


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    exim = Exim(args.exim_dir)
    try:
        exim.check_available()
    except EximUnavailable as e:
        print(f"SKIP: Exim is not available: {e}", file=sys.stderr)
        return SKIP
    if not (os.path.isfile(args.oracle) and os.access(args.oracle, os.X_OK)):
        print(f"FAIL: no prvs-oracle binary at {args.oracle}", file=sys.stderr)
        return 1

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    rng = random.Random(seed)
    cases = make_cases(args.count, rng)
    mismatches: list[Mismatch] = []
    checks = 0

    def expect(check: str, case: Case, ok: bool, *lines: tuple[str, str]) -> None:
        nonlocal checks
        checks += 1
        if not ok:
            mismatches.append(Mismatch(check, case, list(lines)))

    # 1. Exim signs, one process per clock.
    for epoch, group in group_by(cases, lambda c: c.epoch).items():
        tags = exim.expand(epoch, [exim_sign_expr(c.address, c.secret, c.key_id) for c in group])
        for c, tag in zip(group, tags):
            c.exim_tag = tag

    # 2. The oracle (one process): sign, and verify Exim's tags and their variants.
    q: list[str] = []
    for c in cases:
        h = c.secret.hex()
        flipped = flip_hex(c.exim_tag, random.Random(c.flip_seed)) if c.exim_tag.startswith("prvs=") else c.exim_tag
        q += [f"sign {h} {c.key_id} {c.epoch} {c.address}",
              f"verify {h} {c.key_id} {c.epoch} {LIFETIME} {c.exim_tag}",
              f"verify {h} {c.key_id} {c.later} {LIFETIME} {c.exim_tag}",
              f"verify {h} {c.key_id} {c.expired} {LIFETIME} {c.exim_tag}",
              f"verify {h} {c.key_id} {c.epoch} {LIFETIME} {flipped}",
              f"verify {h} {c.key_id} {c.epoch} {LIFETIME} {upper_tag(c.exim_tag)}"]
    answers = run_oracle(args.oracle, q)
    per = 6
    for i, c in enumerate(cases):
        sign_a, valid_a, later_a, expired_a, flipped_a, upper_a = answers[i * per:(i + 1) * per]
        ref = ref_tag(c.secret, c.key_id, c.epoch, c.address)
        c.oracle_tag = sign_a
        expect("Exim's tag equals the Python hmac reference (harness sanity)", c, c.exim_tag == ref,
               ("exim", c.exim_tag), ("reference", ref))
        expect("oracle tag is byte-identical to Exim's", c, sign_a == c.exim_tag,
               ("exim", c.exim_tag), ("oracle", sign_a), ("reference", ref))
        want = f"valid {c.address}"
        expect("oracle verifies Exim's tag at signing time", c, valid_a == want,
               ("tag", c.exim_tag), ("expected", want), ("oracle", valid_a))
        expect("oracle verifies Exim's tag later in the window", c, later_a == want,
               ("clock", f"{c.later} ({utc(c.later)} UTC, day {c.later // DAY})"),
               ("tag", c.exim_tag), ("expected", want), ("oracle", later_a))
        want_exp = f"expired {c.address}"
        expect("oracle says expired 8 days after signing", c, expired_a == want_exp,
               ("clock", f"{c.expired} ({utc(c.expired)} UTC, day {c.expired // DAY})"),
               ("tag", c.exim_tag), ("expected", want_exp), ("oracle", expired_a))
        want_bad = f"bad_signature {c.address}"
        expect("oracle rejects Exim's tag with a flipped hex digit", c, flipped_a == want_bad,
               ("tag", c.exim_tag), ("expected", want_bad), ("oracle", flipped_a))
        expect("oracle accepts PRVS= and upper-case hex", c, upper_a == want,
               ("tag", upper_tag(c.exim_tag)), ("expected", want), ("oracle", upper_a))

    # 3. Exim checks the oracle's tags: at signing time (also a flipped copy) and later.
    signed = [c for c in cases if c.oracle_tag.startswith("prvs=")]
    for epoch, group in group_by(signed, lambda c: c.epoch).items():
        exprs = []
        for c in group:
            flipped = flip_hex(c.oracle_tag, random.Random(c.flip_seed + 1))
            exprs += [exim_check_expr(c.oracle_tag, c.secret), exim_check_expr(flipped, c.secret)]
        out = exim.expand(epoch, exprs)
        for j, c in enumerate(group):
            ok_a, bad_a = out[2 * j], out[2 * j + 1]
            want = f"[1]{c.address}"
            expect("Exim accepts the oracle's tag at signing time", c, ok_a == want,
                   ("tag", c.oracle_tag), ("expected", want), ("exim", ok_a))
            expect("Exim rejects the oracle's tag with a flipped hex digit", c, bad_a == f"[]{c.address}",
                   ("tag", exprs[2 * j + 1]), ("expected", f"[]{c.address}"), ("exim", bad_a))
    for epoch, group in group_by(signed, lambda c: c.later).items():
        out = exim.expand(epoch, [exim_check_expr(c.oracle_tag, c.secret) for c in group])
        for c, got in zip(group, out):
            want = f"[1]{c.address}"
            expect("Exim accepts the oracle's tag later in the window", c, got == want,
                   ("clock", f"{epoch} ({utc(epoch)} UTC, day {epoch // DAY})"),
                   ("tag", c.oracle_tag), ("expected", want), ("exim", got))

    elapsed = time.monotonic() - t0
    summary = (f"{len(cases)} cases, {checks} checks, {exim.invocations} Exim runs, seed {seed}, "
               f"{elapsed:.1f} s")
    if mismatches:
        print(f"FAIL: {len(mismatches)} mismatches ({summary})")
        print(f"reproduce: {sys.argv[0]} --exim-dir {args.exim_dir} --oracle {args.oracle} "
              f"--count {args.count} --seed {seed}")
        for m in mismatches[:args.show]:
            print(f"\n- {m.check}\n    {m.case.describe()}")
            for name, value in m.lines:
                print(f"    {name + ':':<10} {value}")
        if len(mismatches) > args.show:
            print(f"\n... and {len(mismatches) - args.show} more")
        return 1
    print(f"PASS: Exim and batv-relay agree ({summary})")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exim-dir", required=True, help="directory prepared by fetch-exim.sh")
    ap.add_argument("--oracle", required=True, help="the prvs-oracle binary")
    ap.add_argument("--count", type=int, default=300, help="number of random cases (default 300)")
    ap.add_argument("--seed", type=int, help="random seed (default: a fresh one, printed)")
    ap.add_argument("--show", type=int, default=10, help="mismatches to print (default 10)")
    args = ap.parse_args()
    if args.count < 1:
        ap.error("--count must be at least 1")
    try:
        return run(args)
    except EximError as e:
        print(f"FAIL: Exim misbehaved: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
