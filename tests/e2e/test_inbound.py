#!/usr/bin/env python3
"""batv-relay inbound gateway end to end: the real relay in front of a scripted MX.

Usage: test_inbound.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args, e.g. -k monitor]

Each test writes its own key file (secret "secretkey" as signing key 3, so tags are computable with
hmac, see harness.expected_tag) and config, starts the relay with a [[listener]] role = "inbound"
(listener 0) in front of harness.ScriptedUpstream playing the MX (and, where a tag must come from
the relay itself, an outbound listener 1 in front of a second ScriptedUpstream playing the
smarthost), and talks to it with swaks, smtplib or a raw socket. The behaviour checked is the
inbound contract (issue 4): per-recipient verdicts of bounces (MAIL FROM:<>) in enforce, monitor
and off modes with the exact 550 5.7.1 texts, tag stripping with NOTIFY/ORCPT kept, nothing sent to
the MX for refused recipients, the X-BATV-Status header in monitor mode (DATA and BDAT, worst
verdict), exemptions (local parts, client networks, foreign domains), MAILER-DAEMON senders,
per-domain modes, normal senders to tagged addresses (bad_signature strip/keep/reject), sender
verification probes, the invalid-recipient limit, a realistic Postfix NDR for mail the relay
signed, key rotation under SIGHUP, and the event=rcpt / session_end logs.

Tags used: valid = expected_tag(addr) now; bad_signature = valid with its last hex digit changed;
expired = `batv-keys --now <9 days ago> sign` (lifetime 7); unknown_key = a correct HMAC under key
id 4, which the key file lacks; malformed = "prvs=3abc..." (prvs= prefix, not well formed);
untagged = the plain address.

Set BATV_E2E_LOGS=1 to print every relay log; the log tail of a failed test is always printed.
"""
import os
import signal
import smtplib
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import DAY, HOST, dot_stuff, expected_tag, tag_matches, wait_until  # noqa: E402

RELAY = KEYS = None
SWAKS = "/usr/bin/swaks"

HOMER = "homer@example.com"
BART = "bart@elsewhere.org"        # a foreign domain: never checked
LISA = "lisa@other.org"            # a normal (non-bounce) sender
VERIFY_DOMAINS = ["example.com", "example.org"]

VERDICTS = ("valid", "bad_signature", "expired", "unknown_key", "malformed", "untagged")
INVALID = VERDICTS[1:]
REFUSED_TEXT = {
    "bad_signature": "5.7.1 bounce refused: bad signature",
    "expired": "5.7.1 bounce refused: tag expired",
    "unknown_key": "5.7.1 bounce refused: unknown key",
    "malformed": "5.7.1 bounce refused: malformed tag",
    "untagged": "5.7.1 bounce refused: address not tagged",
}
# Monitor header: worst verdict wins (bad_signature > unknown_key > malformed > expired > untagged
# > valid).
SEVERITY = ("valid", "untagged", "expired", "malformed", "unknown_key", "bad_signature")
NO_VALID_RCPT = (554, "5.5.1 No valid recipients")

BODY_LINES = [b"From: MAILER-DAEMON@remote.test", b"To: someone@example.com",
              b"Subject: Undelivered Mail Returned to Sender", b"", b"first line",
              b".a line that starts with a dot", b"8-bit: caf\xc3\xa9", b"", b"last line"]
WIRE = dot_stuff(BODY_LINES)                 # dot-stuffed, CRLF, without the final ".\r\n"
PLAIN = b"".join(x + b"\r\n" for x in BODY_LINES)   # what smtplib gets (it stuffs itself)


def status_header(verdict):
    return b"X-BATV-Status: " + verdict.encode() + b"\r\n"


def worst(verdicts):
    return max(verdicts, key=SEVERITY.index)


def xtext(s):
    """RFC 3461 xtext encoding (for ORCPT): '+', '=' and characters outside ! .. ~ as +HH."""
    return "".join("+%02X" % ord(ch) if ch in "+=" or not "!" <= ch <= "~" else ch for ch in s)


def bare(v):
    """A logged address without its angle brackets ("<a@b>" -> "a@b"; "-" stays "-")."""
    if v is not None and len(v) >= 2 and v.startswith("<") and v.endswith(">"):
        return v[1:-1]
    return v


def local_for(verdict, domain="example.com"):
    """A recipient of our domain dedicated to one verdict, so upstream transcripts show which
    recipients got through."""
    return "homer-%s@%s" % (verdict.replace("_", "-"), domain)


# =============================================================================================
class InboundTestCase(cases.RelayTestCase):
    """cases.RelayTestCase with the inbound helpers: tags of every verdict, next-hop and log
    inspection, one-message sessions."""

    HELO = "mx.remote.test"
    CHECK_CONFIG = True
    RELAY_KW = {"verify_domains": VERIFY_DOMAINS}

    def setUp(self):
        super().setUp()
        self._expired = {}

    def relay(self, mx, smarthost=None, forward_client=None, **kw):
        """Relay with listener 0 = inbound towards `mx` (plus listener 1 = outbound towards
        `smarthost` when given); domains.verify = example.com and example.org."""
        li = {"role": "inbound", "upstream": mx.port}
        if forward_client is not None:
            li["forward_client"] = forward_client
        listeners = [li]
        if smarthost is not None:
            listeners.append({"role": "outbound", "upstream": smarthost.port})
        return self.start_relay(listeners, **kw)

    # -- tags --
    def tag(self, verdict, addr=HOMER):
        """An address of `verdict` for `addr` (see the module docstring)."""
        if verdict == "valid":
            return expected_tag(addr)
        if verdict == "bad_signature":
            t = expected_tag(addr)
            i = len("prvs=3ddd") + 5               # the last hex digit of the signature
            return t[:i] + ("0" if t[i] != "0" else "1") + t[i + 1:]
        if verdict == "expired":
            if addr not in self._expired:
                then = int(time.time()) - 9 * DAY
                rc, out, err = self.keys.run("sign", addr, now=then)
                self.assertEqual(rc, 0, err)
                tagged = out.strip()
                self.assertTrue(tag_matches(tagged, addr, then, then), (tagged, addr))
                self.assertEqual(self.keys.verify(tagged)[1], "expired", tagged)
                self._expired[addr] = tagged
            return self._expired[addr]
        if verdict == "unknown_key":
            return expected_tag(addr, key_id=4)
        if verdict == "malformed":
            return "prvs=3abc12345z=" + addr
        if verdict == "untagged":
            return addr
        raise ValueError(verdict)

    # -- upstream inspection --
    @staticmethod
    def mx_rcpts(up):
        return [c.line for conn in up.connections() for c in conn.commands
                if c.line.split(" ", 1)[0].upper() == "RCPT"]

    @staticmethod
    def mx_verbs(up, verb):
        return [c.line for conn in up.connections() for c in conn.commands
                if c.line.split(" ", 1)[0].upper() == verb]

    def wait_mx_idle(self, up, timeout=5.0):
        """Wait until every next-hop connection so far is closed (the relay QUITs it when the
        client QUITs), so the transcripts are complete."""
        self.assertTrue(wait_until(lambda: all(c.closed.is_set() for c in up.connections()),
                                   timeout), "next-hop connections still open")

    def assertNotSentUpstream(self, up, *needles):
        for line in self.mx_rcpts(up):
            for n in needles:
                self.assertNotIn(n.split("@")[0], line, "refused recipient %s reached the MX: %r"
                                 % (n, line))

    # -- logs --
    def rcpt_logs(self, relay, n, timeout=5.0):
        recs = relay.wait_logs(lambda x: x.get("event") == "rcpt", n, timeout)
        self.assertEqual(len(recs), n, "want exactly %d event=rcpt lines, got:\n%s"
                         % (n, "\n".join(x["_raw"] for x in recs)))
        return recs

    def assertRcptLog(self, rec, to, upstream_to, verdict, action, domain=None):
        """One event=rcpt line: to, upstream_to ("-" when nothing went upstream), domain (the
        recipient's, lowercase), verdict (unless None), action, sid. Addresses are compared
        without their angle brackets. Every mismatch is reported at once."""
        want = {"to": to, "upstream_to": upstream_to, "action": action,
                "domain": domain or to.rsplit("@", 1)[1].lower()}
        if verdict is not None:
            want["verdict"] = verdict
        got = {k: bare(rec.get(k)) for k in want}
        bad = ["%s=%r (want %r)" % (k, got[k], want[k]) for k in want if got[k] != want[k]]
        if not rec.get("sid"):
            bad.append("no sid")
        if bad:
            self.fail("event=rcpt mismatch: %s\n  %s" % ("; ".join(bad), rec["_raw"]))

    # -- SMTP --
    def assertReply(self, reply, code, text=None):
        self.assertEqual(reply.code, code, reply)
        if text is not None:
            self.assertEqual(reply.text, text, reply)

    def rcpt_replies(self, c, sender, rcpts):
        """MAIL FROM:<sender> then one RCPT per address; the replies to the RCPTs."""
        self.assertReply(c.cmd("MAIL FROM:<%s>" % sender), 250)
        return [c.cmd("RCPT TO:<%s>" % a) for a in rcpts]

    def data(self, c, wire=WIRE):
        r = c.cmd("DATA")
        self.assertReply(r, 354)
        c.send(wire + b".\r\n")
        return c.read_reply(15)

    def one_message(self, relay, sender, rcpts, wire=WIRE, expect=None):
        """A fresh session: MAIL, RCPTs (asserting `expect` codes when given, else all 250),
        DATA when some RCPT got 250, QUIT. Returns (rcpt replies, final reply or None)."""
        c = self.session(relay)
        replies = self.rcpt_replies(c, sender, rcpts)
        want = expect or [250] * len(rcpts)
        self.assertEqual([x.code for x in replies], want, replies)
        final = None
        if any(x.code == 250 for x in replies):
            final = self.data(c, wire)
            self.assertReply(final, 250)
        self.assertReply(c.cmd("QUIT"), 221)
        return replies, final


# =============================================================================================
class BounceEnforceTest(InboundTestCase):
    """MAIL FROM:<> to our domain, mode enforce (the default, no [inbound] table at all)."""

    def test_every_verdict_with_smtplib(self):
        mx = self.upstream()
        r = self.relay(mx)
        for verdict in VERDICTS:
            with self.subTest(verdict=verdict):
                addr = local_for(verdict)
                tagged = self.tag(verdict, addr)
                params = ["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;" + xtext(tagged)]
                before = len(mx.accepted())
                s = self.smtp(r)
                s.ehlo()
                self.assertTrue(s.has_extn("dsn"), s.esmtp_features)
                self.assertEqual(s.mail("")[0], 250)
                code, text = s.rcpt(tagged, params)
                if verdict == "valid":
                    self.assertEqual(code, 250, text)
                    code, text = s.data(PLAIN)
                    self.assertEqual(code, 250, text)
                    s.quit()
                    tx = mx.wait_transactions(before + 1)[before]
                    self.assertEqual(tx.mail, "MAIL FROM:<>")
                    self.assertEqual(tx.rcpts, ["RCPT TO:<%s> %s" % (addr, " ".join(params))])
                    self.assertEqual(bytes(tx.data), WIRE)      # no header in enforce mode
                else:
                    self.assertEqual((code, text.decode()), (550, REFUSED_TEXT[verdict]))
                    with self.assertRaises(smtplib.SMTPDataError) as cm:
                        s.data(PLAIN)
                    self.assertEqual((cm.exception.smtp_code, cm.exception.smtp_error.decode()),
                                     NO_VALID_RCPT)
                    s.quit()
                    self.wait_mx_idle(mx)
                    self.assertNotSentUpstream(mx, addr)
        self.wait_mx_idle(mx)
        self.assertEqual(len(self.mx_verbs(mx, "DATA")), 1, "DATA reached the MX for a refused bounce")
        self.assertEqual(len(self.mx_rcpts(mx)), 1, self.mx_rcpts(mx))
        recs = self.rcpt_logs(r, len(VERDICTS))
        for rec, verdict in zip(recs, VERDICTS):
            addr = local_for(verdict)
            if verdict == "valid":
                self.assertRcptLog(rec, self.tag(verdict, addr), addr, "valid", "accepted")
            else:
                self.assertRcptLog(rec, self.tag(verdict, addr), "-", verdict, "refused")
        ends = self.session_ends(r, len(VERDICTS))
        self.assertEqual([e.get("refused") for e in ends], ["0"] + ["1"] * len(INVALID),
                         [e["_raw"] for e in ends])
        self.assertEqual({e.get("role") for e in ends}, {"inbound"})

    def test_tag_and_domain_case(self):
        mx = self.upstream()
        r = self.relay(mx)
        valid = self.tag("valid")
        upper_tag = "PRVS=" + valid[5:16].upper() + HOMER                # PRVS=3DDDABCDEF=homer@..
        upper_domain = valid.rsplit("@", 1)[0] + "@EXAMPLE.COM"
        upper_local = valid.replace("=homer@", "=Homer@")                 # local part is hashed
        replies, _ = self.one_message(r, "", [upper_tag, upper_domain, upper_local],
                                      expect=[250, 250, 550])
        self.assertEqual(replies[2].text, REFUSED_TEXT["bad_signature"])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<homer@EXAMPLE.COM>"])

    def test_pipelined_bounce(self):
        mx = self.upstream()
        r = self.relay(mx)
        c = self.session(r)
        self.assertIn("PIPELINING", c.ehlo_reply.text.split("\n"))
        rcpts = [HOMER, self.tag("valid"), self.tag("malformed", "marge@example.com"), BART,
                 self.tag("valid", "lisa@example.org")]
        c.send("MAIL FROM:<>\r\n" + "".join("RCPT TO:<%s>\r\n" % a for a in rcpts) + "DATA\r\n")
        replies = c.read_replies(len(rcpts) + 2)
        self.assertEqual([x.code for x in replies], [250, 550, 250, 550, 250, 250, 354], replies)
        self.assertEqual(replies[1].text, REFUSED_TEXT["untagged"])
        self.assertEqual(replies[3].text, REFUSED_TEXT["malformed"])
        c.send(WIRE + b".\r\nQUIT\r\n")
        self.assertReply(c.read_reply(15), 250)
        self.assertReply(c.read_reply(), 221)
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in (HOMER, BART, "lisa@example.org")])
        self.assertEqual(bytes(tx.data), WIRE)

    def test_every_verdict_with_swaks(self):
        if not os.access(SWAKS, os.X_OK):
            self.skipTest("swaks not installed")
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "enforce"})
        for verdict in VERDICTS:
            with self.subTest(verdict=verdict):
                addr = local_for(verdict)
                before = len(mx.accepted())
                p = subprocess.run([SWAKS, "--server", HOST, "--port", str(r.port()),
                                    "--helo", "mx.remote.test", "--from", "<>",
                                    "--to", self.tag(verdict, addr),
                                    "--body", "bounce via swaks", "--timeout", "20"],
                                   capture_output=True, timeout=60)
                out = p.stdout.decode(errors="replace")
                if verdict == "valid":
                    self.assertEqual(p.returncode, 0, out[-3000:])
                    tx = mx.wait_transactions(before + 1)[before]
                    self.assertEqual((tx.mail, tx.rcpts), ("MAIL FROM:<>", ["RCPT TO:<%s>" % addr]))
                    self.assertIn(b"bounce via swaks", bytes(tx.data))
                    self.assertNotIn(b"X-BATV-Status", bytes(tx.data))
                else:
                    self.assertEqual(p.returncode, 24, out[-3000:])   # 24: no RCPT accepted
                    self.assertIn("550 " + REFUSED_TEXT[verdict], out)
                    self.wait_mx_idle(mx)
                    self.assertNotSentUpstream(mx, addr)
        self.assertEqual(len(self.mx_verbs(mx, "DATA")), 1)


# =============================================================================================
class BounceMonitorTest(InboundTestCase):
    """mode = "monitor": everything accepted, tags stripped, X-BATV-Status on the message."""

    def test_every_verdict_with_smtplib(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        for verdict in VERDICTS:
            with self.subTest(verdict=verdict):
                addr = local_for(verdict)
                tagged = self.tag(verdict, addr)
                before = len(mx.accepted())
                s = self.smtp(r)
                s.ehlo()
                self.assertEqual(s.mail("")[0], 250)
                code, text = s.rcpt(tagged, ["NOTIFY=NEVER"])
                self.assertEqual(code, 250, text)
                code, text = s.data(PLAIN)
                self.assertEqual(code, 250, text)
                s.quit()
                tx = mx.wait_transactions(before + 1)[before]
                want_to = tagged if verdict == "malformed" else addr
                self.assertEqual(tx.rcpts, ["RCPT TO:<%s> NOTIFY=NEVER" % want_to])
                self.assertEqual(bytes(tx.data), status_header(verdict) + WIRE)
        recs = self.rcpt_logs(r, len(VERDICTS))
        for rec, verdict in zip(recs, VERDICTS):
            addr = local_for(verdict)
            tagged = self.tag(verdict, addr)
            self.assertRcptLog(rec, tagged, tagged if verdict == "malformed" else addr, verdict,
                               "accepted" if verdict == "valid" else "monitored")
        ends = self.session_ends(r, len(VERDICTS))
        self.assertEqual({e.get("refused") for e in ends}, {"0"}, [e["_raw"] for e in ends])

    def test_every_verdict_with_swaks(self):
        if not os.access(SWAKS, os.X_OK):
            self.skipTest("swaks not installed")
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        eml = os.path.join(self.dir, "ndr.eml")
        with open(eml, "wb") as f:
            f.write(PLAIN)
        for verdict in VERDICTS:
            with self.subTest(verdict=verdict):
                addr = local_for(verdict)
                tagged = self.tag(verdict, addr)
                before = len(mx.accepted())
                p = subprocess.run([SWAKS, "--server", HOST, "--port", str(r.port()),
                                    "--helo", "mx.remote.test", "--from", "<>", "--to", tagged,
                                    "--data", "@" + eml, "--timeout", "20"],
                                   capture_output=True, timeout=60)
                self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace")[-3000:])
                tx = mx.wait_transactions(before + 1)[before]
                want_to = tagged if verdict == "malformed" else addr
                self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % want_to])
                # swaks sends the file (stuffed) and one more CRLF before the dot.
                self.assertIn(bytes(tx.data), (status_header(verdict) + WIRE,
                                               status_header(verdict) + WIRE + b"\r\n"))

    def test_bdat_gets_the_header_too(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        c = self.session(r)
        self.assertIn("CHUNKING", c.ehlo_reply.text.split("\n"))
        replies = self.rcpt_replies(c, "", [self.tag("bad_signature"), self.tag("valid", "marge@example.com")])
        self.assertEqual([x.code for x in replies], [250, 250], replies)
        chunks = [b"Subject: chunked bounce\r\n\r\n", b".not stuffed in BDAT\r\n", b"tail\r\n"]
        c.send(b"BDAT %d\r\n" % len(chunks[0]) + chunks[0])
        self.assertReply(c.read_reply(), 250)
        c.send(b"BDAT %d\r\n" % len(chunks[1]) + chunks[1])
        self.assertReply(c.read_reply(), 250)
        c.send(b"BDAT %d LAST\r\n" % len(chunks[2]) + chunks[2])
        self.assertReply(c.read_reply(15), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<marge@example.com>"])
        self.assertEqual(bytes(tx.data), b"")
        self.assertEqual(bytes(tx.bdat), status_header("bad_signature") + b"".join(chunks))
        self.assertEqual(tx.size, len(status_header("bad_signature")) + sum(map(len, chunks)))

    def test_header_names_the_worst_verdict_of_each_message(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        combos = [("valid",), ("untagged",), ("valid", "expired"), ("untagged", "valid"),
                  ("expired", "untagged", "valid"), ("malformed", "expired"),
                  ("unknown_key", "malformed"), ("valid", "bad_signature", "unknown_key"),
                  ("valid",)]
        c = self.session(r)
        for i, combo in enumerate(combos):
            with self.subTest(combo=combo):
                addrs = ["m%d-%d@example.com" % (i, j) for j in range(len(combo))]
                rcpts = [self.tag(v, a) for v, a in zip(combo, addrs)]
                replies = self.rcpt_replies(c, "", rcpts)
                self.assertEqual([x.code for x in replies], [250] * len(combo), replies)
                body = b"Subject: combo %d\r\n\r\nbody %d\r\n" % (i, i)
                self.assertReply(self.data(c, body), 250)
                tx = mx.wait_transactions(i + 1)[i]
                self.assertEqual(bytes(tx.data), status_header(worst(combo)) + body)
        self.assertReply(c.cmd("QUIT"), 221)

    def test_rset_forgets_the_verdict(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        c = self.session(r)
        self.assertEqual([x.code for x in self.rcpt_replies(c, "", [self.tag("bad_signature")])],
                         [250])
        self.assertReply(c.cmd("RSET"), 250)
        self.assertEqual([x.code for x in self.rcpt_replies(c, "", [self.tag("expired")])], [250])
        self.assertReply(self.data(c), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(bytes(tx.data), status_header("expired") + WIRE)

    def test_no_header_for_a_normal_sender(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"})
        self.one_message(r, LISA, [HOMER, self.tag("bad_signature", "marge@example.com")])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(bytes(tx.data), WIRE)
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<marge@example.com>"])


# =============================================================================================
class MixedAndExemptTest(InboundTestCase):
    def test_valid_and_invalid_recipients_in_one_bounce(self):
        mx = self.upstream()
        r = self.relay(mx)
        rcpts = [self.tag("bad_signature", "marge@example.com"), self.tag("valid"),
                 "lisa@example.com", self.tag("expired", "maggie@example.org"), BART]
        replies, final = self.one_message(r, "", rcpts, expect=[550, 250, 550, 550, 250])
        self.assertEqual(replies[0].text, REFUSED_TEXT["bad_signature"])
        self.assertEqual(replies[2].text, REFUSED_TEXT["untagged"])
        self.assertEqual(replies[3].text, REFUSED_TEXT["expired"])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.mail, "MAIL FROM:<>")
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<%s>" % BART])
        self.assertEqual(bytes(tx.data), WIRE)
        self.wait_mx_idle(mx)
        self.assertNotSentUpstream(mx, "marge@", "lisa@", "maggie@")
        end = self.session_ends(r)[0]
        self.assertEqual(end.get("refused"), "3", end["_raw"])

    def test_all_refused_data_gets_554_and_mx_sees_no_data(self):
        mx = self.upstream()
        r = self.relay(mx)
        c = self.session(r)
        replies = self.rcpt_replies(c, "", [HOMER, self.tag("unknown_key", "marge@example.com")])
        self.assertEqual(replies, [(550, REFUSED_TEXT["untagged"]), (550, REFUSED_TEXT["unknown_key"])])
        self.assertReply(c.cmd("DATA"), *NO_VALID_RCPT)
        # The session goes on: RSET and a good bounce still work.
        self.assertReply(c.cmd("RSET"), 250)
        self.assertEqual([x.code for x in self.rcpt_replies(c, "", [self.tag("valid")])], [250])
        self.assertReply(self.data(c), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        self.wait_mx_idle(mx)
        self.assertEqual(self.mx_rcpts(mx), ["RCPT TO:<%s>" % HOMER])
        self.assertEqual(len(self.mx_verbs(mx, "DATA")), 1)
        self.assertEqual(len(mx.accepted()), 1)

    def test_postmaster_and_abuse_are_exempt(self):
        mx = self.upstream()
        r = self.relay(mx)
        rcpts = ["postmaster@example.com", "Postmaster@Example.COM", "abuse@example.org",
                 "ABUSE@example.com", self.tag("bad_signature", "postmaster@example.com"),
                 "webmaster@example.com"]
        replies, _ = self.one_message(r, "", rcpts, expect=[250, 250, 250, 250, 250, 550])
        self.assertEqual(replies[5].text, REFUSED_TEXT["untagged"])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<postmaster@example.com>",
                                    "RCPT TO:<Postmaster@Example.COM>",
                                    "RCPT TO:<abuse@example.org>", "RCPT TO:<ABUSE@example.com>",
                                    "RCPT TO:<postmaster@example.com>"])
        self.assertEqual(bytes(tx.data), WIRE)
        recs = self.rcpt_logs(r, 6)
        self.assertEqual([x.get("action") for x in recs], ["exempt"] * 5 + ["refused"],
                         [x["_raw"] for x in recs])
        self.assertRcptLog(recs[4], rcpts[4], "postmaster@example.com", "bad_signature", "exempt")
        self.assertRcptLog(recs[1], rcpts[1], rcpts[1], "untagged", "exempt", domain="example.com")

    def test_postmaster_is_exempt_even_when_left_out(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"exempt_local_parts": ["noc"]})
        rcpts = ["postmaster@example.com", "NOC@example.com", "abuse@example.com"]
        replies, _ = self.one_message(r, "", rcpts, expect=[250, 250, 550])
        self.assertEqual(replies[2].text, REFUSED_TEXT["untagged"])
        self.assertEqual(mx.wait_transactions(1)[0].rcpts,
                         ["RCPT TO:<postmaster@example.com>", "RCPT TO:<NOC@example.com>"])

    def test_exempt_client_network(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"accept_untagged_from": ["127.0.0.0/8"]})
        rcpts = [HOMER, self.tag("bad_signature", "marge@example.com"),
                 self.tag("valid", "bart@example.org"), self.tag("expired", "lisa@example.com")]
        self.one_message(r, "", rcpts)
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in
                                    (HOMER, "marge@example.com", "bart@example.org",
                                     "lisa@example.com")])
        self.assertEqual(bytes(tx.data), WIRE)
        recs = self.rcpt_logs(r, 4)
        self.assertEqual([x.get("action") for x in recs],
                         ["exempt", "exempt", "accepted", "exempt"], [x["_raw"] for x in recs])

    def test_other_client_network_is_not_exempt(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"accept_untagged_from": ["10.0.0.0/8", "::1/128"]})
        replies, _ = self.one_message(r, "", [HOMER], expect=[550])
        self.assertEqual(replies[0].text, REFUSED_TEXT["untagged"])

    def test_foreign_domains_pass_untouched(self):
        mx = self.upstream()
        r = self.relay(mx)
        foreign_tag = expected_tag(BART)            # a prvs address, but not of our domains
        rcpts = [BART, foreign_tag, "homer@mail.example.com", "prvs=3abc=x@elsewhere.org"]
        self.one_message(r, "", rcpts)
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in rcpts])
        self.assertEqual(bytes(tx.data), WIRE)
        recs = self.rcpt_logs(r, 4)
        for rec, a in zip(recs, rcpts):
            self.assertRcptLog(rec, a, a, None, "passed")

    def test_mailer_daemon_sender_is_not_a_bounce_by_default(self):
        mx = self.upstream()
        r = self.relay(mx)
        self.one_message(r, "MAILER-DAEMON@mx.remote.test", [HOMER, self.tag("valid", "marge@example.com")])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.mail, "MAIL FROM:<MAILER-DAEMON@mx.remote.test>")
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<marge@example.com>"])
        recs = self.rcpt_logs(r, 2)
        self.assertEqual([x.get("action") for x in recs], ["passed", "stripped"],
                         [x["_raw"] for x in recs])

    def test_mailer_daemon_sender_is_a_bounce_when_configured(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mailer_daemon_is_bounce": True})
        for sender in ("MAILER-DAEMON@mx.remote.test", "mailer-daemon@Other.Test"):
            with self.subTest(sender=sender):
                replies, _ = self.one_message(r, sender, [HOMER, self.tag("valid", "marge@example.com")],
                                              expect=[550, 250])
                self.assertEqual(replies[0].text, REFUSED_TEXT["untagged"])
        txs = mx.wait_transactions(2)
        self.assertEqual([t.rcpts for t in txs], [["RCPT TO:<marge@example.com>"]] * 2)
        self.assertEqual(txs[1].mail, "MAIL FROM:<mailer-daemon@Other.Test>")
        # A normal sender that merely contains the name is no bounce.
        self.one_message(r, "not-mailer-daemon@mx.remote.test", [HOMER])

    def test_domain_mode_overrides_mode(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "enforce"}, domain_mode={"example.org": "monitor"})
        rcpts = ["marge@example.org", HOMER, self.tag("expired", "lisa@example.org"),
                 self.tag("bad_signature", "bart@example.com")]
        replies, _ = self.one_message(r, "", rcpts, expect=[250, 550, 250, 550])
        self.assertEqual(replies[1].text, REFUSED_TEXT["untagged"])
        self.assertEqual(replies[3].text, REFUSED_TEXT["bad_signature"])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<marge@example.org>", "RCPT TO:<lisa@example.org>"])
        # Only monitored recipients count for the header: expired > untagged.
        self.assertEqual(bytes(tx.data), status_header("expired") + WIRE)
        recs = self.rcpt_logs(r, 4)
        self.assertEqual([x.get("action") for x in recs],
                         ["monitored", "refused", "monitored", "refused"], [x["_raw"] for x in recs])

    def test_domain_mode_enforce_under_global_monitor(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "monitor"}, domain_mode={"example.org": "enforce"})
        replies, _ = self.one_message(r, "", ["marge@example.org", HOMER], expect=[550, 250])
        self.assertEqual(replies[0].text, REFUSED_TEXT["untagged"])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER])
        self.assertEqual(bytes(tx.data), status_header("untagged") + WIRE)

    def test_mode_off(self):
        mx = self.upstream()
        r = self.relay(mx, inbound={"mode": "off"})
        rcpts = {v: self.tag(v, local_for(v)) for v in VERDICTS}
        self.one_message(r, "", list(rcpts.values()))
        tx = mx.wait_transactions(1)[0]
        want = [local_for(v) if v in ("valid", "expired") else rcpts[v] for v in VERDICTS]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in want])
        self.assertEqual(bytes(tx.data), WIRE)
        recs = self.rcpt_logs(r, len(VERDICTS))
        for rec, v, up_to in zip(recs, VERDICTS, want):
            self.assertEqual(bare(rec.get("upstream_to")), up_to, rec["_raw"])
            self.assertNotIn(rec.get("action"), ("refused", "monitored"), rec["_raw"])
        self.assertEqual(self.session_ends(r)[0].get("refused"), "0")


# =============================================================================================
class NormalSenderTest(InboundTestCase):
    """A normal sender (autoresponder, reply) to one of our tagged addresses."""

    def _deliver(self, r, mx, rcpts, expect=None):
        before = len(mx.accepted())
        replies, final = self.one_message(r, LISA, rcpts, expect=expect)
        return replies, (mx.wait_transactions(before + 1)[before] if final else None)

    def test_valid_and_expired_stripped_untagged_and_malformed_passed(self):
        mx = self.upstream()
        r = self.relay(mx)
        rcpts = [self.tag(v, local_for(v)) for v in ("valid", "expired", "malformed", "untagged")]
        _, tx = self._deliver(r, mx, rcpts)
        self.assertEqual(tx.mail, "MAIL FROM:<%s>" % LISA)
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in
                                    (local_for("valid"), local_for("expired"), rcpts[2], rcpts[3])])
        self.assertEqual(bytes(tx.data), WIRE)
        recs = self.rcpt_logs(r, 4)
        self.assertEqual([(x.get("verdict"), x.get("action")) for x in recs],
                         [("valid", "stripped"), ("expired", "stripped"), ("malformed", "passed"),
                          ("untagged", "passed")], [x["_raw"] for x in recs])

    def _bad(self, setting):
        mx = self.upstream()
        inbound = {} if setting is None else {"bad_signature": setting}
        r = self.relay(mx, inbound=inbound)
        rcpts = [self.tag("bad_signature", local_for("bad_signature")),
                 self.tag("unknown_key", local_for("unknown_key")), self.tag("valid")]
        return r, mx, rcpts

    def test_bad_signature_strip_is_the_default(self):
        r, mx, rcpts = self._bad(None)
        _, tx = self._deliver(r, mx, rcpts)
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in
                                    (local_for("bad_signature"), local_for("unknown_key"), HOMER)])
        recs = self.rcpt_logs(r, 3)
        self.assertEqual([(x.get("verdict"), x.get("action")) for x in recs],
                         [("bad_signature", "stripped"), ("unknown_key", "stripped"),
                          ("valid", "stripped")], [x["_raw"] for x in recs])

    def test_bad_signature_strip(self):
        r, mx, rcpts = self._bad("strip")
        _, tx = self._deliver(r, mx, rcpts)
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in
                                    (local_for("bad_signature"), local_for("unknown_key"), HOMER)])

    def test_bad_signature_keep(self):
        r, mx, rcpts = self._bad("keep")
        _, tx = self._deliver(r, mx, rcpts)
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in (rcpts[0], rcpts[1], HOMER)])
        recs = self.rcpt_logs(r, 3)
        self.assertRcptLog(recs[0], rcpts[0], rcpts[0], "bad_signature", "kept")
        self.assertRcptLog(recs[1], rcpts[1], rcpts[1], "unknown_key", "kept")
        self.assertRcptLog(recs[2], rcpts[2], HOMER, "valid", "stripped")

    def test_bad_signature_reject(self):
        r, mx, rcpts = self._bad("reject")
        rcpts.append(self.tag("expired", "lisa@example.com"))
        replies, tx = self._deliver(r, mx, rcpts, expect=[550, 550, 250, 250])
        self.assertEqual(replies[0].text, "5.7.1 tag does not verify: bad signature")
        self.assertEqual(replies[1].text, "5.7.1 tag does not verify: unknown key")
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % HOMER, "RCPT TO:<lisa@example.com>"])
        self.wait_mx_idle(mx)
        self.assertNotSentUpstream(mx, local_for("bad_signature"), local_for("unknown_key"))
        recs = self.rcpt_logs(r, 4)
        self.assertRcptLog(recs[0], rcpts[0], "-", "bad_signature", "refused")
        self.assertRcptLog(recs[3], rcpts[3], "lisa@example.com", "expired", "stripped")
        self.assertEqual(self.session_ends(r)[0].get("refused"), "2")


# =============================================================================================
class ProbeAndLimitTest(InboundTestCase):
    def _probe(self, r, rcpt):
        c = self.session(r)
        self.assertReply(c.cmd("MAIL FROM:<>"), 250)
        reply = c.cmd("RCPT TO:<%s>" % rcpt)
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(c.wait_closed(5))
        return reply

    def test_sender_verification_probe(self):
        mx = self.upstream()
        r = self.relay(mx)
        self.assertReply(self._probe(r, self.tag("valid")), 250)
        self.assertReply(self._probe(r, HOMER), 550, REFUSED_TEXT["untagged"])
        self.assertReply(self._probe(r, self.tag("expired")), 550, REFUSED_TEXT["expired"])
        self.wait_mx_idle(mx)
        self.assertEqual(self.mx_rcpts(mx), ["RCPT TO:<%s>" % HOMER])
        self.assertEqual(self.mx_verbs(mx, "DATA"), [])
        self.assertEqual(len(mx.accepted()), 0)
        ends = self.session_ends(r, 3)
        self.assertEqual([(e.get("reason"), e.get("refused")) for e in ends],
                         [("quit", "0"), ("quit", "1"), ("quit", "1")], [e["_raw"] for e in ends])

    def test_too_many_invalid_recipients(self):
        mx = self.upstream()
        r = self.relay(mx, limits={"invalid_recipients_per_session": 3})
        c = self.session(r)
        self.assertReply(c.cmd("MAIL FROM:<>"), 250)
        self.assertReply(c.cmd("RCPT TO:<%s>" % self.tag("valid")), 250)
        rcpts = ["a1@example.com", "a2@example.com", "a3@example.com", "a4@example.com",
                 "a5@example.com"]
        replies = []
        for a in rcpts:
            try:
                replies.append(c.cmd("RCPT TO:<%s>" % a))
            except (EOFError, ConnectionError):
                break
            if replies[-1].code == 421:
                break
        self.assertEqual([x.code for x in replies], [550, 550, 550, 421], replies)
        self.assertEqual(replies[-1].text, "4.7.0 Too many invalid recipients, closing")
        self.assertTrue(c.wait_closed(5), "relay did not close after the 421")
        self.wait_mx_idle(mx)
        self.assertEqual(self.mx_rcpts(mx), ["RCPT TO:<%s>" % HOMER])
        self.assertEqual(self.mx_verbs(mx, "DATA"), [])
        end = self.session_ends(r)[0]
        self.assertEqual(end.get("refused"), "3", end["_raw"])
        self.assertEqual(end.get("reason"), "too_many_invalid_recipients", end["_raw"])
        self.assertEqual(len(r.logs("session_end")), 1)
        # The budget is per session: a new session starts from zero.
        replies, _ = self.one_message(r, "", [self.tag("valid"), "b1@example.com", "b2@example.com"],
                                      expect=[250, 550, 550])

    def test_session_lifetime_is_bounded(self):
        # A client that keeps the session alive with NOOPs inside the idle timeout is still
        # closed once timeouts.session is over, at the next command boundary.
        mx = self.upstream()
        r = self.relay(mx, timeouts={"session": 2, "idle": 30})
        c = self.session(r)
        started = time.monotonic()
        last = None
        while time.monotonic() - started < 10:
            try:
                last = c.cmd("NOOP")
            except (EOFError, ConnectionError):
                break
            if last.code != 250:
                break
            time.sleep(0.3)
        self.assertIsNotNone(last)
        self.assertEqual((last.code, last.text), (421, "4.4.2 relay.test Error: session too long, closing"))
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(c.wait_closed(5))
        end = self.session_ends(r)[0]
        self.assertEqual(end.get("reason"), "session_timeout", end["_raw"])


# =============================================================================================
def postfix_ndr(envelope_rcpt, original_sender, original_message, queue_id="4F3A21C0123"):
    """A bounce as Postfix's bounce(8) writes it: multipart/report with a text notification, a
    message/delivery-status part and the returned message as message/rfc822. Returns the body
    lines (bytes, no CRLF)."""
    boundary = b"%s.1795424400/mx.remote.test" % queue_id.encode()
    text = b"""Received: by mx.remote.test (Postfix)
	id %(q)s; Mon, 23 Nov 2026 09:00:02 +0000 (UTC)
Date: Mon, 23 Nov 2026 09:00:02 +0000 (UTC)
From: MAILER-DAEMON@mx.remote.test (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: %(to)s
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
	boundary="%(b)s"
Content-Transfer-Encoding: 8bit
Message-Id: <20261123090002.%(q)s@mx.remote.test>

This is a MIME-encapsulated message.

--%(b)s
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.remote.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<nobody@remote.test>: host mail.remote.test[192.0.2.25] said: 550 5.1.1
    <nobody@remote.test>: Recipient address rejected: User unknown in local
    recipient table (in reply to RCPT TO command)

--%(b)s
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.remote.test
X-Postfix-Queue-ID: %(q)s
X-Postfix-Sender: rfc822; %(s)s
Arrival-Date: Mon, 23 Nov 2026 09:00:01 +0000 (UTC)

Final-Recipient: rfc822; nobody@remote.test
Original-Recipient: rfc822;nobody@remote.test
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.remote.test
Diagnostic-Code: smtp; 550 5.1.1 <nobody@remote.test>: Recipient address
    rejected: User unknown in local recipient table

--%(b)s
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

Return-Path: <%(s)s>
Received: from relay.test (relay.test [198.51.100.7])
	by mx.remote.test (Postfix) with ESMTPS id %(q)s
	for <nobody@remote.test>; Mon, 23 Nov 2026 09:00:01 +0000 (UTC)
""" % {b"q": queue_id.encode(), b"to": envelope_rcpt.encode(), b"b": boundary,
       b"s": original_sender.encode()}
    lines = text.split(b"\n")[:-1] + original_message + [b"", b"--" + boundary + b"--", b""]
    return lines


SPAM = [b"From: Homer Simpson <homer@example.com>", b"To: nobody@remote.test",
        b"Subject: Cheap r0lex, best pr1ces", b"Date: Mon, 23 Nov 2026 08:59:00 +0000",
        b"Message-ID: <spam.424242@botnet.invalid>", b"", b"Buy now!!! caf\xc3\xa9 \xe2\x82\xac5",
        b".", b"..two dots", b"http://spam.invalid/"]
HOMERS_MAIL = [b"From: Homer Simpson <homer@example.com>", b"To: nobody@remote.test",
               b"Subject: donuts", b"Date: Mon, 23 Nov 2026 08:58:00 +0000",
               b"Message-ID: <real.1@example.com>", b"", b"Mmm, donuts.", b".sig -- Homer"]


class FieldScenarioTest(InboundTestCase):
    def test_forged_bounce_refused_real_bounce_delivered(self):
        mx = self.upstream()
        smarthost = self.upstream()
        r = self.relay(mx, smarthost=smarthost)
        # Homer really sends a message, through the relay's outbound listener.
        s = self.smtp(r, listener=1)
        t0 = time.time()
        self.assertEqual(s.sendmail(HOMER, ["nobody@remote.test"],
                                    b"".join(x + b"\r\n" for x in HOMERS_MAIL)), {})
        t1 = time.time()
        s.quit()
        out_tx = smarthost.wait_transactions(1)[0]
        tagged = out_tx.sender
        self.assertTrue(tag_matches(tagged, HOMER, t0, t1), tagged)
        # (The MX has the inbound listener's capability probe: a connection without a transaction.)
        self.assertEqual(mx.transactions(), [], "the outbound message went to the MX")

        # The spammer's forgery bounces back untagged: refused at RCPT.
        spam_ndr = dot_stuff(postfix_ndr(HOMER, HOMER, SPAM, "7B1C3D4E5F"))
        c = self.session(r)
        self.assertReply(c.cmd("MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(spam_ndr)), 250)
        self.assertReply(c.cmd("RCPT TO:<%s> NOTIFY=NEVER" % HOMER), 550, REFUSED_TEXT["untagged"])
        self.assertReply(c.cmd("DATA"), *NO_VALID_RCPT)
        self.assertReply(c.cmd("QUIT"), 221)

        # The NDR of Homer's real message carries the tag: delivered, tag stripped, byte-exact.
        real_ndr = dot_stuff(postfix_ndr(tagged, tagged, out_tx_lines(out_tx), "9A8B7C6D5E"))
        self.assertIn(b"\r\n..sig -- Homer\r\n", real_ndr)
        c = self.session(r)
        self.assertReply(c.cmd("MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(real_ndr)), 250)
        self.assertReply(c.cmd("RCPT TO:<%s> NOTIFY=NEVER" % tagged), 250)
        self.assertReply(self.data(c, real_ndr), 250)
        self.assertReply(c.cmd("QUIT"), 221)

        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.mail, "MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(real_ndr))
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s> NOTIFY=NEVER" % HOMER])
        self.assertEqual(bytes(tx.data), real_ndr)
        self.wait_mx_idle(mx)
        self.assertEqual(self.mx_rcpts(mx), ["RCPT TO:<%s> NOTIFY=NEVER" % HOMER])
        self.assertEqual(len(self.mx_verbs(mx, "DATA")), 1)
        recs = self.rcpt_logs(r, 2)
        self.assertRcptLog(recs[0], HOMER, "-", "untagged", "refused")
        self.assertRcptLog(recs[1], tagged, HOMER, "valid", "accepted")


def out_tx_lines(tx):
    """The body lines the smarthost received (unstuffed), as a returned message would quote
    them."""
    lines = bytes(tx.data).split(b"\r\n")[:-1]
    return [x[1:] if x.startswith(b".") else x for x in lines]


# =============================================================================================
class KeyRotationTest(InboundTestCase):
    def test_rotation_keeps_old_tags_valid_and_signs_with_new_key(self):
        mx = self.upstream()
        smarthost = self.upstream()
        r = self.relay(mx, smarthost=smarthost)
        s = self.smtp(r, listener=1)
        self.assertEqual(s.sendmail(HOMER, [BART], b"Subject: before\r\n\r\nbefore\r\n"), {})
        s.quit()
        old_tag = smarthost.wait_transactions(1)[0].sender
        self.assertTrue(old_tag.startswith("prvs=3"), old_tag)

        new_id = self.keys.rotate()
        self.assertNotEqual(new_id, 3)
        r.send_signal(signal.SIGHUP)
        rec = r.wait_log(lambda x: x.get("event") == "reload", 5)
        self.assertIsNotNone(rec, "no event=reload after SIGHUP")
        self.assertEqual((rec.get("result"), rec.get("keys"), rec.get("signing_key")),
                         ("ok", "2", str(new_id)), rec["_raw"])

        # A bounce to the old tag is still accepted (key 3 now verifies only).
        self.one_message(r, "", [old_tag])
        self.assertEqual(mx.wait_transactions(1)[0].rcpts, ["RCPT TO:<%s>" % HOMER])
        # New outbound mail is signed with the new key, and its bounce is accepted too.
        s = self.smtp(r, listener=1)
        self.assertEqual(s.sendmail(HOMER, [BART], b"Subject: after\r\n\r\nafter\r\n"), {})
        s.quit()
        new_tag = smarthost.wait_transactions(2)[1].sender
        self.assertTrue(new_tag.startswith("prvs=%d" % new_id), new_tag)
        self.assertEqual(self.keys.verify(new_tag), (0, "valid"))
        self.one_message(r, "", [new_tag, old_tag])
        self.assertEqual(mx.wait_transactions(2)[1].rcpts, ["RCPT TO:<%s>" % HOMER] * 2)
        # The inbound listener never signs: a message from Homer through it keeps its sender.
        self.one_message(r, HOMER, [BART])
        self.assertEqual(mx.wait_transactions(3)[2].mail, "MAIL FROM:<%s>" % HOMER)
        self.assertTrue(r.running())


# =============================================================================================
class LogTest(InboundTestCase):
    def test_xclient_not_offered_is_a_warning_once_per_listener(self):
        # The MX then sees the relay's address (which Postfix's mynetworks may trust): the admin
        # must hear about it, but not once per session.
        mx = self.upstream()  # the scripted MX offers no XCLIENT
        r = self.relay(mx, forward_client="xclient", extra_toml='[logging]\nlevel = "debug"\n')
        for _ in range(3):
            # The next hop opens at MAIL (upstream_connect = "mail"): XCLIENT would go then.
            c = self.session(r)
            self.assertReply(c.cmd("MAIL FROM:<>"), 250)
            self.assertReply(c.cmd("QUIT"), 221)
        r.wait_logs(lambda x: x.get("event") == "session_end", 3, 10)
        recs = [x for x in r.logs("xclient") if x.get("result") == "not_offered"]
        self.assertEqual(len(recs), 3, [x["_raw"] for x in recs])
        self.assertEqual([x.get("level") for x in recs].count("warning"), 1,
                         [x["_raw"] for x in recs])

    def test_one_rcpt_event_per_recipient_and_refused_in_session_end(self):
        mx = self.upstream()
        r = self.relay(mx, forward_client="none")
        rcpts = [self.tag("valid"), self.tag("bad_signature", "marge@Example.COM"), BART,
                 "postmaster@example.org", "lisa@example.com"]
        c = self.session(r)
        replies = self.rcpt_replies(c, "", rcpts)
        self.assertEqual([x.code for x in replies], [250, 550, 250, 250, 550], replies)
        self.assertReply(self.data(c), 250)
        # A second transaction in the same session: one more refusal.
        replies = self.rcpt_replies(c, "", [self.tag("malformed", "x@example.com")])
        self.assertReply(replies[0], 550, REFUSED_TEXT["malformed"])
        self.assertReply(c.cmd("QUIT"), 221)
        recs = self.rcpt_logs(r, 6)
        self.assertRcptLog(recs[0], rcpts[0], HOMER, "valid", "accepted")
        self.assertRcptLog(recs[1], rcpts[1], "-", "bad_signature", "refused")
        self.assertRcptLog(recs[2], BART, BART, None, "passed")
        self.assertRcptLog(recs[3], rcpts[3], rcpts[3], "untagged", "exempt")
        self.assertRcptLog(recs[4], rcpts[4], "-", "untagged", "refused")
        self.assertRcptLog(recs[5], self.tag("malformed", "x@example.com"), "-", "malformed",
                           "refused")
        self.assertEqual(len({x.get("sid") for x in recs}), 1, "one session, one sid")
        end = self.session_ends(r)[0]
        self.assertEqual((end.get("role"), end.get("reason"), end.get("refused"), end.get("messages")),
                         ("inbound", "quit", "3", "1"), end["_raw"])
        self.assertEqual(end.get("sid"), recs[0].get("sid"), end["_raw"])
        self.assertEqual(end.get("signed"), "0", end["_raw"])
        mail = r.logs("mail")
        self.assertTrue(all(m.get("signing") != "signed" for m in mail), [m["_raw"] for m in mail])
        tx = mx.wait_transactions(1)[0]
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % a for a in (HOMER, BART, rcpts[3])])


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
