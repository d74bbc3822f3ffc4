#!/usr/bin/env python3
"""AUTH pass-through (RFC 4954) through the real batv-relay binary.

The next hop is a small scripted SMTP server (AuthUpstream, below) that checks credentials for
PLAIN, LOGIN and a three-step mechanism X-TRIPLE, so the relay's job is visible: offer the next
hop's mechanisms only on an encrypted session (or on loopback when configured), relay every
challenge and response byte for byte, pass the next hop's 235/535 on, never log a credential, and
let authenticated clients relay from outside allow_clients when allow_authenticated is set.

Usage: test_auth.py --relay PATH/batv-relay --keys PATH/batv-keys
"""
import base64
import os
import smtplib
import socket
import ssl
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
import tlsutil  # noqa: E402

RELAY = KEYS = None
USER, PASSWORD = "homer", "d0nut-s3cret"


class AuthUpstream:
    """Next hop advertising AUTH PLAIN LOGIN X-TRIPLE; records every line it receives."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.lines = []
        self.mails = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        conn.settimeout(10)
        f = conn.makefile("rwb")

        def say(text):
            f.write(text.encode() + b"\r\n")
            f.flush()

        def line():
            raw = f.readline(4096)
            if not raw:
                raise EOFError
            text = raw.decode(errors="replace").rstrip("\r\n")
            self.lines.append(text)
            return text

        try:
            say("220 mx.test ESMTP")
            authed = False
            while True:
                cmd = line()
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    say("250-mx.test\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN X-TRIPLE\r\n250 8BITMIME")
                elif verb == "AUTH":
                    parts = cmd.split(" ")
                    mech = parts[1].upper()
                    ok = False
                    if mech == "PLAIN":
                        blob = parts[2] if len(parts) > 2 else None
                        if blob is None:
                            say("334 ")
                            blob = line()
                        ok = base64.b64decode(blob) == ("\0%s\0%s" % (USER, PASSWORD)).encode()
                    elif mech == "LOGIN":
                        if len(parts) > 2:  # initial response: the user name
                            u = base64.b64decode(parts[2])
                        else:
                            say("334 " + base64.b64encode(b"Username:").decode())
                            u = base64.b64decode(line())
                        say("334 " + base64.b64encode(b"Password:").decode())
                        p = base64.b64decode(line())
                        ok = (u, p) == (USER.encode(), PASSWORD.encode())
                    elif mech == "X-TRIPLE":
                        answers = []
                        for step in ("one", "two", "three"):
                            say("334 " + base64.b64encode(step.encode()).decode())
                            answers.append(base64.b64decode(line()).decode())
                        ok = answers == ["1", "2", "3"]
                    if ok:
                        authed = True
                        say("235 2.7.0 Authentication successful")
                    else:
                        say("535 5.7.8 Error: authentication failed")
                elif verb == "MAIL":
                    self.mails.append((cmd, authed))
                    say("250 2.1.0 Ok")
                elif verb == "RCPT":
                    say("250 2.1.5 Ok")
                elif verb == "DATA":
                    say("354 go")
                    while line() != ".":
                        pass
                    say("250 2.0.0 Ok: queued")
                elif verb == "QUIT":
                    say("221 bye")
                    return
                else:
                    say("250 ok")
        except (EOFError, OSError, ValueError):
            pass
        finally:
            conn.close()


class AuthTest(cases.RelayTestCase):
    TMP_PREFIX = "batv-auth-"

    def setUp(self):
        super().setUp()
        self.mx = AuthUpstream()
        self.addCleanup(self.mx.close)

    def relay(self, **listener):
        """One outbound listener towards the AUTH-offering next hop; `listener`: its keys."""
        return self.start_relay(self.mx, role="outbound", **listener)

    def assertNoSecrets(self, r):
        text = "\n".join(rec["_raw"] for rec in r.logs())
        for secret in (PASSWORD, base64.b64encode(PASSWORD.encode()).decode(),
                       base64.b64encode(("\0%s\0%s" % (USER, PASSWORD)).encode()).decode()):
            self.assertNotIn(secret, text)

    def test_not_offered_in_plaintext(self):
        r = self.relay()
        with smtplib.SMTP("127.0.0.1", r.port(), timeout=10) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("auth"))
            code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0homer\0x").decode())
            self.assertEqual(code, 538)
            self.assertTrue(msg.startswith(b"5.7.11"), msg)
        self.assertFalse(any(l.startswith("AUTH") for l in self.mx.lines))

    def test_plain_and_login_on_loopback_when_allowed(self):
        r = self.relay(plaintext_auth_loopback=True)
        with smtplib.SMTP("127.0.0.1", r.port(), timeout=10) as s:
            s.ehlo("client.test")
            self.assertEqual(s.esmtp_features.get("auth", "").split(), ["PLAIN", "LOGIN", "X-TRIPLE"])
            s.user, s.password = USER, PASSWORD
            code, _ = s.auth("PLAIN", s.auth_plain)
            self.assertEqual(code, 235)
            s.sendmail("homer@example.com", ["bart@elsewhere.org"], b"Subject: x\r\n\r\nhi\r\n")
        with smtplib.SMTP("127.0.0.1", r.port(), timeout=10) as s:
            s.ehlo("client.test")
            s.user, s.password = USER, PASSWORD
            code, _ = s.auth("LOGIN", s.auth_login)
            self.assertEqual(code, 235)
        r.wait_log(lambda rec: rec.get("event") == "auth" and rec.get("mechanism") == "LOGIN", 5)
        self.assertEqual([rec.get("result") for rec in r.logs("auth")], ["ok", "ok"])
        self.assertNoSecrets(r)
        # The message went upstream after a successful AUTH, with its signed sender.
        self.assertTrue(self.mx.mails and self.mx.mails[0][1])
        self.assertIn("prvs=", self.mx.mails[0][0])

    def test_wrong_password_gets_the_next_hops_535(self):
        r = self.relay(plaintext_auth_loopback=True)
        with smtplib.SMTP("127.0.0.1", r.port(), timeout=10) as s:
            s.ehlo("client.test")
            s.user, s.password = USER, "wrong"
            with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                s.auth("PLAIN", s.auth_plain)
            self.assertEqual(cm.exception.smtp_code, 535)
            self.assertEqual(cm.exception.smtp_error, b"5.7.8 Error: authentication failed")
        r.wait_log(lambda rec: rec.get("event") == "auth", 5)
        self.assertEqual(r.logs("auth")[0].get("result"), "failed")
        self.assertNoSecrets(r)

    def test_multi_step_mechanism_relayed_byte_for_byte(self):
        r = self.relay(plaintext_auth_loopback=True)
        c = self.client(r)
        c.read_reply()
        c.cmd("EHLO client.test")
        challenges = []
        reply = c.cmd("AUTH X-TRIPLE")
        for answer in ("1", "2", "3"):
            self.assertEqual(reply.code, 334, reply)
            challenges.append(base64.b64decode(reply.text).decode())
            reply = c.cmd(base64.b64encode(answer.encode()).decode())
        self.assertEqual(challenges, ["one", "two", "three"])
        self.assertEqual(reply.code, 235, reply)
        self.assertEqual(self.mx.lines.count(base64.b64encode(b"2").decode()), 1)
        self.assertEqual(c.cmd("AUTH PLAIN x").code, 503)  # once per session

    def test_over_tls_and_allow_authenticated_from_outside(self):
        certs = tlsutil.Certs(self.dir)
        # No network is allowed: only authenticated clients may relay.
        r = self.relay(tls_cert=certs.relay_cert, tls_key=certs.relay_key, allow_clients=["10.0.0.0/8"],
                       allow_authenticated=True, upstream_tls="none")
        ctx = ssl.create_default_context(cafile=certs.ca)
        ctx.check_hostname = False  # we connect by IP; the chain is still verified
        with smtplib.SMTP("127.0.0.1", r.port(), timeout=10) as s:
            s.ehlo("client.test")
            self.assertFalse(s.has_extn("auth"))  # not before TLS
            s.starttls(context=ctx)
            s.ehlo("client.test")
            self.assertTrue(s.has_extn("auth"))
            code, msg = s.docmd("MAIL FROM:<homer@example.com>")
            self.assertEqual((code, msg), (530, b"5.7.0 Authentication required"))
            s.login(USER, PASSWORD)
            s.sendmail("homer@example.com", ["bart@elsewhere.org"], b"Subject: x\r\n\r\nhi\r\n")
        self.assertTrue(self.mx.mails[-1][1])
        self.assertNoSecrets(r)

    def test_outside_allow_clients_without_allow_authenticated_is_refused(self):
        r = self.relay(allow_clients=["10.0.0.0/8"], plaintext_auth_loopback=True)
        c = self.client(r)
        self.assertEqual(c.read_reply().code, 554)

    def test_mail_auth_parameter_forwarded(self):
        r = self.relay(plaintext_auth_loopback=True)
        c = self.client(r)
        c.read_reply()
        c.cmd("EHLO client.test")
        self.assertEqual(c.cmd("MAIL FROM:<homer@example.com> AUTH=homer+40example.com").code, 250)
        self.assertEqual(c.cmd("RCPT TO:<bart@elsewhere.org>").code, 250)
        self.assertTrue(any(l.endswith(" AUTH=homer+40example.com") and l.startswith("MAIL FROM:<prvs=")
                            for l in self.mx.lines), self.mx.lines)
        self.assertEqual(c.cmd("RSET").code, 250)
        self.assertEqual(c.cmd("MAIL FROM:<homer@example.com> AUTH=bad+zz").code, 501)


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
