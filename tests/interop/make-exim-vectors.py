#!/usr/bin/env python3
"""Writes tests/data/exim_vectors.tsv: prvs tags signed by a real Exim, for the offline unit test
(tests/unit/prvs_exim_vectors_test.cpp), so the build does not need Exim to check compatibility.

    tests/interop/fetch-exim.sh build/exim
    python3 tests/interop/make-exim-vectors.py --exim-dir build/exim [--out FILE] [--seed S] [--count N]

Deterministic: a fixed seed and Exim's clock frozen with faketime give the same file every time
(for the same Exim version). Rows: secret_hex, key_id, epoch, address, exim_tag; every address has a
lowercase domain (batv-relay lowercases the domain when signing, so its tag must equal Exim's), and
every local part is one batv-relay signs (no "type=value=" meta-syntax, at most 48 octets).
Each Exim tag is recomputed with Python's hmac and re-checked with Exim's ${prvscheck}.
"""
from __future__ import annotations

import argparse
import os
import random
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exim_interop as ei  # noqa: E402  (shared machinery)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "tests", "data", "exim_vectors.tsv")
DEFAULT_SEED = 20240926  # the day of the 999 -> 000 DDD wrap
DAY = ei.DAY

T1 = 1700000000  # the spec's clock: 2023-11-14 22:13:20 UTC, day 19675, DDD 682


def fixed_rows() -> list[tuple[bytes, int, int, str]]:
    """The spec's signing vectors (lowercase domains only) and hand-picked local parts."""
    s = b"secretkey"
    rows = [
        (s, 3, T1, "user@example.com"),
        (s, 0, T1, "user@example.com"),
        (s, 9, T1, "user@example.com"),
        (s, 1, T1, "john.doe@example.com"),
        (s, 1, T1, "John.Doe@example.com"),  # mixed-case local part: hashed as sent
        (s, 2, T1, "user+tag@example.com"),
        (s, 0, T1, "user=x@example.com"),
        (s, 3, 1700006399, "user@example.com"),  # 23:59:59, last second of day 19675
        (s, 3, 1700006400, "user@example.com"),  # 00:00:00, day 19676
        (s, 3, 1727352000, "user@example.com"),  # day 19992: DDD 999
        (s, 3, 1727438400, "user@example.com"),  # day 19993: DDD 000
        (s, 3, 1727956800, "user@example.com"),  # day 19999: DDD 006
    ]
    locals_ = ["a", "A", "x-y", "first.last+list=news-2024", "Mixed.Case+Tag=Val-ue_1",
               "-lead", "trail-", "a=b", "bounce-ME+x=y", "UPPER.CASE.ONLY",
               "0123456789", "a" * 48, "Ab+-=._" * 6 + "xyzQRS", "Sales+EU=de-at",
               "first..last", ".dot", "o'brien", "under_score", "plus+plus+plus", "eq=",
               "=eq"]
    domains = ["example.com", "mail.example.org", "x.test", "a-b.example.co.uk"]
    secrets = [b"k", b"x" * 64, b" leading and trailing ", b"!\"#%&'()*+,-./:;<=>?@[]^_`|~",
               b"0123456789abcdef0123456789abcdef"]
    for i, local in enumerate(locals_):
        rows.append((secrets[i % len(secrets)], i % 10, T1 + i * 7 * DAY + 3 * i,
                     f"{local}@{domains[i % len(domains)]}"))
    # Every day around the wrap, at the midnight edges and midday, all key ids.
    for d in range(19991, 20002):
        for j, tod in enumerate([0, 43200, 86399]):
            rows.append((b"wrap-secret-%d" % (d % 7), (d + j) % 10, d * DAY + tod,
                         f"Wrap.{d}+{j}@example.com"))
    return rows


def random_rows(rng: random.Random, count: int) -> list[tuple[bytes, int, int, str]]:
    alphabet = ei.LOCAL_ALPHABET + "="
    rows = []
    for _ in range(count):
        while True:
            local = ei.random_local(rng, alphabet)
            if local.count("=") <= 1:  # two "=" may form the "type=value=" meta-syntax
                break
        epoch = ei.random_epoch(rng)
        rows.append((ei.random_secret(rng), rng.randrange(10), epoch,
                     f"{local}@{ei.random_domain(rng)}"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exim-dir", required=True, help="directory prepared by fetch-exim.sh")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output file (default tests/data/exim_vectors.tsv)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    ap.add_argument("--count", type=int, default=200, help="total rows, at least the fixed ones (default 200)")
    args = ap.parse_args()

    exim = ei.Exim(args.exim_dir)
    try:
        exim.check_available()
    except ei.EximUnavailable as e:
        print(f"make-exim-vectors: Exim is not available: {e}", file=sys.stderr)
        return ei.SKIP
    except ei.EximError as e:
        print(f"make-exim-vectors: {e}", file=sys.stderr)
        return 1

    rows = fixed_rows()
    rows += random_rows(random.Random(args.seed), max(0, args.count - len(rows)))
    for secret, k, epoch, address in rows:
        local, _, domain = address.rpartition("@")
        assert 1 <= len(secret) <= 64 and not set(secret.decode()) & set("{}$\\"), secret
        assert domain == domain.lower() and 1 <= len(local) <= 48, address
        assert "\t" not in address and " " not in address, address

    # Sign with Exim, grouped by clock (Exim runs once per clock).
    groups: dict[int, list[int]] = {}
    for i, (_, _, epoch, _) in enumerate(rows):
        groups.setdefault(epoch, []).append(i)
    tags = [""] * len(rows)
    for epoch, idx in groups.items():
        out = exim.expand(epoch, [ei.exim_sign_expr(rows[i][3], rows[i][0], rows[i][1]) for i in idx])
        for i, tag in zip(idx, out):
            tags[i] = tag

    # Cross-check: Python's hmac, and Exim's own ${prvscheck} at the same clock.
    bad = 0
    for i, (secret, k, epoch, address) in enumerate(rows):
        ref = ei.ref_tag(secret, k, epoch, address)
        if tags[i] != ref:
            print(f"row {i}: Exim {tags[i]!r} != reference {ref!r} ({address!r}, {epoch})", file=sys.stderr)
            bad += 1
    for epoch, idx in groups.items():
        out = exim.expand(epoch, [ei.exim_check_expr(tags[i], rows[i][0]) for i in idx])
        for i, got in zip(idx, out):
            if got != f"[1]{rows[i][3]}":
                print(f"row {i}: Exim's prvscheck of {tags[i]!r} gave {got!r}", file=sys.stderr)
                bad += 1
    if bad:
        print(f"make-exim-vectors: {bad} inconsistencies, not writing {args.out}", file=sys.stderr)
        return 1

    script = os.path.relpath(os.path.abspath(sys.argv[0]), REPO)
    command = " ".join(shlex.quote(a) for a in ["python3", script] + sys.argv[1:])
    tmp = args.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(tmp, "w", encoding="ascii", newline="\n") as f:
        f.write(f"# Generated by `{command}` (in the repository root, after tests/interop/fetch-exim.sh) "
                f"with Exim {exim.version()}: ${{prvs{{ADDR}}{{SECRET}}{{K}}}} under a frozen faketime "
                f"clock (UTC), lifetime 7 days; each tag re-checked with Python hmac and Exim ${{prvscheck}}.\n")
        f.write("# secret_hex\tkey_id\tepoch\taddress\texim_tag\n")
        for (secret, k, epoch, address), tag in zip(rows, tags):
            f.write(f"{secret.hex()}\t{k}\t{epoch}\t{address}\t{tag}\n")
    os.replace(tmp, args.out)
    print(f"make-exim-vectors: wrote {len(rows)} rows to {args.out} ({exim.invocations} Exim runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
