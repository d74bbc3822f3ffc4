#!/usr/bin/env python3
"""batv-relay outbound proxy end to end: the real relay between real SMTP clients and servers.

Usage: test_outbound.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args, e.g. -k bdat]

Each test writes its own key file (secret "secretkey" as signing key 3, so tags are computable
with hmac, see harness.expected_tag) and config, starts the relay on 127.0.0.1:0 and talks to it
with swaks, smtplib, smtp-source or a raw socket; the next hop is harness.ScriptedUpstream (exact
byte transcript, fault injection) or Postfix's smtp-sink. The behaviour checked is the outbound
contract (issue 3): signing decisions, byte-exact streaming of DATA and BDAT, pipelining, next-hop
faults, client input errors and limits, timeouts, session_end accounting, SIGTERM and SIGHUP.

Set BATV_E2E_LOGS=1 to print every relay log; the log tail of a failed test is always printed.
"""
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import (DEFAULT_CAPS, HOST, MiB, SMTP_SINK, SMTP_SOURCE, SmtpSink,  # noqa: E402
                     closed_port, dot_stuff, expected_tag, smtp_dialogue, tag_matches, wait_until)

RELAY = KEYS = None
SWAKS = "/usr/bin/swaks"

HOMER = "homer@example.com"
BART = "bart@elsewhere.org"
SIMPLE_BODY = b"Subject: e2e\r\n\r\nhello\r\n"

# Short timeouts for fault tests (seconds).
FAST = {"idle": 5, "command": 5, "upstream_connect": 2, "upstream_reply": 2,
        "upstream_data_reply": 2, "shutdown_grace": 1}


class OutboundTestCase(cases.RelayTestCase):
    """cases.RelayTestCase (one outbound listener by default) with the signing assertions."""

    SENDER, RCPTS, BODY = HOMER, (BART,), SIMPLE_BODY

    # -- assertions --
    def assertSigned(self, tagged, address, t0, t1, key_id=3):
        self.assertTrue(tag_matches(tagged, address, t0, t1, key_id=key_id),
                        "%r is not the key %d tag of %s (want %s)"
                        % (tagged, key_id, address, expected_tag(address, t1, key_id=key_id)))

    def assertTempFail(self, reply):
        self.assertTrue(400 <= reply.code < 500, "want a 4xx reply, got %r" % (reply,))

    def mail_log(self, relay, n=1, timeout=5.0):
        return self.logs_of(relay, "mail", n, timeout)[n - 1]


# =============================================================================================
class SigningTest(OutboundTestCase):
    def test_swaks_message_is_signed(self):
        if not os.access(SWAKS, os.X_OK):
            self.skipTest("swaks not installed")
        up = self.upstream()
        r = self.relay(up.port)
        t0 = time.time()
        p = subprocess.run([SWAKS, "--server", HOST, "--port", str(r.port()), "--helo", "client.test",
                            "--from", HOMER, "--to", BART, "--body", "batv e2e body via swaks",
                            "--timeout", "20"], capture_output=True, timeout=60)
        t1 = time.time()
        self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace")[-3000:])
        tx = up.wait_transactions(1)[0]
        self.assertTrue(tx.accepted, tx)
        self.assertSigned(tx.sender, HOMER, t0, t1)
        self.assertEqual(tx.mail, "MAIL FROM:<%s>" % tx.sender)   # no parameter appears
        self.assertEqual(tx.rcpts, ["RCPT TO:<%s>" % BART])
        self.assertIn(b"batv e2e body via swaks", bytes(tx.data))
        self.assertEqual(self.keys.verify(tx.sender), (0, "valid"))
        rec = self.mail_log(r)
        self.assertEqual((rec.get("signing"), rec.get("key")), ("signed", "3"), rec["_raw"])
        self.assertEqual(rec.get("from"), "<%s>" % HOMER)
        self.assertEqual(rec.get("upstream_from"), "<%s>" % tx.sender)

    def test_esmtp_parameters_forwarded_unchanged(self):
        up = self.upstream()
        r = self.relay(up.port)
        s = self.smtp(r)
        s.ehlo()
        for ext in ("size", "8bitmime", "smtputf8", "dsn", "pipelining", "chunking",
                    "enhancedstatuscodes"):
            self.assertTrue(s.has_extn(ext), "relay does not advertise %s: %r"
                            % (ext, s.esmtp_features))
        t0 = time.time()
        self.assertEqual(s.mail(HOMER, ["SIZE=123", "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS",
                                        "ENVID=abc"])[0], 250)
        self.assertEqual(s.rcpt(BART, ["NOTIFY=SUCCESS,FAILURE",
                                       "ORCPT=rfc822;bart@elsewhere.org"])[0], 250)
        self.assertEqual(s.data(b"Subject: params\r\n\r\nparams\r\n")[0], 250)
        t1 = time.time()
        s.quit()
        tx = up.wait_transactions(1)[0]
        self.assertSigned(tx.sender, HOMER, t0, t1)
        self.assertEqual(tx.mail, "MAIL FROM:<%s> SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=abc"
                         % tx.sender)
        self.assertEqual(tx.rcpts, ["RCPT TO:<bart@elsewhere.org> NOTIFY=SUCCESS,FAILURE "
                                    "ORCPT=rfc822;bart@elsewhere.org"])

    def test_ehlo_offers_only_common_extensions(self):
        up = self.upstream(caps=["PIPELINING", "8BITMIME", "DSN", "STARTTLS", "AUTH PLAIN LOGIN",
                                 "XCLIENT NAME ADDR", "ETRN", "BINARYMIME"])
        r = self.relay(up.port, limits={"message_size": 1000000})
        c = self.session(r)
        lines = c.ehlo_reply.text.split("\n")
        self.assertEqual(lines[0].split()[0], "relay.test")
        self.assertEqual(sorted(lines[1:]), sorted(["PIPELINING", "SIZE 1000000", "8BITMIME", "DSN"]))
        # SMTPUTF8 was not advertised: its parameter is refused; so is BDAT without CHUNKING,
        # whose announced bytes are skipped (the next command still works).
        self.assertCode(c.cmd("MAIL FROM:<%s> SMTPUTF8" % HOMER), 555, "5.5.4")
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        c.send(b"BDAT 12 LAST\r\nFROB\r\nFROB\r\n")     # 12 octets of chunk, not commands
        self.assertCode(c.read_reply(), 502, "5.5.1")
        self.assertCode(c.cmd("NOOP"), 250)
        self.assertEqual(up.accepted(), [])

    def test_ehlo_size_is_min_of_limit_and_upstream(self):
        up = self.upstream(caps=["PIPELINING", "SIZE 100000"])
        r = self.relay(up.port, limits={"message_size": 200000})
        c = self.session(r)
        self.assertIn("SIZE 100000", c.ehlo_reply.text.split("\n"))
        up2 = self.upstream(caps=["PIPELINING", "SIZE 0"])
        r2 = self.relay(up2.port, config_name="relay2.toml", limits={"message_size": 200000})
        c2 = self.session(r2)
        self.assertIn("SIZE 200000", c2.ehlo_reply.text.split("\n"))

    def test_several_transactions_in_one_session(self):
        up = self.upstream()
        r = self.relay(up.port)
        s = self.smtp(r)
        msgs = [(HOMER, ["bart@elsewhere.org"], b"Subject: one\r\n\r\nfirst\r\n"),
                ("lisa@other.org", ["milhouse@elsewhere.org", "nelson@elsewhere.org"],
                 b"Subject: two\r\n\r\nsecond\r\n"),
                ("marge@Example.COM", ["patty@elsewhere.org"], b"Subject: three\r\n\r\nthird\r\n")]
        t0 = time.time()
        for sender, rcpts, body in msgs:
            self.assertEqual(s.sendmail(sender, rcpts, body), {})
        t1 = time.time()
        s.quit()
        txs = up.wait_transactions(3)
        self.assertEqual(len(up.connections()), 1, "one next-hop connection per client session")
        self.assertEqual(len(txs), 3, txs)
        self.assertSigned(txs[0].sender, HOMER, t0, t1)
        self.assertEqual(txs[1].sender, "lisa@other.org")
        # The domain is lowercased when signing; the local part is kept.
        self.assertSigned(txs[2].sender, "marge@example.com", t0, t1)
        self.assertTrue(txs[2].sender.endswith("=marge@example.com"), txs[2].sender)
        for tx, (_, rcpts, body) in zip(txs, msgs):
            self.assertEqual([x.split(">")[0] for x in tx.rcpts], ["RCPT TO:<%s" % a for a in rcpts])
            self.assertEqual(bytes(tx.data), body)

    def test_rset_mid_transaction(self):
        up = self.upstream()
        r = self.relay(up.port)
        s = self.smtp(r)
        s.ehlo()
        self.assertEqual(s.mail(HOMER)[0], 250)
        self.assertEqual(s.rcpt("first@elsewhere.org")[0], 250)
        self.assertEqual(s.rset()[0], 250)
        t0 = time.time()
        self.assertEqual(s.sendmail(HOMER, ["second@elsewhere.org"], SIMPLE_BODY), {})
        t1 = time.time()
        s.quit()
        up.wait_transactions(1)
        conn = up.connections()[0]
        verbs = [c.line.split(" ")[0].upper() for c in conn.commands]
        self.assertIn("RSET", verbs)
        self.assertLess(verbs.index("RSET"), verbs.index("DATA"))
        first, second = conn.transactions
        self.assertTrue(first.reset and not first.completed, first)
        self.assertEqual(first.rcpts, ["RCPT TO:<first@elsewhere.org>"])
        self.assertTrue(second.accepted, second)
        self.assertEqual([x.split(">")[0] for x in second.rcpts], ["RCPT TO:<second@elsewhere.org"])
        self.assertSigned(second.sender, HOMER, t0, t1)

    # -- not signed --
    def _not_signed(self, relay, up, sender, reason, rcpt=BART, params=""):
        """One message from `sender`; the next hop must get MAIL FROM unchanged and the log
        must say why."""
        before = len(up.accepted())
        n_mail = len(relay.logs("mail")) + 1
        c = self.session(relay)
        final = self.transaction(c, sender=sender, rcpts=[rcpt], mail_params=params)
        self.assertCode(final, 250)
        txs = up.wait_transactions(before + 1)
        self.assertEqual(txs[before].mail, "MAIL FROM:<%s>%s" % (sender, params))
        rec = self.mail_log(relay, n_mail)
        self.assertEqual((rec.get("signing"), rec.get("reason")), ("not_signed", reason), rec["_raw"])
        self.assertEqual(rec.get("upstream_from"), rec.get("from"), rec["_raw"])
        c.cmd("QUIT")

    def test_foreign_sender_not_signed(self):
        up = self.upstream()
        r = self.relay(up.port)
        self._not_signed(r, up, "lisa@other.org", "not_our_domain")
        # A subdomain of ours is not ours either.
        self._not_signed(r, up, "lisa@mail.example.com", "not_our_domain")

    def test_null_sender_not_signed(self):
        up = self.upstream()
        r = self.relay(up.port)
        self._not_signed(r, up, "", "null_sender")

    def test_already_tagged_sender_not_signed(self):
        up = self.upstream()
        r = self.relay(up.port)
        self._not_signed(r, up, "prvs=368291fcbb=homer@example.com", "already_tagged")
        self._not_signed(r, up, "SRS0=HHH=TT=other.org=lisa@example.com", "already_tagged")

    def test_quoted_local_part_not_signed(self):
        up = self.upstream()
        r = self.relay(up.port)
        self._not_signed(r, up, '"homer simpson"@example.com', "quoted_local_part")

    def test_local_part_length_limit(self):
        up = self.upstream()
        r = self.relay(up.port)
        self._not_signed(r, up, "a" * 49 + "@example.com", "too_long")
        # 48 octets still fit (prvs=KDDDSSSSSS= is 16 octets; 16 + 48 = 64).
        t0 = time.time()
        self.assertCode(self.deliver(r, sender="b" * 48 + "@example.com"), 250)
        tx = up.wait_transactions(2)[1]
        self.assertSigned(tx.sender, "b" * 48 + "@example.com", t0, time.time())

    def test_utf8_sender_signed_over_raw_bytes(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<h\u00f6mer@example.com>"), 553, "5.6.7")
        t0 = time.time()
        final = self.transaction(c, sender="h\u00f6mer@example.com", mail_params=" SMTPUTF8")
        self.assertCode(final, 250)
        tx = up.wait_transactions(1)[0]
        self.assertSigned(tx.sender, "h\u00f6mer@example.com", t0, time.time())
        self.assertEqual(tx.params, " SMTPUTF8")

    def test_exempt_senders(self):
        up = self.upstream()
        r = self.relay(up.port, sign_domains=["example.com", "example.net"],
                       signing={"exempt_senders": ["marge@example.com", "@example.net"]})
        self._not_signed(r, up, "marge@example.com", "exempt_sender")
        self._not_signed(r, up, "anyone@example.net", "exempt_sender")
        # Local parts are compared exactly: Marge is not marge. Homer is signed as usual.
        t0 = time.time()
        self.assertCode(self.deliver(r, sender="Marge@example.com"), 250)
        self.assertCode(self.deliver(r, sender=HOMER), 250)
        txs = up.wait_transactions(4)
        self.assertSigned(txs[2].sender, "Marge@example.com", t0, time.time())
        self.assertSigned(txs[3].sender, HOMER, t0, time.time())

    def test_exempt_destinations(self):
        up = self.upstream()
        r = self.relay(up.port, signing={"exempt_destinations": ["list@lists.example.org",
                                                                  "@announce.example.net"]})
        self._not_signed(r, up, HOMER, "exempt_destination", rcpt="list@lists.example.org")
        self._not_signed(r, up, HOMER, "exempt_destination", rcpt="news@announce.example.net")
        t0 = time.time()
        self.assertCode(self.deliver(r, rcpts=["other@lists.example.org"]), 250)
        self.assertSigned(up.wait_transactions(3)[2].sender, HOMER, t0, time.time())

    def test_mixed_exempt_and_normal_recipients_are_split(self):
        up = self.upstream()
        r = self.relay(up.port, signing={"exempt_destinations": ["list@lists.example.org",
                                                                  "@announce.example.net"]})
        # First recipient exempt: the message is not signed; a normal recipient must wait.
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<list@lists.example.org>"), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 452, "4.5.3")
        self.assertCode(c.cmd("RCPT TO:<news@announce.example.net>"), 250)
        self.assertCode(c.cmd("DATA"), 354)
        self.assertCode(c.cmd(SIMPLE_BODY + b"."), 250)
        # First recipient normal: signed; the exempt one must wait; then it goes alone.
        t0 = time.time()
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertCode(c.cmd("RCPT TO:<list@lists.example.org>"), 452, "4.5.3")
        self.assertCode(c.cmd("DATA"), 354)
        self.assertCode(c.cmd(SIMPLE_BODY + b"."), 250)
        self.assertCode(self.transaction(c, rcpts=["list@lists.example.org"]), 250)
        txs = up.wait_transactions(3)
        self.assertEqual(txs[0].sender, HOMER)
        self.assertEqual(txs[0].rcpts, ["RCPT TO:<list@lists.example.org>",
                                        "RCPT TO:<news@announce.example.net>"])
        self.assertSigned(txs[1].sender, HOMER, t0, time.time())
        self.assertEqual(txs[1].rcpts, ["RCPT TO:<%s>" % BART])
        self.assertEqual(txs[2].sender, HOMER)
        self.assertEqual(txs[2].rcpts, ["RCPT TO:<list@lists.example.org>"])
        sent = [x.line for conn in up.connections() for x in conn.commands]
        self.assertEqual(sum(1 for x in sent if BART in x), 1, sent)


# =============================================================================================
def big_block(size=MiB):
    """`size` bytes of 78-octet CRLF lines, none starting with a dot."""
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrstuvw\r\n"
    n, rest = divmod(size, len(line))
    return line * n + b"x" * (rest - 2) + b"\r\n" if rest >= 2 else line * n


class ByteExactTest(OutboundTestCase):
    def _exact(self, wire, mail_params=""):
        up = self.upstream()
        r = self.relay(up.port)
        final = self.deliver(r, wire=wire, mail_params=mail_params)
        self.assertCode(final, 250)
        tx = up.wait_transactions(1)[0]
        self.assertEqual(bytes(tx.data), wire)
        self.assertEqual(final, (int(tx.final_reply[:3]), tx.final_reply[4:]),
                         "the final reply is the next hop's")
        return up, r

    def test_dot_stuffed_lines_arrive_stuffed(self):
        wire = dot_stuff([b"Subject: dots", b"", b".", b"..", b".leading", b"...", b"middle . dot",
                          b".x.", b"end"])
        self.assertIn(b"\r\n..\r\n", wire)
        self._exact(wire)

    def test_8bit_bytes(self):
        raw = bytes(b for b in range(1, 256) if b not in (10, 13))
        lines = [b"Subject: 8bit", b"Content-Type: text/plain; charset=utf-8", b""]
        lines += [raw[i:i + 60] for i in range(0, len(raw), 60)]
        lines += ["Gr\u00fc\u00dfe, \u65e5\u672c".encode("utf-8")]
        self._exact(dot_stuff(lines), mail_params=" BODY=8BITMIME")

    def test_5000_octet_line(self):
        self._exact(b"Subject: long\r\n\r\n" + b"y" * 4998 + b"\r\n" + b"short\r\n")

    def test_empty_body(self):
        up, _ = self._exact(b"")
        self.assertEqual(up.accepted()[0].size, 0)

    def _rss_growth_check(self, r, before, peak):
        growth = peak - before
        self.assertLess(growth, 20 * 1024, "relay RSS grew by %d KiB (from %d KiB) while relaying"
                        % (growth, before))

    def test_50mib_data_streamed_with_constant_memory(self):
        caps = [c if not c.startswith("SIZE") else "SIZE 104857600" for c in DEFAULT_CAPS]
        up = self.upstream(caps=caps, store_limit=4096, raw_limit=4096)
        r = self.relay(up.port)
        self.assertCode(self.deliver(r), 250)      # warm up: threads, buffers, keyring
        before = r.rss_kib()
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertCode(c.cmd("DATA"), 354)
        block = big_block()
        h = hashlib.sha256()
        peak = before
        for i in range(50):
            c.send(block)
            h.update(block)
            if i % 2 == 0:
                peak = max(peak, r.rss_kib())
        c.send(b".\r\n")
        final = c.read_reply(timeout=60)
        peak = max(peak, r.rss_kib())
        self.assertCode(final, 250)
        tx = up.wait_transactions(2)[1]
        self.assertEqual(tx.size, 50 * MiB)
        self.assertEqual(tx.sha256, h.hexdigest())
        self._rss_growth_check(r, before, peak)

    def test_bdat_chunks_byte_exact(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        self.assertIn("CHUNKING", c.ehlo_reply.text.split("\n"))
        chunks = [b"Subject: bdat\r\n\r\n.\r\n..\r\n.leading\r\n",        # no stuffing in BDAT
                  bytes(b for b in range(1, 256) if b not in (10, 13)) + b"\r\n",
                  b"z" * 4998 + b"\r\n",
                  b"end\r\n"]
        self.assertCode(c.cmd("MAIL FROM:<%s> BODY=8BITMIME" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(b"BDAT %d%s\r\n" % (len(chunk), last.encode()) + chunk)
            self.assertCode(c.read_reply(), 250)
        # A second transaction ending with an empty LAST chunk (RFC 3030 allows BDAT 0 LAST).
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        c.send(b"BDAT 7\r\nabc\r\n\r\n")
        self.assertCode(c.read_reply(), 250)
        self.assertCode(c.cmd("BDAT 0 LAST"), 250)
        txs = up.wait_transactions(2)
        self.assertEqual(bytes(txs[0].bdat), b"".join(chunks))
        self.assertFalse(txs[0].data_command)
        self.assertEqual(bytes(txs[1].bdat), b"abc\r\n\r\n")
        self.assertNotIn("DATA", [x.line.upper() for x in up.connections()[0].commands])

    def test_bdat_50mib_streamed_with_constant_memory(self):
        caps = [c if not c.startswith("SIZE") else "SIZE 104857600" for c in DEFAULT_CAPS]
        up = self.upstream(caps=caps, store_limit=4096, raw_limit=4096)
        r = self.relay(up.port)
        self.assertCode(self.deliver(r), 250)
        before = r.rss_kib()
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        block = big_block()
        h = hashlib.sha256()
        peak = before
        # Two 25 MiB chunks: a relay that buffers a whole chunk grows by more than 20 MiB.
        for last in (b"", b" LAST"):
            c.send(b"BDAT %d%s\r\n" % (25 * MiB, last))
            for i in range(25):
                c.send(block)
                h.update(block)
                if i % 2 == 0:
                    peak = max(peak, r.rss_kib())
            self.assertCode(c.read_reply(timeout=60), 250)
        peak = max(peak, r.rss_kib())
        tx = up.wait_transactions(2)[1]
        self.assertEqual(tx.size, 50 * MiB)
        self.assertEqual(tx.sha256, h.hexdigest())
        self._rss_growth_check(r, before, peak)


# =============================================================================================
class PipeliningTest(OutboundTestCase):
    def test_pipelined_batch_gets_replies_in_order(self):
        # The next hop answers MAIL only after 0.3 s, so a relay that pipelines MAIL+RCPT has
        # sent the RCPT before that answer.
        up = self.upstream(delays={"MAIL": 0.3},
                           replies={"RCPT:1": "250 2.1.5 first ok", "RCPT:2": "250 2.1.5 second ok"})
        r = self.relay(up.port)
        c = self.session(r)
        self.assertIn("PIPELINING", c.ehlo_reply.text.split("\n"))
        c.send(b"MAIL FROM:<homer@example.com>\r\nRCPT TO:<a@elsewhere.org>\r\n"
               b"RCPT TO:<b@elsewhere.org>\r\nDATA\r\n")
        replies = c.read_replies(4)
        self.assertEqual([x.code for x in replies], [250, 250, 250, 354], replies)
        self.assertTrue(replies[0].text.startswith("2.1.0"), replies)
        self.assertEqual(replies[1].text, "2.1.5 first ok")
        self.assertEqual(replies[2].text, "2.1.5 second ok")
        c.send(SIMPLE_BODY + b".\r\nQUIT\r\n")
        self.assertCode(c.read_reply(), 250)
        self.assertCode(c.read_reply(), 221)
        up.wait_transactions(1)
        conn = up.connections()[0]
        mail, rcpt1 = conn.find("MAIL")[0], conn.find("RCPT")[0]
        self.assertLess(rcpt1.t_recv, mail.t_reply, "RCPT was not pipelined with MAIL")
        self.assertEqual(up.accepted()[0].rcpts, ["RCPT TO:<a@elsewhere.org>",
                                                  "RCPT TO:<b@elsewhere.org>"])


# =============================================================================================
class PostfixToolsTest(OutboundTestCase):
    def test_smtp_source_to_smtp_sink(self):
        for tool in (SMTP_SINK, SMTP_SOURCE):
            if not os.access(tool, os.X_OK):
                self.skipTest("%s not installed" % tool)
        sink = SmtpSink(self.dir)
        self.addCleanup(sink.close)
        r = self.relay(sink.port)
        t0 = time.time()
        p = subprocess.run([SMTP_SOURCE, "-c", "-m", "20", "-s", "4", "-f", HOMER, "-t", BART,
                            "%s:%d" % (HOST, r.port())], capture_output=True, timeout=60)
        t1 = time.time()
        self.assertEqual(p.returncode, 0, p.stderr)
        msgs = sink.wait_messages(20, 15)
        self.assertEqual(len(msgs), 20)
        for m in msgs:
            self.assertSigned(m.sender, HOMER, t0, t1)
            self.assertEqual(m.recipients, [BART])
            self.assertEqual(m.proto, "ESMTP")
            self.assertEqual(m.helo, "relay.test")
            self.assertIn(b"La de da de da 1.", m.message)
        ends = r.wait_logs(lambda x: x.get("event") == "session_end", 20, 10)
        self.assertEqual(len(ends), 20)
        self.assertTrue(all(e.get("reason") == "quit" for e in ends), [e["_raw"] for e in ends])


# =============================================================================================
class UpstreamFaultTest(OutboundTestCase):
    def _greeting_fails(self, timeouts=FAST, **faults):
        """The relay's next hop misbehaves before our greeting: the client gets 421 4.4.1."""
        up = self.upstream(**faults)
        r = self.relay(up.port, timeouts=timeouts)
        c = self.client(r)
        t = time.monotonic()
        g = c.read_reply(timeout=15)
        elapsed = time.monotonic() - t
        self.assertCode(g, 421, "4.4.1")
        self.assertTrue(c.wait_closed(5), "relay kept the connection open after 421")
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertIsNotNone(end)
        self.assertEqual(end.get("reason"), "upstream_unavailable", end["_raw"])
        self.assertEqual(g.text, "4.4.1 relay.test next hop unavailable, try again later")
        return up, r, elapsed

    def test_upstream_refused(self):
        r = self.relay(closed_port(), timeouts=FAST)
        c = self.client(r)
        self.assertCode(c.read_reply(timeout=15), 421, "4.4.1")
        self.assertTrue(c.wait_closed(5))
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual(end and end.get("reason"), "upstream_unavailable")

    def test_upstream_closes_at_greeting(self):
        self._greeting_fails(close_at="greeting")

    def test_upstream_closes_at_ehlo(self):
        self._greeting_fails(close_at="EHLO")

    def test_upstream_garbage_greeting(self):
        self._greeting_fails(garbage_at="greeting")

    def test_upstream_rejects_greeting(self):
        self._greeting_fails(replies={"greeting": "554 5.3.2 go away"})

    def test_upstream_stalls_at_ehlo(self):
        _, _, elapsed = self._greeting_fails(stall_at="EHLO")
        self.assertLess(elapsed, FAST["upstream_reply"] + 4)

    def test_upstream_rejects_ehlo_and_helo(self):
        self._greeting_fails(replies={"EHLO": "502 5.5.2 no ehlo", "HELO": "554 5.5.2 no helo"})

    def test_upstream_endless_ehlo_reply(self):
        _, r, elapsed = self._greeting_fails(endless_multiline_at="EHLO")
        self.assertLess(elapsed, 10)
        self.assertTrue(r.running())

    def test_upstream_ehlo_rejected_falls_back_to_helo(self):
        up = self.upstream(replies={"EHLO": "502 5.5.2 what is EHLO"})
        r = self.relay(up.port, timeouts=FAST, limits={"message_size": 100000})
        c = self.session(r)
        # Nothing in common with a HELO-only next hop, but SIZE is always advertised.
        self.assertEqual(c.ehlo_reply.text.split("\n")[1:], ["SIZE 100000"])
        self.assertEqual(up.connections()[0].ehlo, "HELO relay.test")
        self.assertCode(self.transaction(c), 250)
        self.assertTrue(up.wait_transactions(1)[0].accepted)

    def test_upstream_closes_after_mail(self):
        up = self.upstream(close_at="MAIL")
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertTempFail(c.cmd("RCPT TO:<%s>" % BART))
        try:
            d = c.cmd("DATA")
        except (EOFError, ConnectionError):
            d = None
        self.assertFalse(d is not None and d.code in (250, 354), "DATA after a lost next hop: %r" % (d,))
        self.assertEqual(up.accepted(), [])

    def test_upstream_closes_mid_data(self):
        up = self.upstream(close_at="mid-DATA:1000")
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertCode(c.cmd("DATA"), 354)
        try:
            c.send(b"Subject: mid\r\n\r\n" + big_block(200000) + b".\r\n")
        except OSError:
            pass
        try:
            final = c.read_reply(timeout=15)
        except EOFError:
            self.fail("the relay closed the connection without a reply to the final dot")
        self.assertTempFail(final)
        self.assertEqual(up.accepted(), [])

    def test_upstream_stalls_at_dot(self):
        up = self.upstream(stall_at="DOT")
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        t = time.monotonic()
        final = self.transaction(c, timeout=15)
        elapsed = time.monotonic() - t
        self.assertTempFail(final)
        self.assertNotEqual(final.code, 250)
        self.assertGreater(elapsed, FAST["upstream_data_reply"] - 0.5)
        self.assertLess(elapsed, FAST["upstream_data_reply"] + 5)
        self.assertTrue(up.transactions()[0].completed)

    def _mail_rejected(self, reply):
        up = self.upstream(replies={"MAIL": reply})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        code, text = int(reply[:3]), reply[4:]
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)       # answered locally
        self.assertEqual(c.cmd("RCPT TO:<a@elsewhere.org>"), (code, text))
        self.assertEqual(c.cmd("RCPT TO:<b@elsewhere.org>"), (code, text))
        self.assertCode(c.cmd("DATA"), 554, "5.5.1")
        self.assertCode(c.cmd("RSET"), 250)
        self.assertEqual(up.accepted(), [])

    def test_upstream_rejects_mail_5xx(self):
        self._mail_rejected("550 5.1.8 sender rejected")

    def test_upstream_rejects_mail_4xx(self):
        self._mail_rejected("451 4.3.0 try again later")

    def test_upstream_rcpt_replies_passed_through(self):
        up = self.upstream(replies={"RCPT:2": "450 4.2.0 try later",
                                    "RCPT:3": "550 5.1.1 no such user"})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<a@elsewhere.org>"), 250)
        self.assertEqual(c.cmd("RCPT TO:<b@elsewhere.org>"), (450, "4.2.0 try later"))
        self.assertEqual(c.cmd("RCPT TO:<c@elsewhere.org>"), (550, "5.1.1 no such user"))
        self.assertCode(c.cmd("DATA"), 354)
        self.assertCode(c.cmd(SIMPLE_BODY + b"."), 250)
        tx = up.wait_transactions(1)[0]
        self.assertEqual(len(tx.rcpts), 3)
        msg = r.wait_log(lambda x: x.get("event") == "message", 5)
        self.assertEqual(msg and msg.get("result"), "accepted")

    def _data_rejected(self, reply):
        up = self.upstream(replies={"DATA": reply})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertEqual(c.cmd("DATA"), (int(reply[:3]), reply[4:]))
        self.assertCode(c.cmd("RSET"), 250)
        self.assertEqual(up.accepted(), [])
        # The session goes on: once the next hop takes DATA again, a message gets through.
        up.clear_faults()
        self.assertCode(self.transaction(c), 250)
        self.assertEqual(len(up.wait_transactions(1)), 1)

    def test_upstream_rejects_data_5xx(self):
        self._data_rejected("554 5.7.0 data not welcome")

    def test_upstream_rejects_data_4xx(self):
        self._data_rejected("451 4.3.0 data later")

    def _dot_rejected(self, reply):
        up = self.upstream(replies={"DOT": reply})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertEqual(self.transaction(c), (int(reply[:3]), reply[4:]))
        msg = r.wait_log(lambda x: x.get("event") == "message", 5)
        self.assertIsNotNone(msg)
        self.assertEqual(msg.get("result"), "rejected", msg["_raw"])
        self.assertEqual(msg.get("reply"), reply, msg["_raw"])
        self.assertCode(c.cmd("NOOP"), 250)

    def test_upstream_rejects_dot_4xx(self):
        self._dot_rejected("452 4.3.1 full")

    def test_upstream_rejects_dot_5xx(self):
        self._dot_rejected("554 5.6.0 content rejected")

    def test_upstream_garbage_reply_to_mail(self):
        up = self.upstream(garbage_at="MAIL")
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        t = time.monotonic()
        self.assertTempFail(c.cmd("RCPT TO:<%s>" % BART))
        self.assertLess(time.monotonic() - t, FAST["upstream_reply"],
                        "a garbage reply must fail at once, not after the reply timeout")
        self.assertEqual(up.accepted(), [])

    def test_upstream_garbage_reply_to_dot(self):
        up = self.upstream(garbage_at="DOT")
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        final = self.transaction(c)
        self.assertTempFail(final)
        self.assertNotEqual(final.code, 250)

    def test_upstream_reply_line_too_long(self):
        up = self.upstream(replies={"RCPT": "250 2.1.5 " + "x" * 5000})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        reply = c.cmd("RCPT TO:<%s>" % BART)
        self.assertTempFail(reply)
        self.assertLess(len(reply.text), 1000)
        self.assertTrue(r.running())

    def test_upstream_reply_text_is_sanitised(self):
        up = self.upstream(replies={"RCPT": "550 5.1.1 bad\x1b[31m user\x07 \xff\xfe here"})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        reply = c.cmd("RCPT TO:<%s>" % BART)
        self.assertCode(reply, 550, "5.1.1")
        self.assertFalse(any(ord(ch) < 32 or ch == "\x7f" for ch in reply.text), repr(reply.text))
        self.assertIn("here", reply.text)

    def test_upstream_endless_multiline_reply(self):
        up = self.upstream(endless_multiline_at="RCPT", fault_conns={0})
        r = self.relay(up.port, timeouts=FAST)
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        t = time.monotonic()
        self.assertTempFail(c.cmd("RCPT TO:<%s>" % BART, timeout=15))
        self.assertLess(time.monotonic() - t, 10)
        self.assertTrue(r.running())
        # The relay is fine: a new session (second next-hop connection, no fault) works.
        self.assertCode(self.deliver(r), 250)
        self.assertEqual(len(up.wait_transactions(1)), 1)


# =============================================================================================
class ClientInputTest(OutboundTestCase):
    def test_basic_commands(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r, ehlo=False)
        self.assertCode(c.cmd("NOOP"), 250, "2.0.0")
        self.assertCode(c.cmd("RSET"), 250, "2.0.0")
        self.assertCode(c.cmd("VRFY homer"), 252, "2.5.0")
        self.assertCode(c.cmd("HELP"), 214, "2.0.0")
        self.assertCode(c.cmd("EHLO client.test"), 250)
        self.assertCode(c.cmd("HELO client.test"), 250)
        self.assertCode(c.cmd("STARTTLS"), 502, "5.5.1")
        self.assertCode(c.cmd("AUTH PLAIN AGhvbWVyAHNlY3JldA=="), 502, "5.5.1")
        self.assertCode(c.cmd("MAIL FROM:<%s> FOO=bar" % HOMER), 555, "5.5.4")
        self.assertEqual(c.cmd("QUIT"), (221, "2.0.0 Bye"))
        self.assertTrue(c.wait_closed(5))
        conn = up.wait_connections(1)[0]
        self.assertTrue(conn.closed.wait(5), "next-hop connection still open after QUIT")
        self.assertIn("QUIT", [x.line.upper() for x in conn.commands])

    def test_vrfy_502_when_configured(self):
        up = self.upstream()
        r = self.relay(up.port, smtp={"vrfy": "502"})
        c = self.session(r)
        self.assertCode(c.cmd("VRFY homer"), 502, "5.5.1")
        self.assertCode(c.cmd("EXPN staff"), 502, "5.5.1")

    def test_overlong_command_line(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"line_length": 1000})
        c = self.session(r)
        # 1000 octets with CRLF: allowed; 1001: too long, skipped to the LF, session goes on.
        self.assertCode(c.cmd("VRFY " + "x" * 993), 252)
        self.assertCode(c.cmd("VRFY " + "x" * 994), 500, "5.5.2")
        self.assertCode(c.cmd("NOOP " + "y" * 5000), 500, "5.5.2")
        self.assertCode(c.cmd("NOOP"), 250)
        self.assertCode(self.transaction(c), 250)

    def test_nul_in_command(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        self.assertCode(c.cmd(b"NOOP\x00junk"), 500, "5.5.2")
        self.assertCode(c.cmd(b"MAIL FROM:<homer@exa\x00mple.com>"), 500, "5.5.2")
        self.assertCode(c.cmd("NOOP"), 250)
        self.assertEqual([t.mail for t in up.transactions()], [])

    def test_unknown_command(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        self.assertEqual(c.cmd("FROBNICATE now"), (500, "5.5.1 Command unrecognized"))
        self.assertCode(c.cmd("NOOP"), 250)

    def test_rcpt_before_mail(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 503)
        self.assertCode(c.cmd("NOOP"), 250)

    def test_commands_before_ehlo(self):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r, ehlo=False)
        for cmd in ("MAIL FROM:<%s>" % HOMER, "RCPT TO:<%s>" % BART, "DATA", "BDAT 0 LAST"):
            self.assertEqual(c.cmd(cmd), (503, "5.5.1 Send HELO/EHLO first"), cmd)
        self.assertCode(c.cmd("NOOP"), 250)
        self.assertEqual(up.transactions(), [])

    def test_junk_command_loops_are_bounded_until_a_message_is_delivered(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"commands_before_mail": 10})
        # A MAIL/RSET loop: RSET counts even inside a transaction.
        c = self.session(r)  # EHLO: 1
        for _ in range(9):
            self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
            self.assertCode(c.cmd("RSET"), 250)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RSET"), 250)                    # the 11th junk command is answered,
        self.assertCode(c.read_reply(), 421, "4.7.0")          # then the session ends
        self.assertTrue(c.wait_closed(5))
        # A delivered message starts the count again.
        c = self.session(r)
        for _ in range(8):
            self.assertCode(c.cmd("NOOP"), 250)
        self.assertCode(self.transaction(c), 250)
        for _ in range(11):
            self.assertCode(c.cmd("NOOP"), 250)
        self.assertCode(c.read_reply(), 421, "4.7.0")
        ends = r.wait_logs(lambda x: x.get("event") == "session_end", 2, 5)
        self.assertEqual([e.get("reason") for e in ends], ["too_many_commands"] * 2)

    def test_data_without_recipients(self):
        up = self.upstream(replies={"RCPT": "550 5.1.1 unknown user"})
        r = self.relay(up.port)
        c = self.session(r)
        self.assertCode(c.cmd("DATA"), 503, "5.5.1")                   # no MAIL
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("DATA"), 503, "5.5.1")                   # no RCPT tried
        self.assertCode(c.cmd("RCPT TO:<nobody@elsewhere.org>"), 550)
        self.assertCode(c.cmd("DATA"), 554, "5.5.1")                   # none accepted
        self.assertCode(c.cmd("NOOP"), 250)
        self.assertFalse(any(x.line.upper() == "DATA" for conn in up.connections()
                             for x in conn.commands))

    def test_too_many_recipients(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"recipients_per_message": 100})
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        c.send(b"".join(b"RCPT TO:<r%d@elsewhere.org>\r\n" % i for i in range(101)))
        replies = c.read_replies(101, timeout=20)
        self.assertEqual([x.code for x in replies[:100]], [250] * 100)
        self.assertCode(replies[100], 452, "4.5.3")
        self.assertCode(c.cmd("DATA"), 354)
        self.assertCode(c.cmd(SIMPLE_BODY + b"."), 250)
        tx = up.wait_transactions(1)[0]
        self.assertEqual(len(tx.rcpts), 100)
        self.assertNotIn("RCPT TO:<r100@elsewhere.org>", tx.rcpts)

    def test_size_parameter_too_big(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"message_size": 65536})
        c = self.session(r)
        self.assertIn("SIZE 65536", c.ehlo_reply.text.split("\n"))
        self.assertEqual(c.cmd("MAIL FROM:<%s> SIZE=65537" % HOMER),
                         (552, "5.3.4 Message size exceeds fixed limit"))
        self.assertCode(c.cmd("MAIL FROM:<%s> SIZE=65536" % HOMER), 250)

    def test_oversize_body(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"message_size": 65536})
        c = self.session(r)
        final = self.transaction(c, wire=b"Subject: big\r\n\r\n" + big_block(100000))
        self.assertEqual(final, (552, "5.3.4 Message size exceeds fixed limit"))
        self.assertCode(c.cmd("NOOP"), 250)                           # the session continues
        time.sleep(0.3)
        self.assertEqual(up.accepted(), [])

    def _bare(self, wire):
        up = self.upstream()
        r = self.relay(up.port)
        c = self.session(r)
        final = self.transaction(c, wire=wire)
        self.assertCode(final, 554, "5.6.0")
        # The next hop must not get a complete message: the relay drops that connection.
        self.assertTrue(wait_until(lambda: up.connections()[0].closed.is_set(), 5),
                        "the next-hop connection was not dropped")
        self.assertEqual(up.accepted(), [])
        self.assertFalse(any(t.completed for t in up.transactions()))

    def test_bare_lf_in_data(self):
        self._bare(b"Subject: lf\r\n\r\nline one\nline two\r\n")

    def test_bare_cr_in_data(self):
        self._bare(b"Subject: cr\r\n\r\nline one\rline two\r\n")

    def test_too_many_errors(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"errors_per_session": 3})
        c = self.session(r)
        replies = []
        for _ in range(6):
            try:
                replies.append(c.cmd("FROB"))
            except (EOFError, ConnectionError):
                break
            if replies[-1].code == 421:
                break
        self.assertEqual([x.code for x in replies], [500, 500, 500, 421], replies)
        self.assertTrue(c.wait_closed(5))
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual(end and end.get("reason"), "too_many_errors")
        self.assertEqual(replies[-1], (421, "4.7.0 Too many errors, closing"))

    def test_next_hop_refusals_count_as_errors(self):
        """limits.errors_per_session counts every 4xx/5xx the client gets, the next hop's refusals
        relayed to it too: a next hop that refuses every RCPT ends the session at the limit, one
        RCPT at a time or pipelined."""
        up = self.upstream(replies={"RCPT": "550 5.1.1 unknown user"})
        r = self.relay(up.port, limits={"errors_per_session": 3})
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        replies = []
        for i in range(6):
            try:
                replies.append(c.cmd("RCPT TO:<r%d@elsewhere.org>" % i))
            except (EOFError, ConnectionError):
                break
            if replies[-1].code == 421:
                break
        self.assertEqual([x.code for x in replies], [550, 550, 550, 421], replies)
        self.assertEqual(replies[-1], (421, "4.7.0 Too many errors, closing"))
        self.assertTrue(c.wait_closed(5))
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual((end.get("reason"), end.get("errors")), ("too_many_errors", "3"))
        self.assertEqual(sum(1 for conn in up.connections() for x in conn.commands
                             if x.line.upper().startswith("RCPT")), 3)
        # Pipelined: the batch is relayed and answered, then the limit ends the session.
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        c.send(b"".join(b"RCPT TO:<p%d@elsewhere.org>\r\n" % i for i in range(5)))
        replies = []
        while len(replies) < 6 and (not replies or replies[-1].code != 421):
            replies.append(c.read_reply(timeout=10))
        # All five when the batch arrives in one read (the usual case on loopback); the limit
        # applies after each flush, so a batch split by TCP may stop after the third.
        refused = len(replies) - 1
        self.assertIn(refused, (3, 4, 5), replies)
        self.assertEqual([x.code for x in replies], [550] * refused + [421], replies)
        self.assertTrue(c.wait_closed(5))
        ends = r.wait_logs(lambda x: x.get("event") == "session_end", 2, 5)
        self.assertEqual((ends[-1].get("reason"), ends[-1].get("errors")), ("too_many_errors", str(refused)))

    def test_idle_client_times_out(self):
        up = self.upstream()
        r = self.relay(up.port, timeouts={"idle": 2})
        c = self.session(r, ehlo=False)
        t = time.monotonic()
        reply = c.read_reply(timeout=10)
        elapsed = time.monotonic() - t
        self.assertEqual(reply, (421, "4.4.2 relay.test Error: timeout exceeded"))
        self.assertGreater(elapsed, 1.5)
        self.assertLess(elapsed, 6)
        self.assertTrue(c.wait_closed(5))
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual(end and end.get("reason"), "idle_timeout")

    def test_trickled_command_line_hits_command_deadline(self):
        up = self.upstream()
        r = self.relay(up.port, timeouts={"idle": 10, "command": 2})
        c = self.session(r, ehlo=False)
        t = time.monotonic()
        reply = None
        while time.monotonic() - t < 10:
            try:
                c.send(b"N")
            except OSError:
                break
            try:
                reply = c.read_reply(timeout=0.4)
                break
            except socket.timeout:
                continue
            except EOFError:
                break
        self.assertIsNotNone(reply, "no reply while a command line trickled in")
        self.assertCode(reply, 421, "4.4.2")
        self.assertLess(time.monotonic() - t, 7)

    def test_data_phase_deadline(self):
        up = self.upstream()
        r = self.relay(up.port, timeouts={"idle": 10, "data": 2})
        c = self.session(r)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertCode(c.cmd("DATA"), 354)
        t = time.monotonic()
        reply = None
        while time.monotonic() - t < 10:
            try:
                c.send(b"a slow line\r\n")
                reply = c.read_reply(timeout=0.3)
                break
            except socket.timeout:
                continue
            except (EOFError, OSError):
                break
        self.assertIsNotNone(reply, "no reply when the DATA deadline passed")
        self.assertCode(reply, 421, "4.4.2")
        self.assertLess(time.monotonic() - t, 7)
        self.assertEqual(up.accepted(), [])
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual(end and end.get("reason"), "data_timeout")

    def test_client_not_allowed(self):
        up = self.upstream()
        r = self.relay(None, listeners=[{"upstream": up.port, "allow_clients": ["10.0.0.0/8"]}])
        c = self.client(r)
        self.assertCode(c.read_reply(), 554, "5.7.1")
        self.assertTrue(c.wait_closed(5))
        end = r.wait_log(lambda x: x.get("event") == "session_end", 5)
        self.assertEqual(end and end.get("reason"), "access_denied")
        self.assertEqual(up.connections(), [], "no next-hop connection for a refused client")

    def test_sessions_per_client_limit(self):
        up = self.upstream()
        r = self.relay(up.port, limits={"sessions_per_client": 2})
        a = self.session(r, ehlo=False)
        self.session(r, ehlo=False)
        c = self.client(r)
        self.assertCode(c.read_reply(), 421, "4.7.0")
        self.assertTrue(c.wait_closed(5))
        self.assertCode(a.cmd("QUIT"), 221)
        self.assertTrue(a.wait_closed(5))
        self.assertIsNotNone(r.wait_log(lambda x: x.get("event") == "session_end"
                                        and x.get("reason") == "quit", 5))
        self.session(r)                 # a slot is free again


# =============================================================================================
class SessionEndTest(OutboundTestCase):
    def test_exactly_one_session_end_per_session(self):
        up = self.upstream()
        r = self.relay(up.port)
        # a: two messages (one signed, one not), then QUIT.
        a = self.session(r)
        self.assertCode(self.transaction(a), 250)
        self.assertCode(self.transaction(a, sender="lisa@other.org", rcpts=["milhouse@elsewhere.org"]),
                        250)
        self.assertCode(a.cmd("QUIT"), 221)
        # b: hangs up after the greeting.
        b = self.session(r, ehlo=False)
        b_port = b.local_port
        b.close()
        # c: errors, then QUIT.
        c = self.session(r)
        self.assertCode(c.cmd("FROB"), 500)
        self.assertCode(c.cmd("QUIT"), 221)
        ports = {"a": a.local_port, "b": b_port, "c": c.local_port}
        ends = r.wait_logs(lambda x: x.get("event") == "session_end", 3, 10)
        time.sleep(0.5)                       # a duplicate would show up by now
        ends = r.logs("session_end")
        self.assertEqual(len(ends), 3, [e["_raw"] for e in ends])
        by_client = {e.get("client"): e for e in ends}
        for name, port in ports.items():
            self.assertIn("127.0.0.1:%d" % port, by_client, name)
        ea, eb, ec = (by_client["127.0.0.1:%d" % ports[k]] for k in "abc")
        self.assertEqual([ea.get("reason"), eb.get("reason"), ec.get("reason")],
                         ["quit", "client_closed", "quit"])
        for e in (ea, eb, ec):
            for key in ("sid", "phase", "messages", "recipients", "signed", "unsigned"):
                self.assertIn(key, e, e["_raw"])
            self.assertEqual(e.get("role"), "outbound", e["_raw"])
        self.assertEqual([ea[k] for k in ("messages", "recipients", "signed", "unsigned")],
                         ["2", "2", "1", "1"], ea["_raw"])
        self.assertEqual([eb[k] for k in ("messages", "recipients", "signed", "unsigned")],
                         ["0", "0", "0", "0"], eb["_raw"])
        self.assertEqual(len({e["sid"] for e in ends}), 3)
        self.assertEqual({e.get("sid") for e in r.logs("connect")}, {e["sid"] for e in ends})


# =============================================================================================
class UpstreamReuseTest(OutboundTestCase):
    """Idle next-hop connections kept between sessions (timeouts.upstream_idle,
    limits.upstream_idle_connections; one cache per I/O thread, so threads = 1 here)."""

    def test_sessions_share_one_next_hop_connection_then_it_quits(self):
        up = self.upstream()
        r = self.relay(up.port, threads=1, timeouts={"upstream_idle": 1})
        t0 = time.time()
        for _ in range(3):
            self.assertCode(self.deliver(r), 250)
        txs = up.wait_transactions(3)
        self.assertEqual(len(up.connections()), 1, "three sessions, want one next-hop connection")
        for tx in txs:
            self.assertSigned(tx.sender, HOMER, t0, time.time())
        conn = up.connections()[0]
        self.assertEqual([c.line.split()[0].upper() for c in conn.commands].count("EHLO"), 1)
        # Idle for upstream_idle: QUIT, then closed.
        self.assertTrue(conn.closed.wait(5), "idle next-hop connection never closed")
        self.assertEqual(conn.commands[-1].line.upper(), "QUIT")
        # The next session connects afresh.
        self.assertCode(self.deliver(r), 250)
        up.wait_transactions(4)
        self.assertEqual(len(up.connections()), 2)

    def test_next_hop_closing_an_idle_connection_costs_nothing(self):
        up = self.upstream()
        r = self.relay(up.port, threads=1, timeouts={"upstream_idle": 30})
        self.assertCode(self.deliver(r), 250)
        conn = up.wait_connections(1)[0]
        up.wait_transactions(1)
        conn.sock.shutdown(socket.SHUT_RDWR)  # the next hop's own idle timeout, say
        time.sleep(0.2)
        self.assertCode(self.deliver(r), 250)
        up.wait_transactions(2)
        self.assertEqual(len(up.connections()), 2)

    def test_not_reused_when_disabled_or_unclean_or_forwarding_the_client(self):
        # upstream_idle = 0: every session has its own connection and QUITs it.
        up = self.upstream()
        r = self.relay(up.port, threads=1, timeouts={"upstream_idle": 0})
        self.assertCode(self.deliver(r), 250)
        self.assertCode(self.deliver(r), 250)
        up.wait_transactions(2)
        conns = up.wait_connections(2)
        self.assertEqual(len(conns), 2)
        for conn in conns:
            self.assertTrue(conn.closed.wait(5))
            self.assertEqual(conn.commands[-1].line.upper(), "QUIT")
        # A session that QUITs with a transaction open upstream: that connection is not kept.
        up2 = self.upstream()
        r2 = self.relay(up2.port, threads=1, timeouts={"upstream_idle": 30})
        c = self.session(r2)
        self.assertCode(c.cmd("MAIL FROM:<%s>" % HOMER), 250)
        self.assertCode(c.cmd("RCPT TO:<%s>" % BART), 250)
        self.assertCode(c.cmd("QUIT"), 221)
        first = up2.wait_connections(1)[0]
        self.assertTrue(first.closed.wait(5), "a connection with a transaction open was kept")
        self.assertCode(self.deliver(r2), 250)
        self.assertEqual(len(up2.wait_connections(2)), 2)
        # A listener that forwards the client (XCLIENT, PROXY) never shares a connection.
        up3 = self.upstream()
        r3 = self.relay(up3.port, threads=1, timeouts={"upstream_idle": 30},
                        listeners=[{"upstream": up3.port, "forward_client": "xclient"}])
        self.assertCode(self.deliver(r3), 250)
        self.assertCode(self.deliver(r3), 250)
        up3.wait_transactions(2)
        self.assertEqual(len(up3.connections()), 2)


# =============================================================================================
class SignalTest(OutboundTestCase):
    def test_sigterm_while_idle(self):
        up = self.upstream()
        r = self.relay(up.port)
        t = time.monotonic()
        code = r.stop(signal.SIGTERM, timeout=10)
        self.assertEqual(code, 0, r.stderr_text()[-2000:])
        self.assertLess(time.monotonic() - t, 3)
        self.assertTrue(r.logs("shutdown_complete"))

    def test_sigterm_with_open_session(self):
        up = self.upstream()
        r = self.relay(up.port, timeouts={"shutdown_grace": 1})
        c = self.session(r)
        port = c.local_port
        t = time.monotonic()
        r.send_signal(signal.SIGTERM)

        def refused():
            try:
                socket.create_connection((HOST, r.port()), timeout=1).close()
                return False
            except OSError:
                return True
        self.assertTrue(wait_until(refused, 3), "still accepting connections after SIGTERM")
        reply = c.read_reply(timeout=10)
        self.assertCode(reply, 421, "4.3.2")
        self.assertLess(time.monotonic() - t, 5)
        self.assertEqual(r.stop(signal.SIGTERM, timeout=10), 0)
        self.assertTrue(r.logs("shutdown_complete"))
        # (A probe above may have got in before the signal was handled; only c matters here.)
        ends = [e for e in r.logs("session_end") if e.get("client") == "%s:%d" % (HOST, port)]
        self.assertEqual([e.get("reason") for e in ends], ["shutdown"])

    def test_sigterm_while_the_next_hop_decides_relays_its_verdict(self):
        # The message is with the next hop when the grace runs out: the session waits for the
        # verdict and relays it (250: delivered once), then ends with 421. Cancelling that wait
        # would answer 421 for a message the next hop accepted, and the retry would be a duplicate.
        up = self.upstream(delays={"DOT": 3})
        r = self.relay(up.port, timeouts={"shutdown_grace": 1, "upstream_data_reply": 20})
        c = self.session(r)
        for cmd, want in (("MAIL FROM:<%s>" % HOMER, 250), ("RCPT TO:<%s>" % BART, 250), ("DATA", 354)):
            self.assertEqual(c.cmd(cmd).code, want)
        c.send(SIMPLE_BODY + b".\r\n")
        self.assertTrue(wait_until(lambda: up.conns and any(b".\r\n" in x.raw for x in up.conns), 5))
        t = time.monotonic()
        r.send_signal(signal.SIGTERM)
        final = c.read_reply(timeout=15)
        self.assertCode(final, 250)
        self.assertGreater(time.monotonic() - t, 1.5, "the verdict came before the next hop's delay")
        self.assertCode(c.read_reply(timeout=10), 421, "4.3.2")
        self.assertEqual(len(up.wait_transactions(1)), 1)
        self.assertEqual(r.stop(signal.SIGTERM, timeout=15), 0)
        ends = [e.get("reason") for e in r.logs("session_end") if e.get("client") == "%s:%d" % (HOST, c.local_port)]
        self.assertEqual(ends, ["shutdown"])

    def test_sighup_after_rotation_signs_with_new_key(self):
        up = self.upstream()
        r = self.relay(up.port)
        t0 = time.time()
        self.assertCode(self.deliver(r), 250)
        self.assertSigned(up.wait_transactions(1)[0].sender, HOMER, t0, time.time())
        new_id = self.keys.rotate()
        self.assertNotEqual(new_id, 3)
        r.send_signal(signal.SIGHUP)
        rec = r.wait_log(lambda x: x.get("event") == "reload", 5)
        self.assertIsNotNone(rec, "no event=reload after SIGHUP")
        self.assertEqual(rec.get("result"), "ok", rec["_raw"])
        self.assertEqual(rec.get("signing_key"), str(new_id), rec["_raw"])
        self.assertEqual(rec.get("keys"), "2", rec["_raw"])
        self.assertCode(self.deliver(r), 250)
        tagged = up.wait_transactions(2)[1].sender
        self.assertTrue(tagged.startswith("prvs=%d" % new_id), tagged)
        self.assertEqual(self.keys.verify(tagged), (0, "valid"))
        self.assertTrue(r.running())

    def test_sighup_with_broken_key_file_keeps_old_keys(self):
        up = self.upstream()
        r = self.relay(up.port)
        self.keys.break_file()
        r.send_signal(signal.SIGHUP)
        rec = r.wait_log(lambda x: x.get("event") == "reload", 5)
        self.assertIsNotNone(rec, "no event=reload after SIGHUP")
        self.assertEqual(rec.get("result"), "failed", rec["_raw"])
        self.assertTrue(rec.get("error"), rec["_raw"])
        self.assertTrue(r.running())
        t0 = time.time()
        self.assertCode(self.deliver(r), 250)
        self.assertSigned(up.wait_transactions(1)[0].sender, HOMER, t0, time.time())


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
