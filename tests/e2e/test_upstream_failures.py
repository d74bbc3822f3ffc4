#!/usr/bin/env python3
"""Failing next hops: a systematic fault matrix through the real batv-relay binary.

Usage: test_upstream_failures.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

The contract under test (README "How a session goes", relay/replies.hpp):
  * the client gets 250 after the end of data (DATA dot or BDAT LAST) only when the next hop
    answered 250 to the end of data of that very message, and the next hop then holds the
    complete bytes;
  * the relay's own trouble with the next hop (refused, closed, reset, timed out, garbage,
    oversize, endless or mixed-code replies, replies to nothing it sent) is a 4xx with an RFC 3463
    network code: 421 4.4.1 at connect (no next hop), 451 4.4.2 (connection lost or timed out),
    451 4.4.0 (invalid reply); when the next hop is lost between commands the session then ends
    with 421 4.4.2, while a loss in the body only fails that message (the next one reconnects);
  * the next hop's own 4xx/5xx replies are passed through unchanged (a 4xx stays a 4xx);
  * nothing waits longer than the configured timeouts, and the relay serves the next session.

One relay process serves every row: LANES pairs of listeners (outbound signing, and inbound
verifying with forward_client = "xclient" and upstream_connect = "connect": the next hop opens at
connect, so the connect and set-up rows hold for both roles; the inbound default, opening at the
first MAIL, is tested in test_connect_at_mail.py) each towards its own ScriptedUpstream (which offers
XCLIENT), plus a listener towards a STARTTLS-capable upstream and two towards a closed port. The
lanes run rows in parallel; each row sets its faults on its lane's upstream for the row's own
next-hop connection only (fault_conns), runs one client session and checks it.

Row = role (out, in) x body (DATA, BDAT) x position (first message of the session, or second
after a clean first) x stage x fault kind (the kind tuples and build_matrix() below). The client acts
as an MTA would: it stops sending recipients' data when no RCPT was accepted, sends RSET after a
refused DATA or BDAT chunk, QUITs after a 421. After the faulty message it checks the session as
designed: still usable (faults cleared, a third message gets through, reconnecting if need be) or
closed with 421. Reconnect rows lose the first next-hop connection at the first message's dot
and fault the second connection as it is set up (greeting, EHLO, XCLIENT, the EHLO after it, or
an EHLO without CHUNKING for a BDAT message). Connect rows: refused, and a connect timeout (a
listener whose accept queue is full).

Besides the matrix: a next hop gone for good mid-session; what an inbound client is offered after
XCLIENT; a BDAT LAST refused by the relay must end the next hop's transaction (the scripted next
hop refuses a nested MAIL, as Postfix); and a few cases with Python's smtplib and swaks as the
client, checking what their user sees (exception, exit code).

Set BATV_E2E_LOGS=1 to print every relay log; the log tail of a failed test is always printed.
BATV_E2E_ROWS=REGEX runs only the matrix rows whose name matches (e.g. "bdat/msg2/DOT").
"""
import os
import queue
import re
import smtplib
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DEFAULT_CAPS, HOST, BoundClient, KeyFile, Relay, RelayLogMixin,  # noqa: E402
                     ScriptedUpstream, closed_port, run_tests, tmpdir, wait_until)
import tlsutil  # noqa: E402

RELAY = KEYS = None
SWAKS = "/usr/bin/swaks"

REPLY_T = 1          # timeouts.upstream_reply (and write timeout towards the next hop)
DOT_T = 2            # timeouts.upstream_data_reply
# upstream_idle 0: each row's faults belong to its own next-hop connection, so no connection may
# pass from one session (row) to the next (reuse is tested in test_outbound.UpstreamReuseTest).
TIMEOUTS = {"idle": 8, "command": 8, "data": 20, "upstream_connect": 2,
            "upstream_reply": REPLY_T, "upstream_data_reply": DOT_T, "shutdown_grace": 1,
            "upstream_idle": 0}
SLACK = 1.5          # scheduling slack on a loaded 2-core machine
CLIENT_TIMEOUT = 10  # no client read waits longer: a row that needs more is a hang
LANES = 6

XCLIENT_CAP = "XCLIENT ADDR PORT PROTO HELO"
CAPS = tuple(DEFAULT_CAPS) + (XCLIENT_CAP,)
CAPS_NOPIPE = tuple(c for c in CAPS if c != "PIPELINING")

ROLES = {"out": ("homer@example.com", ("bart@elsewhere.org", "lisa@elsewhere.org")),
         "in": ("alice@remote.example", ("bob@example.com", "carol@example.com"))}

CHUNK1 = 10240       # BDAT: first chunk; the rest goes with LAST
MID = 4000           # mid-DATA fault point (inside the first BDAT chunk too)
BIG = 24 * 1024 * 1024   # body for next hops that stop reading: more than the socket buffers

# Fault kinds -> what the client must see when the relay itself gives up on the next hop.
OURS = {"close": "4.4.2", "hangup": "4.4.2", "reset": "4.4.2", "stall": "4.4.2", "deaf": "4.4.2",
        "drip_slow": "4.4.2", "garbage": "4.4.0", "endless": "4.4.0", "longline": "4.4.0",
        "longmulti": "4.4.0", "mixed": "4.4.0", "mixed45": "4.4.0", "extra": "4.4.0",
        "early": "4.4.0"}
TIMEOUT_KINDS = ("stall", "drip_slow", "deaf")   # 4.4.2 "timed out", not "connection lost"
FINE = ("drip_ok", "slow_ok")              # slow but within the timeouts: must just work
PASS = ("4xx", "5xx", "5xx_multi")         # the next hop's own verdict: passed through
HANG = ("421hang",)                        # 421 and close, as a next hop shutting down does
COMMAND_KINDS = ("close", "reset", "stall", "drip_slow", "garbage", "endless", "longline",
                 "longmulti", "mixed", "mixed45", "extra", "hangup") + FINE + PASS + HANG
MID_KINDS = ("close", "reset", "stall", "early")

DEFAULT_REPLY = {"GREETING": ScriptedUpstream.GREETING, "XCLIENT": ScriptedUpstream.GREETING,
                 "MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok",
                 "DATA": "354 End data with <CR><LF>.<CR><LF>", "DOT": "250 2.0.0 Ok: queued",
                 "BDAT": "250 2.0.0 Ok: %d octets" % CHUNK1, "RSET": "250 2.0.0 Ok",
                 "NOOP": "250 2.0.0 Ok", "QUIT": "221 2.0.0 Bye",
                 "STARTTLS": "220 2.0.0 Ready to start TLS"}
REAL_VERDICT = "554 5.6.0 the real verdict on this message"
EXTRA = "250 2.0.0 a reply to a command never sent"


def stage_base(stage):
    return stage.upper().split(":")[0]


def ehlo_reply(caps):
    names = ["upstream.test"] + list(caps)
    return "\r\n".join(("250 " if i == len(names) - 1 else "250-") + n for i, n in enumerate(names))


def good_code(stage):
    return {"GREETING": "220", "XCLIENT": "220", "DATA": "354", "QUIT": "221", "STARTTLS": "220"}.get(
        stage_base(stage), "250")


def fault_spec(stage, kind, caps):
    """set_faults() keyword arguments for one fault kind at one stage."""
    s = stage
    base = stage_base(stage)
    code = good_code(stage)
    if kind in ("close", "reset", "stall", "deaf", "garbage"):
        return {{"close": "close_at", "reset": "reset_at", "stall": "stall_at", "deaf": "deaf_at",
                 "garbage": "garbage_at"}[kind]: s}
    if kind == "endless":
        return {"endless_multiline_at": s}
    if kind == "early":
        return {"early": {s: "250 2.0.0 Ok: queued (too early)"}}
    if kind == "drip_ok":
        return {"drip": {s: 0.001}}
    if kind == "drip_slow":
        return {"drip": {s: 0.2}}
    if kind == "slow_ok":
        return {"delays": {s: (DOT_T if base == "DOT" else REPLY_T) * 0.4}}
    if kind == "longline":
        return {"replies": {s: code + " " + "x" * 3000}}
    if kind == "longmulti":
        return {"replies": {s: "\r\n".join([code + "-line"] * 150 + [code + " end"])}}
    if kind == "mixed":
        return {"replies": {s: code + "-2.0.0 first line\r\n554 5.0.0 second line"}}
    if kind == "mixed45":
        return {"replies": {s: "451-4.3.0 first line\r\n550 5.0.0 second line"}}
    if kind == "extra":
        default = ehlo_reply(caps) if base == "EHLO" else DEFAULT_REPLY[base]
        return {"replies": {s: default + "\r\n" + EXTRA}}
    if kind == "4xx":
        return {"replies": {s: "451 4.3.0 %s: try again later" % base}}
    if kind == "5xx":
        return {"replies": {s: "554 5.7.1 %s: refused" % base}}
    if kind == "5xx_multi":
        return {"replies": {s: "550-5.7.1 %s: refused\r\n550-5.7.1 see https://mx.example/why\r\n"
                               "550 5.7.1 for details" % base}}
    if kind == "421hang":
        return {"replies": {s: "421 4.3.2 %s: shutting down" % base}, "hangup_at": s}
    if kind == "hangup":        # the right reply, then the connection is gone
        return {"hangup_at": s}
    if kind == "nochunking":    # an EHLO reply without CHUNKING
        return {"replies": {s: ehlo_reply([c for c in caps if c != "CHUNKING"])}}
    raise ValueError(kind)


def reply_lines(text):
    """(code, Reply.text) of a scripted reply, as SmtpClient returns it."""
    lines = text.split("\r\n")
    return int(lines[0][:3]), "\n".join(x[4:] for x in lines)


# ---------------------------------------------------------------------------------------------
# rows and expectations

class Row:
    def __init__(self, role, body, pos, stage, kind, pipe=True, lane="any", reconnect=False):
        self.role, self.body, self.pos, self.stage, self.kind = role, body, pos, stage, kind
        self.pipe, self.lane, self.reconnect = pipe, lane, reconnect
        self.name = "%s/%s/msg%d/%s%s/%s%s" % (role, body, pos, "reconnect-" if reconnect else "",
                                               stage, kind, "" if pipe else "/nopipe")

    def __repr__(self):
        return self.name


class Expect:
    """What the client must see: `fail` maps a step to a matcher, every other step executed
    must succeed; `closes`: a 421 4.4.2 closing follows the failing step's reply (or the
    failing reply is itself a 421) and the connection closes; `accepted`: the faulty message
    gets 250 (and the next hop holds it); `after`: "usable" (a further message on the session
    gets through), "closed" (the next message gets a 4xx and the session ends with 421) or
    "skip" (the client QUITs, as it must after a 421)."""

    def __init__(self, fail=None, closes=False, accepted=False, after="usable"):
        self.fail = dict(fail or {})
        self.closes, self.accepted, self.after = closes, accepted, after

    def __repr__(self):
        return "Expect(fail=%r, closes=%r, accepted=%r, after=%r)" % (
            self.fail, self.closes, self.accepted, self.after)


def ours(enh, code=451):
    return ("code", code, enh)


def exact(text):
    return ("exact",) + reply_lines(text)


def fail_step(stage, body):
    base = stage_base(stage)
    if stage.upper().startswith("MID-DATA"):
        return "final" if body == "data" else "bdat1"
    return {"MAIL": "rcpt1", "RCPT:1": "rcpt1", "RCPT:2": "rcpt2", "DATA": "data",
            "DOT": "final", "BDAT:1": "bdat1", "RSET": "rset"}.get(stage.upper(), base.lower())


def expectations(row):
    """The acceptable outcomes of a row (a list: a few rows have inherent alternatives)."""
    stage, kind, body = row.stage.upper(), row.kind, row.body
    base = stage_base(stage)
    xclient = row.role == "in"
    step = fail_step(stage, body)

    if kind in FINE or base in ("NOOP",):
        return [Expect(accepted=True)]
    if base == "QUIT":
        return [Expect(accepted=True, after="quit")]

    # --- the second message needs a new next-hop connection (the first one was lost at its
    # dot), and that one fails: the first RCPT, which triggers the reconnect, gets the 4xx ---
    if row.reconnect:
        if body == "bdat":
            # The new connection offers no CHUNKING (HELO only, or not listed): the BDAT the
            # client was promised at EHLO is refused by the relay, temporarily. (Inbound: the
            # EHLO after XCLIENT is what counts, and it offers CHUNKING again.)
            if xclient and stage == "EHLO:1" and kind == "nochunking":
                return [Expect(accepted=True)]
            return [Expect({"bdat1": ours("4.3.3")}, after="skip")]
        if kind in PASS and (stage == "XCLIENT" or (stage == "EHLO:1" and kind != "4xx")):
            return [Expect(accepted=True)]    # XCLIENT refused: mail flows; EHLO 5xx: HELO
        if kind == "421hang" and stage == "XCLIENT":
            return [Expect({"rcpt1": ours("4.4.2")}, closes=True, after="skip")]
        enh = "4.4.0" if kind in PASS + HANG else OURS[kind]
        if kind == "reset" and stage == "GREETING":
            enh = ("4.4.1", "4.4.2")   # the reset may beat the relay to its connect completion
        return [Expect({"rcpt1": ours(enh)}, closes=True, after="skip")]

    # --- before the client's greeting: the next hop must come up first ---------------------
    if base in ("GREETING", "CONNECT") or stage == "EHLO:1" or base == "STARTTLS":
        if base == "STARTTLS" and kind in PASS:
            return [Expect(accepted=True)]          # opportunistic: plaintext it is
        if base == "STARTTLS" and kind == "extra":  # bytes after 220: a TLS failure, 4.4.2
            return [Expect({"greeting": ours("4.4.2", 421)}, closes=True, after="skip")]
        if stage == "EHLO:1" and kind in ("5xx", "5xx_multi"):
            return [Expect(accepted=True)]          # HELO fallback
        if stage == "EHLO:1" and kind in ("extra", "hangup"):
            # the relay finds out when it next speaks: XCLIENT (inbound) or MAIL
            if xclient:
                return [Expect({"ehlo": ours("4.4.2", 421)}, closes=True, after="skip")]
            return [Expect({"rcpt1": ours(OURS[kind])}, closes=True, after="skip")]
        return [Expect({"greeting": ours("4.4.1", 421)}, closes=True, after="skip")]

    # --- XCLIENT and the EHLO after it (inbound) --------------------------------------------
    if base == "XCLIENT":
        if kind in PASS:
            return [Expect(accepted=True)]          # logged as failed; the mail still flows
        if kind == "421hang":
            return [Expect({"rcpt1": ours("4.4.2")}, closes=True, after="skip")]
        return [Expect({"ehlo": ours("4.4.2", 421)}, closes=True, after="skip")]
    if stage == "EHLO:2":
        if kind in ("extra", "hangup"):
            return [Expect({"rcpt1": ours(OURS[kind])}, closes=True, after="skip")]
        return [Expect({"ehlo": ours("4.4.2", 421)}, closes=True, after="skip")]

    spec = fault_spec(row.stage, kind, CAPS)
    scripted = spec.get("replies", {}).get(row.stage)
    closing_stage = base in ("MAIL", "RCPT", "RSET") or (base == "DATA" and body == "data")

    # --- RSET: its reply is not relayed (only its failure) ---------------------------------
    if base == "RSET":
        if kind in PASS:
            return [Expect()]
        if kind in ("extra", "421hang", "hangup"):
            return [Expect(after="closed")]
        return [Expect({"rset": ours(OURS[kind])}, closes=True, after="skip")]

    if kind in PASS:
        if base == "MAIL":
            return [Expect({"rcpt1": exact(scripted), "rcpt2": exact(scripted)})]
        return [Expect({step: exact(scripted)}, accepted=base == "RCPT")]

    if kind == "421hang":
        if base == "MAIL":
            alts = [Expect({"rcpt1": ours("4.4.2")}, closes=True, after="skip")]
            if not row.pipe:
                alts.append(Expect({"rcpt1": exact(scripted)}, after="skip"))
            return alts
        return [Expect({step: exact(scripted)}, after="skip")]

    # --- the relay's own failures ----------------------------------------------------------
    enh = OURS[kind]
    if kind == "hangup":
        # The reply was right; the loss shows at the next command to the next hop.
        if base == "MAIL":
            return [Expect({"rcpt1": ours(enh)}, closes=True, after="skip")]
        if stage == "RCPT:1":
            return [Expect({"rcpt2": ours(enh)}, closes=True, after="skip")]
        if stage == "RCPT:2":
            if body == "data":
                return [Expect({"data": ours(enh)}, closes=True, after="skip")]
            return [Expect({"bdat1": ours(enh)})]
        if base in ("DATA", "BDAT"):
            return [Expect({"final": ours(enh)})]
        return [Expect(accepted=True, after="closed")]      # DOT: delivered, session lost
    if kind == "extra":
        # The extra reply is found when the relay next speaks to the next hop.
        if base == "MAIL":
            if not row.pipe:
                return [Expect({"rcpt1": ours(enh)}, closes=True, after="skip")]
            # the stale reply answers RCPT 1; the real one is found before RCPT 2
            return [Expect({"rcpt2": ours(enh)}, closes=True, after="skip")]
        if stage == "RCPT:1":
            return [Expect({"rcpt2": ours(enh)}, closes=True, after="skip")]
        if stage == "RCPT:2":
            if body == "data":
                return [Expect({"data": ours(enh)}, closes=True, after="skip")]
            return [Expect({"bdat1": ours(enh)})]
        if base in ("DATA", "BDAT"):
            return [Expect({"final": ours(enh)})]
        if base == "DOT":
            return [Expect(accepted=True, after="closed")]
    if closing_stage:
        return [Expect({step: ours(enh)}, closes=True, after="skip")]
    return [Expect({step: ours(enh)})]


def build_matrix():
    rows = []
    tx_stages = {"data": ("MAIL", "RCPT:1", "RCPT:2", "DATA", "DOT"),
                 "bdat": ("MAIL", "RCPT:1", "RCPT:2", "BDAT:1", "DOT")}
    for role in ("out", "in"):
        # the session's start: greeting and first EHLO (the relay does both before our 220)
        for stage in ("greeting", "EHLO:1"):
            for kind in COMMAND_KINDS:
                rows.append(Row(role, "data", 1, stage, kind))
        for body in ("data", "bdat"):
            for pos in (1, 2):
                for stage in tx_stages[body]:
                    for kind in COMMAND_KINDS:
                        rows.append(Row(role, body, pos, stage, kind))
                for kind in MID_KINDS:
                    rows.append(Row(role, body, pos, "mid-DATA:%d" % MID, kind))
            rows.append(Row(role, body, 1, "mid-DATA:%d" % MID, "deaf"))
        for kind in COMMAND_KINDS:
            rows.append(Row(role, "data", 1, "RSET", kind))
        for kind in ("close", "stall", "5xx"):
            rows.append(Row(role, "data", 1, "NOOP", kind))
        for kind in ("close", "reset", "stall", "5xx"):
            rows.append(Row(role, "data", 1, "QUIT", kind))
        # without PIPELINING the relay sends MAIL and RCPT one at a time
        for stage in ("MAIL", "RCPT:1", "RCPT:2"):
            for kind in ("close", "stall", "garbage", "extra", "hangup", "4xx", "5xx", "421hang"):
                rows.append(Row(role, "data", 1, stage, kind, pipe=False))
        rows.append(Row(role, "data", 1, "connect", "refused", lane="refused"))
        rows.append(Row(role, "data", 1, "connect", "timeout", lane="blackhole"))
        # the next hop connection for a later message fails as it is set up
        for stage in ("greeting", "EHLO:1") + (("XCLIENT", "EHLO:2") if role == "in" else ()):
            for kind in ("close", "reset", "stall", "garbage", "longmulti", "extra", "hangup",
                         "4xx", "5xx", "421hang", "drip_ok"):
                rows.append(Row(role, "data", 2, stage, kind, reconnect=True))
        # ... and the new connection offers less than the client was promised (HELO only, or
        # no CHUNKING): a BDAT message must still get a 4xx, not the next hop's 5xx
        for kind in ("5xx", "nochunking"):
            rows.append(Row(role, "bdat", 2, "EHLO:1", kind, reconnect=True))
        if role == "in":
            rows.append(Row(role, "bdat", 2, "EHLO:2", "nochunking", reconnect=True))
    # inbound with XCLIENT: the XCLIENT command and the EHLO after it
    for stage in ("XCLIENT", "EHLO:2"):
        for kind in COMMAND_KINDS:
            rows.append(Row("in", "data", 1, stage, kind))
    # STARTTLS towards the next hop (outbound, upstream_tls = opportunistic)
    for kind in ("close", "reset", "stall", "garbage", "extra", "4xx", "5xx"):
        rows.append(Row("out", "data", 1, "STARTTLS", kind, lane="tls"))
    for stage, kind in (("MAIL", "close"), ("DOT", "reset"), ("DOT", "garbage"),
                        ("mid-DATA:%d" % MID, "early"), ("mid-DATA:%d" % MID, "close"),
                        ("DOT", "drip_ok")):
        for body in ("data", "bdat"):
            rows.append(Row("out", body, 1, stage, kind, lane="tls"))
    rows.append(Row("out", "data", 1, "DATA", "extra", lane="tls"))
    rows.append(Row("out", "bdat", 1, "BDAT:1", "extra", lane="tls"))
    return rows


# ---------------------------------------------------------------------------------------------
# running a row

class RowFailure(Exception):
    pass


class Closed(Exception):
    """The relay ended the session (421 read or the connection closed)."""


def make_body(marker, size=20000):
    head = ("Subject: %s\r\nMessage-ID: <%s@e2e.test>\r\n\r\n" % (marker, marker)).encode()
    line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
    return head + line * ((size - len(head)) // len(line) + 1)


class Lane:
    """A next hop and the relay's listeners towards it (ports: role -> relay port); the lane's
    clients connect from their own loopback address, so that "ip:port" names one session in
    the relay's log even when two lanes' clients get the same port."""

    def __init__(self, name, upstream, ports, source):
        self.name, self.up, self.ports, self.source = name, upstream, ports, source


class Session:
    """One client session of a row: each step's reply, timing, and whether it closed."""

    def __init__(self, lane, row):
        self.row = row
        self.steps = []           # (step, code, text, seconds)
        self.closed_by_relay = False
        self.c = BoundClient(lane.ports[row.role], lane.source, CLIENT_TIMEOUT)
        self.client = "%s:%d" % self.c.sock.getsockname()[:2]

    def read(self, step, t0, timeout=None):
        try:
            r = self.c.read_reply(timeout)
        except (EOFError, ConnectionError):
            self.steps.append((step, None, "connection closed", time.monotonic() - t0))
            self.closed_by_relay = True
            raise Closed()
        except socket.timeout:
            raise RowFailure("no reply to %s within %ss (a hang)" % (step, timeout or CLIENT_TIMEOUT))
        self.steps.append((step, r.code, r.text, time.monotonic() - t0))
        return r

    def cmd(self, step, line):
        t0 = time.monotonic()
        try:
            self.c.send(line.encode() + b"\r\n")
        except OSError:
            pass   # the reply read says what happened
        return self.read(step, t0)

    def send_then_read(self, step, parts, pause):
        t0 = time.monotonic()
        for i, p in enumerate(parts):
            if i and pause:
                time.sleep(pause)
                t0 = time.monotonic()
            try:
                self.c.send(p)
            except OSError:
                break
        return self.read(step, t0)

    def close(self):
        self.c.close()


def message(s, row, marker, pause=0.0, big=False):
    """One transaction as an MTA runs it; returns the final reply code (None when the body was
    never sent). Raises Closed when the relay ends the session. `pause`: seconds the client
    waits before each command and in the middle of the body, so that whatever a lying next hop
    sends has arrived at the relay before it next speaks to it."""
    sender, rcpts = ROLES[row.role]
    body = make_body(marker, BIG if big else 20000)
    s.cmd("mail", "MAIL FROM:<%s>" % sender)
    ok = 0
    for i, rcpt in enumerate(rcpts):
        time.sleep(pause)
        r = s.cmd("rcpt%d" % (i + 1), "RCPT TO:<%s>" % rcpt)
        after_failure(s, r, "rcpt%d" % (i + 1))
        ok += r.code // 100 == 2
    if not ok:
        s.cmd("reset", "RSET")
        return None
    time.sleep(pause)
    if row.body == "data":
        r = s.cmd("data", "DATA")
        after_failure(s, r, "data")
        if r.code != 354:
            s.cmd("reset", "RSET")
            return None
        half = len(body) // 2
        r = s.send_then_read("final", [body[:half], body[half:] + b".\r\n"], pause)
        after_failure(s, r, "final")
        return r.code
    first = body[:len(body) - 1000] if big else body[:CHUNK1]
    rest = body[len(first):]
    half = len(first) // 2
    r = s.send_then_read("bdat1", [b"BDAT %d\r\n" % len(first) + first[:half], first[half:]], pause)
    after_failure(s, r, "bdat1")
    if r.code // 100 != 2:
        s.cmd("reset", "RSET")
        return None
    time.sleep(pause)
    r = s.send_then_read("final", [b"BDAT %d LAST\r\n" % len(rest) + rest], 0)
    after_failure(s, r, "final")
    return r.code


def after_failure(s, r, step):
    """A 421 ends the session; after a failure at a step in s.expect_closing (a set, or True
    for every step) the relay must add its 421 closing, which is read here."""
    if r.code == 421:
        # The relay's own 421 is followed by its close; a next hop's 421 passed through is not
        # (the client ends the session, as it must after any 421).
        s.closed_by_relay = s.c.wait_closed(3 + SLACK if "relay.test" in r.text else 0.3)
        raise Closed()
    if r.code >= 400 and (s.expect_closing is True or step in s.expect_closing):
        nxt = s.read("closing", time.monotonic(), 3 + SLACK)
        after_failure(s, nxt, "closing")


class Matrix:
    """Runs rows on lanes and checks each against its expectations."""

    def __init__(self, relay, lanes, special):
        self.relay, self.lanes, self.special = relay, lanes, special
        self.results = {}          # row name -> failure text or None
        self.lock = threading.Lock()

    def run(self, rows):
        q = {"any": queue.Queue()}
        for name in self.special:
            q[name] = queue.Queue()
        for r in rows:
            q[r.lane].put(r)
        threads = []
        for lane in self.lanes:
            threads.append(threading.Thread(target=self._worker, args=(lane, q["any"]), daemon=True))
        for name, lane in self.special.items():
            threads.append(threading.Thread(target=self._worker, args=(lane, q[name]), daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        for r in rows:
            self.results.setdefault(r.name, "not run (a worker died or timed out)")

    def _worker(self, lane, q):
        while True:
            try:
                row = q.get_nowait()
            except queue.Empty:
                return
            t0 = time.monotonic()
            try:
                err = self.connect_row(lane, row) if row.stage == "connect" else \
                    self.run_row(lane, row)
            except Exception as e:     # a harness error fails the row, not the whole matrix
                err = "%s: %s" % (type(e).__name__, e)
            dt = time.monotonic() - t0
            if err is None and dt > 4 * DOT_T + 8:
                err = "row took %.1fs" % dt
            with self.lock:
                self.results[row.name] = err
                if os.environ.get("BATV_E2E_ROWS"):
                    sys.stderr.write("%-50s %5.2fs %s\n" % (row.name, dt, "ok" if err is None else "FAILED"))

    # -- no next hop at all --
    def connect_row(self, lane, row):
        """Connection refused: 421 4.4.1 at once; connect timeout (a listener whose accept
        queue is full): 421 4.4.1 after timeouts.upstream_connect. Then the connection closes."""
        limit = TIMEOUTS["upstream_connect"]
        t0 = time.monotonic()
        c = BoundClient(lane.ports[row.role], lane.source, CLIENT_TIMEOUT)
        client = "%s:%d" % c.sock.getsockname()[:2]
        try:
            g = c.read_reply()
            dt = time.monotonic() - t0
            if (g.code, g.text) != (421, "4.4.1 relay.test next hop unavailable, try again later"):
                return "greeting %r, want 421 4.4.1" % (g,)
            if row.kind == "refused" and dt > SLACK:
                return "421 took %.1fs for a refused connection" % dt
            if row.kind == "timeout" and not limit - 0.3 < dt < limit + SLACK:
                return "421 after %.1fs, want timeouts.upstream_connect (%ds)" % (dt, limit)
            if not c.wait_closed(3):
                return "the relay kept the connection open after 421"
        finally:
            c.close()
        end = self.relay.wait_log(lambda x: x.get("event") == "session_end"
                                  and x.get("client") == client and x["_t"] >= t0, 5)
        if not end or end.get("reason") != "upstream_unavailable":
            return "session_end %r, want reason=upstream_unavailable" % (end and end["_raw"])
        return None

    # -- one row --
    def run_row(self, lane, row):
        up = lane.up
        up.set_faults()
        up.caps = list(CAPS if row.pipe else CAPS_NOPIPE)
        if row.stage.upper() == "STARTTLS" or lane.name == "tls":
            up.tls_caps = list(up.caps)
        base = len(up.connections())
        spec = dict(fault_spec(row.stage, row.kind, up.caps)) if row.kind != "refused" else {}
        # Early replies and extra replies must not be mistaken for the real verdict: that one
        # is a 554, so a 250 to the client can only come from believing the lie.
        if row.kind in ("early", "extra") and stage_base(row.stage) not in ("DOT",):
            spec.setdefault("replies", {})["DOT"] = REAL_VERDICT
        spec["fault_conns"] = {base + 1} if row.reconnect else {base}
        alts = expectations(row)
        marker = "row-%s-%x" % (row.name.replace("/", "-").replace(":", ""), id(row))
        if row.pos == 1:
            up.set_faults(**spec)
        elif row.reconnect:     # the first message loses the first connection at its dot
            up.set_faults(close_at="DOT", fault_conns={base})
        t_start = time.monotonic()
        s = Session(lane, row)
        s.expect_closing = set()
        s.steps_before = 0
        finals = {}
        try:
            try:
                t0 = time.monotonic()
                g = s.read("greeting", t0)
                after_failure(s, g, "greeting")
                r = s.cmd("ehlo", "EHLO client.test")
                after_failure(s, r, "ehlo")
                if row.pos == 2:
                    finals["m1"] = message(s, row, marker + "-m1")
                    m1 = s.steps[-1]
                    if row.reconnect and (m1[1], m1[2][:6]) != (451, "4.4.2 "):
                        return "first message, next hop lost at its dot: %s" % self.fmt(s.steps)
                    if not row.reconnect and finals["m1"] != 250:
                        return "clean first message got %r: %s" % (finals["m1"], s.steps)
                    up.set_faults(**spec)
                    s.steps_before = len(s.steps)
                s.expect_closing = {st for a in alts if a.closes for st in a.fail}
                if stage_base(row.stage) == "RSET":
                    sender, rcpts = ROLES[row.role]
                    s.cmd("mail", "MAIL FROM:<%s>" % sender)
                    r = s.cmd("rcpt1", "RCPT TO:<%s>" % rcpts[0])
                    after_failure(s, r, "rcpt1")
                    time.sleep(0.15 if row.kind == "extra" else 0)
                    r = s.cmd("rset", "RSET")
                    after_failure(s, r, "rset")
                else:
                    if stage_base(row.stage) == "NOOP":
                        s.cmd("noop", "NOOP")
                    pause = 0.15 if row.kind in ("early", "extra") else 0.0
                    finals["m2"] = message(s, row, marker + "-m2", pause, big=row.kind == "deaf")
                s.expect_closing = set()
            except Closed:
                pass
            except RowFailure as e:
                return "%s after %s" % (e, self.fmt(s.steps))
            err = self.check(row, lane, s, alts, base, marker, finals)
        finally:
            s.close()
        # The relay's session must end (and with it anything it does with the next hop) before
        # the lane's next row counts connections: exactly one session_end for this client.
        ends = self.relay.wait_logs(lambda x: x.get("event") == "session_end"
                                    and x.get("client") == s.client and x["_t"] >= t_start, 1, 10)
        if len(ends) != 1:
            return (err + "; " if err else "") + "%d session_end for %s" % (len(ends), s.client)
        if err is None:
            # why the session ended, as designed: the relay's 421 names the next hop, else QUIT
            own = [st for st, code, text, _ in s.steps if code == 421 and "relay.test" in text]
            want = ("upstream_unavailable" if own[-1] == "greeting" else "upstream_lost") \
                if own else "quit"
            if ends[0].get("reason") != want:
                err = "session_end reason=%s, want %s" % (ends[0].get("reason"), want)
        return err

    def check(self, row, lane, s, alts, base, marker, finals):
        up = lane.up
        steps = s.steps[s.steps_before:]
        problems = []
        for alt in alts:
            why = self.match(row, steps, alt, s)
            if why is None:
                break
            problems.append("%s: %s" % (alt, why))
        else:
            return "unexpected replies %s\n    %s" % (self.fmt(s.steps), "\n    ".join(problems))
        # the invariant, for the faulty message (and the clean first one)
        for key in finals:
            why = self.invariant(up, base, marker + "-" + key, finals[key], row)
            if why:
                return why
        conns = up.connections()[base:]
        if stage_base(row.stage) == "NOOP" and any(c.find("NOOP") for c in conns):
            return "the relay sent NOOP to the next hop"
        if lane.name == "tls" and conns:
            plain = stage_base(row.stage) == "STARTTLS"
            if (conns[0].tls_version is None) != plain:
                return "next hop connection TLS %r, want %s" % (
                    conns[0].tls_version, "plaintext" if plain else "TLS")
        if "m2" not in finals and stage_base(row.stage) != "RSET":
            # never got to the body: nothing of it may have been accepted
            why = self.invariant(up, base, marker + "-m2", None, row)
            if why:
                return why
        # after the faulty message
        if s.closed_by_relay or alt.after == "skip":
            return self.finish(s, alt)
        up.set_faults()
        if alt.after == "quit":
            t0 = time.monotonic()
            try:
                s.cmd("quit", "QUIT")
            except Closed:
                return "no 221 to QUIT: %s" % self.fmt(s.steps)
            if s.steps[-1][1] != 221:
                return "QUIT got %s" % (s.steps[-1],)
            if not s.c.wait_closed(2) or time.monotonic() - t0 > 1 + SLACK:
                return "the relay did not close promptly after 221"
            return None
        s.expect_closing = True if alt.after == "closed" else set()
        n = len(s.steps)
        try:
            final = message(s, row, marker + "-m3")
        except Closed:
            final = "closed"
        later = s.steps[n:]
        if alt.after == "usable":
            if final != 250:
                return "session not usable after the fault: %s" % self.fmt(s.steps)
            why = self.invariant(up, base, marker + "-m3", 250, row)
            if why:
                return why
            try:
                q = s.cmd("quit", "QUIT")
            except Closed:
                return "QUIT: connection closed"
            return None if q.code == 221 else "QUIT got %r" % (q,)
        # "closed": a 4xx, then 421 and the end of the session
        errs = [x for x in later if x[1] is not None and x[1] >= 400]
        if final != "closed" or not errs or any(x[1] // 100 != 4 for x in errs) \
                or errs[-1][1] != 421 or not s.closed_by_relay:
            return "want a 4xx then 421 and close on the next message: %s" % self.fmt(later)
        return self.invariant(up, base, marker + "-m3", None, row)

    def finish(self, s, alt):
        if alt.closes and not s.closed_by_relay:
            return "the relay did not close the session after its 421: %s" % self.fmt(s.steps)
        if not s.closed_by_relay:
            try:
                s.cmd("quit", "QUIT")
            except Closed:
                pass
        return None

    @staticmethod
    def fmt(steps):
        return "[" + ", ".join("%s=%s %s (%.2fs)" % (st, code, (text or "").split("\n")[0][:60], dt)
                               for st, code, text, dt in steps) + "]"

    def match(self, row, steps, alt, s):
        seen = set()
        first_fail = None
        for st, code, text, dt in steps:
            seen.add(st)
            if st == "closing":
                if code != 421 or not text.startswith("4.4.2 ") or "closing" not in text:
                    return "want 421 4.4.2 ... closing after the failure, got %s %s" % (code, text)
                continue
            if st in alt.fail:
                m = alt.fail[st]
                if code is None:
                    return "%s: connection closed, want %s" % (st, m)
                enhs = m[2] if isinstance(m[2], tuple) else (m[2],) if m[0] == "code" else ()
                if m[0] == "code" and not (code == m[1] and any(text.startswith(e + " ") for e in enhs)):
                    return "%s: got %s %r, want %s %s" % (st, code, text, m[1], m[2])
                if m[0] == "code" and code == 451 and "4.4.2" in enhs and text.startswith("4.4.2 "):
                    want = "timed out" if row.kind in TIMEOUT_KINDS else "connection lost"
                    if want not in text:
                        return "%s: got %r, want the '%s' reply" % (st, text, want)
                if m[0] == "exact" and (code, text) != (m[1], m[2]):
                    return "%s: got %s %r, want %s %r" % (st, code, text, m[1], m[2])
                if first_fail is None:
                    first_fail = st
                limit = (DOT_T if st == "final" else REPLY_T) + REPLY_T + SLACK
                if dt > limit:
                    return "%s took %.1fs (limit %.1fs)" % (st, dt, limit)
                continue
            want = 354 if st == "data" else 221 if st == "quit" else 220 if st == "greeting" else 250
            if code != want:
                return "%s: got %s %r, want %s" % (st, code, text, want)
        missing = [st for st in alt.fail if st not in seen]
        if missing:
            return "steps never reached: %s" % missing
        if alt.closes and not s.closed_by_relay:
            return "the session was not closed"
        if not alt.closes and s.closed_by_relay and alt.after != "skip":
            return "the session was closed"
        return None

    def invariant(self, up, base, marker, final, row):
        """250 to the client <=> the next hop answered 250 to the end of data of exactly this
        message and holds all of its bytes. (A next hop whose reply to the end of data was
        itself invalid -- oversize, mixed codes -- may have kept the message although the client
        got a 4xx: a possible duplicate, never a loss.)"""
        want = make_body(marker, BIG if row.kind == "deaf" and marker.endswith("-m2") else 20000)
        needle = marker.encode()

        def mine():
            out = []
            for c in up.connections()[base:]:
                for t in c.transactions:
                    if needle in bytes(t.data[:200]) or needle in bytes(t.bdat[:200]):
                        out.append(t)
            return out

        if final == 250:
            got = wait_until(lambda: [t for t in mine() if t.accepted], 3)
            if len(got) != 1:
                return "%s: client got 250, next hop accepted %d copies: %r" % (marker, len(got), mine())
            t = got[0]
            data = bytes(t.data if row.body == "data" else t.bdat)
            if t.size != len(want) or data != want[:len(data)] or t.truncated:
                return "%s: client got 250 but the next hop holds %d of %d bytes" % (
                    marker, t.size, len(want))
            return None
        acc = [t for t in mine() if t.accepted and re.fullmatch(r"2\d\d [^\r\n]{0,400}", t.final_reply)]
        if acc:
            return "%s: client got %r but the next hop accepted it: %r" % (marker, final, acc)
        return None


# ---------------------------------------------------------------------------------------------

class UpstreamFailureMatrix(RelayLogMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls._tmp = tmpdir()
        cls.dir = cls._tmp.name
        cls.keys = KeyFile(KEYS, os.path.join(cls.dir, "keys.toml"))
        cls.certs = tlsutil.Certs(cls.dir)
        cls.ups = []
        listeners = []
        for i in range(LANES):
            up = ScriptedUpstream(caps=CAPS)
            cls.ups.append(up)
            listeners.append({"upstream": up.port, "role": "outbound"})
            listeners.append({"upstream": up.port, "role": "inbound", "forward_client": "xclient",
                          "upstream_connect": "connect"})
        cls.tls_up = ScriptedUpstream(caps=CAPS, tls_cert=cls.certs.mx_cert,
                                      tls_key=cls.certs.mx_key)
        cls.ups.append(cls.tls_up)
        listeners.append({"upstream": cls.tls_up.port, "role": "outbound",
                          "upstream_tls": "opportunistic"})
        dead = closed_port()
        listeners.append({"upstream": dead, "role": "outbound"})
        listeners.append({"upstream": dead, "role": "inbound", "forward_client": "xclient",
                          "upstream_connect": "connect"})
        # A next hop that never completes a TCP handshake: a listener that accepts nothing,
        # its queue (backlog 0) filled by one connection, so that later SYNs go unanswered.
        cls.blackhole = socket.socket()
        cls.blackhole.bind((HOST, 0))
        cls.blackhole.listen(0)
        cls.blackhole_fill = socket.create_connection(cls.blackhole.getsockname(), timeout=5)
        hole = cls.blackhole.getsockname()[1]
        listeners.append({"upstream": hole, "role": "outbound"})
        listeners.append({"upstream": hole, "role": "inbound", "forward_client": "xclient",
                          "upstream_connect": "connect"})
        # A next hop that goes away for good during a session.
        cls.dying_up = ScriptedUpstream(caps=CAPS)
        cls.ups.append(cls.dying_up)
        listeners.append({"upstream": cls.dying_up.port, "role": "outbound"})
        listeners.append({"upstream": cls.dying_up.port, "role": "inbound",
                          "forward_client": "xclient", "upstream_connect": "connect"})
        cls.relay_proc = Relay(RELAY, cls.dir, cls.keys, listeners=listeners, timeouts=TIMEOUTS,
                               start=False)
        try:
            cls.relay_proc.start()
        except Exception:
            cls.tearDownClass()
            raise
        p = cls.relay_proc.port
        cls.lanes = [Lane("lane%d" % i, cls.ups[i], {"out": p(2 * i), "in": p(2 * i + 1)},
                          "127.0.0.%d" % (10 + i)) for i in range(LANES)]
        n = 2 * LANES
        cls.special = {"tls": Lane("tls", cls.tls_up, {"out": p(n)}, "127.0.0.9"),
                       "refused": Lane("refused", None, {"out": p(n + 1), "in": p(n + 2)},
                                       "127.0.0.8"),
                       "blackhole": Lane("blackhole", None, {"out": p(n + 3), "in": p(n + 4)},
                                         "127.0.0.7")}
        cls.dying = Lane("dying", cls.dying_up, {"out": p(n + 5), "in": p(n + 6)}, "127.0.0.6")

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "relay_proc", None):
            cls.relay_proc.close()
        for up in cls.ups:
            up.close()
        for name in ("blackhole_fill", "blackhole"):
            if getattr(cls, name, None):
                getattr(cls, name).close()
        cls._tmp.cleanup()

    def setUp(self):
        self.relay = self.relay_proc
        # The relay outlives a test: only check it is alive and show its log on failure.
        self.addCleanup(self._show_logs, self.relay)
        self.addCleanup(self._check_alive, self.relay)

    # -- the matrix --
    def test_matrix(self):
        rows = build_matrix()
        only = os.environ.get("BATV_E2E_ROWS")     # a regular expression, for debugging
        if only:
            rows = [r for r in rows if re.search(only, r.name)]
        m = Matrix(self.relay, self.lanes, self.special)
        t0 = time.monotonic()
        m.run(rows)
        elapsed = time.monotonic() - t0
        failed = {k: v for k, v in m.results.items() if v}
        sys.stderr.write("\nupstream failure matrix: %d rows, %d failed, %.1fs\n"
                         % (len(m.results), len(failed), elapsed))
        for name in sorted(failed):
            with self.subTest(row=name):
                self.fail(failed[name])
        self.assertTrue(self.relay.running())
        # the relay still serves every lane
        for lane in self.lanes:
            for role in ("out", "in"):
                lane.up.set_faults()
                s = Session(lane, Row(role, "data", 1, "none", "none"))
                s.expect_closing = set()
                try:
                    s.read("greeting", time.monotonic())
                    s.cmd("ehlo", "EHLO client.test")
                    self.assertEqual(message(s, s.row, "final-%s-%s" % (lane.name, role)), 250)
                finally:
                    s.close()

    def test_next_hop_gone_for_good_mid_session(self):
        """The next hop is lost at the end of a message and then refuses connections: that
        message gets 451 4.4.2, the next one 451 4.4.1 at its first RCPT (the reconnect) and
        the session ends with 421 4.4.2; nothing is accepted."""
        lane = self.dying
        lane.up.set_faults(close_at="DOT")
        sessions = {}
        for role in ("out", "in"):
            s = Session(lane, Row(role, "data", 1, "DOT", "close"))
            self.addCleanup(s.close)
            s.expect_closing = set()
            s.read("greeting", time.monotonic())
            s.cmd("ehlo", "EHLO client.test")
            self.assertEqual(message(s, s.row, "gone-%s-m1" % role), 451)
            self.assertTrue(s.steps[-1][2].startswith("4.4.2 Next hop connection lost"), s.steps)
            sessions[role] = s
        lane.up.close()                 # the port now refuses connections
        for role, s in sessions.items():
            s.expect_closing = True
            with self.assertRaises(Closed):
                message(s, s.row, "gone-%s-m2" % role)
            self.assertEqual([x[:3] for x in s.steps[-3:]],
                             [("mail", 250, "2.1.0 Sender OK"),
                              ("rcpt1", 451, "4.4.1 Next hop unavailable, try again later"),
                              ("closing", 421, "4.4.2 relay.test Next hop connection lost, closing")])
            self.assertTrue(s.closed_by_relay)
        self.assertEqual(lane.up.accepted(), [])

    def test_client_is_offered_what_the_next_hop_offers_after_xclient(self):
        """A next hop may answer the EHLO after XCLIENT with other extensions than the first
        one (Postfix smtpd_discard_ehlo_keyword_address_maps looks at the client XCLIENT
        names): the inbound client must be offered what the next hop offers then. CHUNKING
        gone after XCLIENT: not offered, and a BDAT is refused by the relay (502), not sent to
        a next hop that would refuse it; DATA works. CHUNKING only after XCLIENT: offered, and
        BDAT works."""
        cases = ((CAPS, [c for c in CAPS if c != "CHUNKING"], False),
                 ([c for c in CAPS if c != "CHUNKING"], CAPS, True))
        for first, after, chunking in cases:
            with self.subTest(chunking_after_xclient=chunking):
                lane = self.lane()
                lane.up.caps = list(first)
                base = len(lane.up.connections())
                lane.up.set_faults(replies={"EHLO:2": ehlo_reply(after)}, fault_conns={base})
                row = Row("in", "bdat" if chunking else "data", 1, "EHLO:2", "caps")
                s = Session(lane, row)
                self.addCleanup(s.close)
                s.expect_closing = set()
                s.read("greeting", time.monotonic())
                ehlo = s.cmd("ehlo", "EHLO client.test")
                self.assertEqual("CHUNKING" in ehlo.text.upper().split("\n"), chunking, ehlo)
                self.assertIsNotNone(lane.up.connections()[base].xclient)
                if not chunking:
                    sender, rcpts = ROLES["in"]
                    s.cmd("mail", "MAIL FROM:<%s>" % sender)
                    s.cmd("rcpt1", "RCPT TO:<%s>" % rcpts[0])
                    r = s.send_then_read("bdat1", [b"BDAT 5 LAST\r\nhello"], 0)
                    self.assertEqual((r.code, r.text), (502, "5.5.1 BDAT not available"))
                    s.cmd("reset", "RSET")
                self.assertEqual(message(s, row, "xclient-caps-%s" % chunking), 250, s.steps)
                self.assertEqual(s.cmd("quit", "QUIT").code, 221)
                conn = lane.up.connections()[base]
                self.assertTrue(wait_until(lambda: [t for t in conn.transactions if t.accepted], 3))

    def test_refused_bdat_last_leaves_no_transaction_open_at_the_next_hop(self):
        """A BDAT LAST the relay refuses itself (no recipient accepted; over
        limits.message_size) ends the client's transaction: the next hop's, opened by MAIL
        and RCPT, must end too, or the client's next MAIL gets the next hop's 503 nested MAIL
        (a permanent failure of an innocent message)."""
        sender, rcpts = ROLES["out"]
        too_big = 64 * 1024 * 1024 + 1          # limits.message_size (default) + 1
        cases = (("no recipient accepted", {"replies": {"RCPT": "550 5.1.1 no such user"}},
                  b"BDAT 5 LAST\r\nhello", (554, "5.5.1 No valid recipients")),
                 ("over message_size", {}, b"BDAT %d LAST\r\n" % too_big + b"x" * too_big,
                  (552, "5.3.4 Message size exceeds fixed limit")))
        for what, faults, bdat, refusal in cases:
            with self.subTest(what):
                lane = self.lane()
                base = len(lane.up.connections())
                lane.up.set_faults(fault_conns={base}, **faults)
                s = Session(lane, Row("out", "bdat", 1, "BDAT", "refused"))
                self.addCleanup(s.close)
                s.expect_closing = set()
                s.read("greeting", time.monotonic())
                s.cmd("ehlo", "EHLO client.test")
                s.cmd("mail", "MAIL FROM:<%s>" % sender)
                s.cmd("rcpt1", "RCPT TO:<%s>" % rcpts[0])
                r = s.send_then_read("bdat1", [bdat], 0)
                self.assertEqual((r.code, r.text), refusal)
                lane.up.set_faults()
                self.assertEqual(message(s, s.row, "after-refused-bdat"), 250, self.fmt_steps(s))
                self.assertEqual(lane.up.connections()[base].nested_mail, 0)
                self.assertEqual(s.cmd("quit", "QUIT").code, 221)

    @staticmethod
    def fmt_steps(s):
        return Matrix.fmt(s.steps)

    # -- real clients --
    def lane(self):
        lane = self.lanes[0]
        lane.up.set_faults()
        lane.up.caps = list(CAPS)
        return lane

    def smtplib_send(self, port, body=b"Subject: smtplib\r\n\r\nhello\r\n", role="out"):
        sender, rcpts = ROLES[role]
        with smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=CLIENT_TIMEOUT) as s:
            return s.sendmail(sender, list(rcpts), body)

    def faulty(self, **faults):
        lane = self.lane()
        faults["fault_conns"] = {len(lane.up.connections())}
        lane.up.set_faults(**faults)
        return lane

    def test_smtplib_dot_4xx_is_a_data_error_451(self):
        lane = self.faulty(replies={"DOT": "452 4.3.1 insufficient system storage"})
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.smtplib_send(lane.ports["out"])
        self.assertEqual(cm.exception.smtp_code, 452)
        self.assertEqual(cm.exception.smtp_error, b"4.3.1 insufficient system storage")

    def test_smtplib_dot_5xx_is_a_permanent_data_error(self):
        lane = self.faulty(replies={"DOT": "554 5.7.1 spam"})
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.smtplib_send(lane.ports["in"], role="in")
        self.assertEqual(cm.exception.smtp_code, 554)

    def test_smtplib_next_hop_lost_at_mail(self):
        lane = self.faulty(close_at="MAIL")
        with self.assertRaises(smtplib.SMTPRecipientsRefused) as cm:
            self.smtplib_send(lane.ports["out"])
        codes = {rcpt: err[0] for rcpt, err in cm.exception.recipients.items()}
        self.assertTrue(codes and all(400 <= c < 500 for c in codes.values()), codes)
        first = cm.exception.recipients[ROLES["out"][1][0]]
        self.assertEqual(first, (451, b"4.4.2 Next hop connection lost, try again later"))

    def test_smtplib_no_next_hop_is_a_connect_error_421(self):
        with self.assertRaises(smtplib.SMTPConnectError) as cm:
            self.smtplib_send(self.special["refused"].ports["out"])
        self.assertEqual(cm.exception.smtp_code, 421)
        self.assertTrue(cm.exception.smtp_error.startswith(b"4.4.1 "), cm.exception.smtp_error)

    def test_smtplib_next_hop_lies_250_before_the_end_of_data(self):
        """The next hop says 250 early, then refuses the complete message: smtplib (one write
        of a body much larger than the socket buffers) must not be told 250."""
        lane = self.faulty(early={"mid-DATA:%d" % MID: "250 2.0.0 Ok: queued (too early)"},
                           replies={"DOT": REAL_VERDICT})
        lane.up.caps = [c if not c.startswith("SIZE") else "SIZE %d" % (2 * BIG) for c in CAPS]
        body = make_body("smtplib-early", BIG)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.smtplib_send(lane.ports["out"], body)
        self.assertEqual(cm.exception.smtp_code, 451)
        self.assertTrue(cm.exception.smtp_error.startswith(b"4.4.0 "), cm.exception.smtp_error)
        self.assertFalse([t for t in lane.up.accepted() if b"smtplib-early" in bytes(t.data[:100])])

    def test_smtplib_slow_dripping_next_hop_is_fine(self):
        lane = self.faulty(drip={"DOT": 0.002, "RCPT": 0.002})
        self.assertEqual(self.smtplib_send(lane.ports["in"], role="in"), {})

    def swaks(self, port, *extra, role="out"):
        if not os.access(SWAKS, os.X_OK):
            self.skipTest("swaks not installed")
        sender, rcpts = ROLES[role]
        p = subprocess.run([SWAKS, "--server", HOST, "--port", str(port), "--from", sender,
                            "--to", rcpts[0], "--helo", "client.test", "--timeout", "15",
                            "--hide-all", *extra],
                           capture_output=True, timeout=60)
        return p.returncode

    def test_swaks_exit_codes(self):
        """What a swaks user sees: 21 no banner (no next hop), 24 no RCPT accepted (next hop
        lost), 25 DATA refused, 26 message refused or lost after the data, 0 slow but fine."""
        cases = [({"close_at": "MAIL"}, 24, "out"),
                 ({"garbage_at": "RCPT"}, 24, "in"),
                 ({"replies": {"DATA": "451 4.3.0 later"}}, 25, "out"),
                 ({"reset_at": "DOT"}, 26, "in"),
                 ({"stall_at": "mid-DATA:10"}, 26, "out"),
                 ({"replies": {"DOT": "550 5.7.1 no"}}, 26, "out"),
                 ({"delays": {"DOT": 0.5}, "drip": {"MAIL": 0.002}}, 0, "in")]
        for faults, want, role in cases:
            with self.subTest(faults=faults):
                lane = self.faulty(**faults)
                self.assertEqual(self.swaks(lane.ports[role], role=role), want)
        self.assertEqual(self.swaks(self.special["refused"].ports["out"]), 21)
        self.assertEqual(self.swaks(self.special["refused"].ports["in"], role="in"), 21)


if __name__ == "__main__":
    run_tests(globals())
