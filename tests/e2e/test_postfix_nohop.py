#!/usr/bin/env python3
"""batv-relay's no-hop roles (milter, policy, socketmap) through a real Postfix, no proxy.

Usage: test_postfix_nohop.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

Needs root and the Debian postfix package. Everything runs on loopback, configured the way the
README's "Postfix without an extra hop" section tells users to:

  batv-relay   one daemon, three listeners: role "milter" on a unix socket (group postfix,
               mode 0660; allow_clients = the internal client 127.0.0.2 only), role "policy" and
               role "socketmap" on TCP; [domains] sign = example.com; [signing]
               exempt_senders = noreply@example.com, exempt_destinations = @lists.test.
  our Postfix  (mx.example.com) smtpd_milters / non_smtpd_milters = unix:SOCKET (protocol 6,
               default action tempfail); smtpd_recipient_restrictions = check_sender_access for <>
               and MAILER-DAEMON@ -> check_policy_service inet:127.0.0.1:POLICY (default action
               451 4.3.5); recipient_canonical_maps = a prvs= regexp prefilter in a pipemap ->
               socketmap:inet:127.0.0.1:SOCKETMAP:strip for envelope recipients only;
               mynetworks = 127.0.0.2/32; relay_domains = example.com with relay_recipient_maps
               listing the real users (so Postfix's unknown-user check is real); transport_maps:
               example.com -> the "mailbox" sink, external.test -> the remote Postfix, the rest
               -> the "internet" sink (both sinks harness.ScriptedUpstream); master.cf: pickup
               (for Postfix's sendmail) with a cleanup of its own that sets
               milter_macro_daemon_name = ORIGINATING, which the milter's originating_daemons
               takes as ours (the emulated client of local mail is 127.0.0.1).
  remote       a second Postfix for external.test (smtp_bind_address 127.0.0.3, so it is not our
               client) that accepts mail and then fails local delivery (error transport): it
               sends a REAL Postfix NDR to the tagged sender, back to our Postfix.

Cases: mail from the internal client (and from Postfix's sendmail) to an external domain leaves
with a tag `batv-keys verify` accepts; exempt destination, exempt sender and a foreign-domain
sender stay untagged; the remote Postfix's NDR to the tagged address reaches the mailbox sink at
the untagged address (MAIL FROM:<>); a forged NDR to the untagged address (and one with a bad
tag) gets 550 5.7.1 at RCPT; `postmap -q` answers through our Postfix's own map setting; monitor
mode (SIGHUP) delivers the forged NDR with X-BATV-Status; the daemon stopped: Postfix defers
(4xx), the mailbox sink gets nothing, the remote keeps its NDR queued, and after a restart
everything flows (the NDR included).
A second class runs the milter with `verify = true` and no policy service (the socketmap stays:
it makes tagged recipients known): forged bounces get the milter's 550 5.7.1 at RCPT, a valid tag
is delivered once, untagged, and signing is unchanged.

The fixtures are shared by the whole class (two Postfix instances and the relay start once);
test methods are numbered and run in that order; each one counts only what it caused.
Set BATV_E2E_LOGS=1 to print the relay's and both Postfix logs at the end.
"""
import os
import re
import shutil
import signal
import smtplib
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import HOST, KeyFile, Relay, ScriptedUpstream, free_port, scaled, wait_until  # noqa: E402
from postfix import PostfixInstance  # noqa: E402

RELAY = KEYS = None

CLIENT_IP = "127.0.0.2"     # the internal client: mynetworks and the milter's allow_clients
REMOTE_IP = "127.0.0.3"     # the remote Postfix's smtp client and forged-bounce senders
USER = "homer@example.com"
USERS = ("homer@example.com", "marge@example.com", "noreply@example.com")
OUTSIDE = "bart@elsewhere.example"          # routed to the "internet" sink
NDR_TARGET = "nobody@external.test"         # the remote Postfix accepts, then bounces it
# README (master.cf): locally submitted mail (sendmail -> pickup) goes through a cleanup of its
# own that says {daemon_name} = ORIGINATING, so the milter (originating_daemons default
# ["ORIGINATING"]) signs it although its emulated client is 127.0.0.1, not in allow_clients.
# Mail from smtpd keeps the plain cleanup ($myhostname), at every milter stage.
LOCAL_SUBMISSION_ROWS = [
    "pickup    unix  n  -  n  60  1  pickup",
    "  -o cleanup_service_name=cleanup-local",
    "cleanup-local unix  n  -  n  -  0  cleanup",
    "  -o milter_macro_daemon_name=ORIGINATING",
]
POLICY_DEFAULT = "451 4.3.5 BATV policy service unavailable, try again later"


def addr_of(line):
    """The address in "MAIL FROM:<x> ..." / "RCPT TO:<x> ..."."""
    m = re.search(r"<(.*?)>", line)
    return m.group(1) if m else None


def bad_tag(address):
    """A prvs tag of `address` for today whose HMAC is wrong."""
    prvs, kdddmac, rest = harness.expected_tag(address).split("=", 2)
    mac = "000000" if kdddmac[4:] != "000000" else "111111"
    return "%s=%s%s=%s" % (prvs, kdddmac[:4], mac, rest)


def message(sender, rcpt, subject, extra_headers=""):
    return ("From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nMessage-ID: <%s.%f@test>\r\n%s\r\n"
            "body of %s\r\n" % (sender, rcpt, subject, subject.replace(" ", "-"), time.time(),
                                extra_headers, subject)).encode()


def ndr_message(rcpt, subject):
    """A minimal multipart/report bounce, as a forger would send it."""
    return ("From: MAILER-DAEMON@mx.external.test\r\nTo: <%s>\r\nSubject: %s\r\n"
            "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
            " boundary=\"b\"\r\n\r\n--b\r\n\r\nUndelivered.\r\n--b\r\n"
            "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.external.test"
            "\r\n\r\nFinal-Recipient: rfc822; %s\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n"
            % (rcpt, subject, NDR_TARGET)).encode()


def smtp_send(port, source, sender, rcpts, data, timeout=20):
    """One SMTP transaction to our Postfix from `source`: (code, text) of the first refusal, or
    (250, text) when it was accepted. Never raises for an SMTP refusal."""
    try:
        s = smtplib.SMTP(HOST, port, local_hostname="client.test", timeout=scaled(timeout),
                         source_address=(source, 0))
    except (OSError, smtplib.SMTPException) as e:
        return 0, "connect: %s" % e
    try:
        s.ehlo()
        code, text = s.mail(sender)
        if code != 250:
            return code, text.decode(errors="replace")
        for r in rcpts:
            code, text = s.rcpt(r)
            if code not in (250, 251):
                return code, text.decode(errors="replace")
        code, text = s.data(data)
        return code, text.decode(errors="replace")
    except smtplib.SMTPResponseException as e:
        return e.smtp_code, e.smtp_error.decode(errors="replace")
    except smtplib.SMTPServerDisconnected as e:
        return 0, "disconnected: %s" % e
    finally:
        try:
            s.quit()
        except (OSError, smtplib.SMTPException):
            s.close()


class PostfixFixture(unittest.TestCase):
    """Both Postfix instances, the sinks and the relay; no tests of its own."""
    relay = pf = remote = mailbox = internet = None
    MILTER_VERIFY = False   # the milter's `verify` key
    USE_POLICY = True       # check_policy_service in smtpd_recipient_restrictions

    # -- fixtures (once for the class) --
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("a private Postfix needs root")
        for tool in ("/usr/sbin/postfix", "/usr/sbin/sendmail", "/usr/sbin/postmap"):
            if not os.access(tool, os.X_OK):
                raise unittest.SkipTest("%s not installed" % tool)
        cls._cleanups = []
        try:
            cls._setup()
        except BaseException:
            cls._teardown()
            raise

    @classmethod
    def _setup(cls):
        cls.tmp = harness.tmpdir("batv-e2e-nohop-")
        cls._cleanups.append(cls.tmp.cleanup)
        cls.dir = cls.tmp.name
        os.chmod(cls.dir, 0o755)
        cls.keys = KeyFile(KEYS, os.path.join(cls.dir, "keys.toml"))
        # The milter socket's directory: root's, searchable by Postfix (the socket itself is
        # group postfix, mode 0660), as /run/batv-relay would be.
        cls.run_dir = os.path.join(cls.dir, "run")
        os.mkdir(cls.run_dir, 0o750)
        shutil.chown(cls.run_dir, "root", "postfix")
        cls.milter_sock = os.path.join(cls.run_dir, "milter.sock")
        # Fixed ports: a restarted daemon listens where Postfix's main.cf points.
        cls.policy_port = free_port()
        cls.socketmap_port = free_port()

        cls.mailbox = ScriptedUpstream()
        cls._cleanups.append(cls.mailbox.close)
        cls.internet = ScriptedUpstream()
        cls._cleanups.append(cls.internet.close)

        cls.relay = cls.start_relay()

        our_port = free_port()
        remote_port = free_port()
        cls.remote = PostfixInstance(
            workdir=cls.dir, port=remote_port, myhostname="mx.external.test",
            relay_port=our_port,          # its bounces (to example.com) go to our Postfix
            pickup=True,                  # postqueue -f (flush) wakes pickup too
            main_cf_extra={
                "mydomain": "external.test",
                "mydestination": "external.test",
                "local_recipient_maps": "",
                # Local delivery fails (error(8)); smtpd would refuse recipients of the error
                # transport at RCPT as unlisted, so that check is off: the message is accepted
                # first and then bounced, a real NDR.
                "local_transport": "error:5.1.1 Mailbox unavailable",
                "smtpd_reject_unlisted_recipient": "no",
                "smtp_bind_address": REMOTE_IP,
                # Its NDR, deferred while our daemon is down, must stay queued (the instance's
                # default bounce_queue_lifetime = 0 would return it at once).
                "bounce_queue_lifetime": "10m",
            })
        cls._cleanups.append(cls.remote.stop)
        cls.pf = PostfixInstance(
            workdir=cls.dir, port=our_port, myhostname="mx.example.com",
            relay_port=cls.internet.port, master_cf_extra=LOCAL_SUBMISSION_ROWS,
            files={
                "transport": "example.com smtp:[%s]:%d\nexternal.test smtp:[%s]:%d\n"
                             % (HOST, cls.mailbox.port, HOST, remote_port),
                "relay_recipients": "".join("%s OK\n" % u for u in USERS),
            },
            main_cf_extra=cls.our_main_cf())
        cls._cleanups.append(cls.pf.stop)

    @classmethod
    def our_main_cf(cls):
        """Our Postfix's main.cf lines for the no-hop roles, as in the README (plus the test's
        own routing)."""
        cf = {
            "mydomain": "example.com",
            "mynetworks": CLIENT_IP + "/32",
            "relay_domains": "example.com",
            # the test's tables, in the instance's config directory (texthash: no postmap)
            "relay_recipient_maps": "texthash:$config_directory/relay_recipients",
            "transport_maps": "texthash:$config_directory/transport",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # README: the milter signs
            "smtpd_milters": "unix:" + cls.milter_sock,
            "non_smtpd_milters": "unix:" + cls.milter_sock,
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            # README: the socketmap strips valid tags and makes them known recipients
            # (behind the README's prvs= prefilter; main.cf escapes $ as $$)
            "recipient_canonical_maps":
                "pipemap:{regexp:{{/^(prvs=.+)$$/ $${1}}},socketmap:inet:%s:%d:strip}" % (HOST, cls.socketmap_port),
            "recipient_canonical_classes": "envelope_recipient",
        }
        if cls.USE_POLICY:
            # README: the policy service refuses forged bounces at RCPT
            # (for bounces only: the null sender and MAILER-DAEMON@)
            cf["smtpd_restriction_classes"] = "batv_bounce"
            cf["batv_bounce"] = "check_policy_service inet:%s:%d" % (HOST, cls.policy_port)
            cf["smtpd_recipient_restrictions"] = \
                "check_sender_access inline:{<>=batv_bounce, MAILER-DAEMON@=batv_bounce}"
            cf["smtpd_policy_service_default_action"] = POLICY_DEFAULT
        return cf

    @classmethod
    def start_relay(cls, inbound=None):
        r = Relay(RELAY, cls.dir, cls.keys, start=False, listeners=[
            {"role": "milter", "listen": "unix:" + cls.milter_sock, "socket_mode": "0660",
             "socket_group": "postfix", "allow_clients": [CLIENT_IP + "/32"],
             "verify": cls.MILTER_VERIFY},
            {"role": "policy", "listen": "%s:%d" % (HOST, cls.policy_port)},
            {"role": "socketmap", "listen": "%s:%d" % (HOST, cls.socketmap_port)},
        ], signing={"exempt_senders": ["noreply@example.com"],
                    "exempt_destinations": ["@lists.test"]},
            inbound=inbound)
        rc, out = r.check_config()
        if rc != 0:
            raise AssertionError("--check-config refuses the config:\n%s\n%s"
                                 % (out, r.config_text()))
        r.start()
        cls._cleanups.append(r.close)
        return r

    @classmethod
    def tearDownClass(cls):
        cls._teardown()

    @classmethod
    def _teardown(cls):
        if os.environ.get("BATV_E2E_LOGS") or getattr(cls, "_failed", False):
            for name in ("relay", "pf", "remote"):
                obj = getattr(cls, name, None)
                if obj is None:
                    continue
                text = obj.stderr_text() if name == "relay" else obj.log_text()
                sys.stderr.write("\n--- %s log ---\n%s\n--- end ---\n"
                                 % (name, "\n".join(text.splitlines()[-120:])))
        errors = []
        for fn in reversed(getattr(cls, "_cleanups", [])):
            try:
                fn()
            except Exception as e:          # keep going: everything must stop
                errors.append(e)
        cls._cleanups = []
        if errors:
            raise errors[0]

    def setUp(self):
        if self.relay is not None and self.relay.proc.poll() is not None \
                and not self.relay.stopped:
            self.fail("batv-relay died (exit status %s)" % self.relay.proc.returncode)

    def tearDown(self):
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is not None and any(t is self for t, _ in result.failures + result.errors):
            type(self)._failed = True

    # -- helpers --
    def send(self, sender, rcpts, subject, source=CLIENT_IP, data=None):
        if isinstance(rcpts, str):
            rcpts = [rcpts]
        return smtp_send(self.pf.port, source, sender, rcpts,
                         data if data is not None else message(sender, rcpts[0], subject))

    def wait_at(self, sink, subject, timeout=30):
        """The transaction at `sink` whose body carries `subject` (bounded wait)."""
        key = ("Subject: %s" % subject).encode()

        def find():
            for t in sink.accepted():
                if key in t.data:
                    return t
            return None
        t = wait_until(find, timeout, 0.05)
        self.assertIsNotNone(t, "no message %r at the sink within %ss; our Postfix log tail:\n%s"
                             % (subject, timeout, "\n".join(self.pf.log_lines()[-25:])))
        return t

    def assert_tag_verifies(self, tagged, address, t0):
        self.assertTrue(harness.tag_matches(tagged, address, t0, time.time()),
                        "%r is not the tag of %s" % (tagged, address))
        self.assertEqual(self.keys.verify(tagged), (0, "valid"))



class NoHopPostfixTest(PostfixFixture):
    """The README's recipe: the milter signs, the policy service verifies, the socketmap strips."""

    # -- signing (milter) --
    def test_01_internal_client_mail_leaves_signed(self):
        t0 = time.time()
        code, text = self.send(USER, OUTSIDE, "signed via smtp")
        self.assertEqual(code, 250, text)
        t = self.wait_at(self.internet, "signed via smtp")
        self.assert_tag_verifies(t.sender, USER, t0)
        self.assertEqual([addr_of(r) for r in t.rcpts], [OUTSIDE])

    def test_02_sendmail_submission_signed(self):
        t0 = time.time()
        rc, out = self.pf.sendmail(["-i", "-f", USER, OUTSIDE],
                                   message(USER, OUTSIDE, "signed via sendmail"))
        self.assertEqual(rc, 0, out)
        t = self.wait_at(self.internet, "signed via sendmail")
        self.assert_tag_verifies(t.sender, USER, t0)

    def test_03_exempt_destination_stays_untagged(self):
        code, text = self.send(USER, "announce@lists.test", "to an exempt destination")
        self.assertEqual(code, 250, text)
        self.assertEqual(self.wait_at(self.internet, "to an exempt destination").sender, USER)

    def test_04_exempt_sender_stays_untagged(self):
        code, text = self.send("noreply@example.com", OUTSIDE, "from an exempt sender")
        self.assertEqual(code, 250, text)
        self.assertEqual(self.wait_at(self.internet, "from an exempt sender").sender,
                         "noreply@example.com")

    def test_05_foreign_sender_stays_untagged(self):
        code, text = self.send("alice@foreign.test", OUTSIDE, "from a foreign domain")
        self.assertEqual(code, 250, text)
        self.assertEqual(self.wait_at(self.internet, "from a foreign domain").sender,
                         "alice@foreign.test")

    # -- verification (policy + socketmap) --
    def test_06_real_ndr_reaches_the_untagged_mailbox(self):
        t0 = time.time()
        code, text = self.send(USER, NDR_TARGET, "bounce me")
        self.assertEqual(code, 250, text)
        # The remote Postfix got the tagged sender, then bounced to it.
        m = self.remote.wait_log(r"from=<(prvs=[^>]*)>", 30)
        self.assertIsNotNone(m, "the remote Postfix logged no tagged sender")
        self.assertTrue(self.remote.wait_log(r"to=<%s>.*status=bounced" % re.escape(NDR_TARGET),
                                             30), "the remote Postfix did not bounce")
        # The NDR quotes the original message, whose subject we look for at the mailbox.
        t = self.wait_at(self.mailbox, "bounce me", 60)
        self.assertEqual(t.sender, "", "not a bounce: %r" % t.mail)
        self.assertEqual([addr_of(r) for r in t.rcpts], [USER])
        self.assertIn(b"Undelivered Mail Returned to Sender", t.data)
        # Our Postfix received it from the remote (not our client) at the tagged address and
        # rewrote it; the relay's policy service and socketmap both saw the valid tag.
        m = self.pf.wait_log(r"to=<%s>, orig_to=<(prvs=[^>]*)>.*relay=\[?%s" % (
            re.escape(USER), re.escape(HOST)), 10)
        self.assertIsNotNone(m, "no delivery line with orig_to=<prvs=...>")
        self.assert_tag_verifies(m.group(1), USER, t0)
        self.assertIn("client=unknown[%s]" % REMOTE_IP, self.pf.log_text())

    def test_07_forged_ndr_refused_at_rcpt(self):
        before = len(self.mailbox.accepted())
        code, text = self.send("", USER, "forged", source=REMOTE_IP,
                               data=ndr_message(USER, "forged bounce"))
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.1", text)
        # A bounce to a tag that does not verify: refused the same way.
        bad = bad_tag(USER)
        code, text = self.send("", bad, "forged", source=REMOTE_IP,
                               data=ndr_message(bad, "forged bounce bad tag"))
        self.assertEqual(code, 550, text)
        self.assertIn("5.7.1", text)
        # An unknown local part stays unknown (Postfix's own check, after ours).
        code, text = self.send("", "nosuchuser@example.com", "forged", source=REMOTE_IP,
                               data=ndr_message("nosuchuser@example.com", "unknown user"))
        self.assertEqual(code // 100, 5, text)
        self.assertEqual(len(self.mailbox.accepted()), before)

    def test_08_postmap_query_through_our_postfix_config(self):
        table = self.pf.postconf("recipient_canonical_maps").replace("$$", "$")
        self.assertTrue(table.startswith("pipemap:{regexp:"), table)
        tag = harness.expected_tag(USER)
        rc, out, err = self.pf.postmap_query(tag, table)
        self.assertEqual((rc, out.strip()), (0, USER), err)
        rc, out, err = self.pf.postmap_query(USER, table)
        self.assertEqual((rc, out.strip()), (1, ""), err)

    def test_09_policy_asked_about_bounces_only(self):
        # README: check_sender_access sends the null sender and MAILER-DAEMON@ to the policy
        # service; other senders never reach it.
        code, text = self.send("alice@foreign.test", USER, "normal inbound mail", source=REMOTE_IP)
        self.assertEqual(code, 250, text)
        self.wait_at(self.mailbox, "normal inbound mail")
        code, text = self.send("MAILER-DAEMON@mx.external.test", USER, "mailer-daemon sender",
                               source=REMOTE_IP)
        # inbound.mailer_daemon_is_bounce is off: asked, and answered DUNNO
        self.assertEqual(code, 250, text)
        code, text = self.send("", USER, "forged again", source=REMOTE_IP,
                               data=ndr_message(USER, "forged again"))
        self.assertEqual(code, 550, text)

        def asked(sender):
            return [r for r in self.relay.logs("policy") if r.get("from") == "<%s>" % sender]
        self.assertTrue(wait_until(lambda: asked(""), 10), "the forged bounce was not asked about")
        self.assertTrue(asked("MAILER-DAEMON@mx.external.test"))
        self.assertEqual(asked("alice@foreign.test"), [])

    # -- monitor mode (reload) --
    def test_10_monitor_mode_delivers_with_header(self):
        cls = type(self)
        before = [r for r in self.relay.logs("reload") if r.get("result") == "ok"]
        self.relay.inbound = {"mode": "monitor"}
        self.relay.write_config()
        try:
            self.relay.send_signal(signal.SIGHUP)
            self.assertIsNotNone(self.relay.wait_log(
                lambda r: r.get("event") == "reload" and r.get("result") == "ok"
                and r not in before, 10), "no reload")
            code, text = self.send("", USER, "monitored", source=REMOTE_IP,
                                   data=ndr_message(USER, "monitored bounce"))
            self.assertEqual(code, 250, text)
            t = self.wait_at(self.mailbox, "monitored bounce")
            self.assertEqual((t.sender, [addr_of(r) for r in t.rcpts]), ("", [USER]))
            self.assertRegex(t.data.decode(errors="replace"),
                             r"(?m)^X-BATV-Status: untagged")
        finally:
            cls.relay.inbound = {}
            cls.relay.write_config()
            n = len([r for r in cls.relay.logs("reload") if r.get("result") == "ok"])
            cls.relay.send_signal(signal.SIGHUP)
            cls.relay.wait_logs(lambda r: r.get("event") == "reload"
                                and r.get("result") == "ok", n + 1, 10)
        # Enforce again: the same forged bounce is refused.
        code, text = self.send("", USER, "forged", source=REMOTE_IP,
                               data=ndr_message(USER, "forged again"))
        self.assertEqual(code, 550, text)

    # -- the daemon down --
    def test_20_daemon_down_defers_then_flows_after_restart(self):
        cls = type(self)
        t0 = time.time()
        box_before = len(self.mailbox.accepted())
        net_before = len(self.internet.accepted())
        self.assertEqual(self.relay.stop(), 0)
        self.assertFalse(os.path.exists(self.milter_sock), "the milter socket is left behind")
        # Internal mail: deferred at SMTP (milter_default_action = tempfail), not accepted
        # unsigned.
        code, text = self.send(USER, OUTSIDE, "while down")
        self.assertEqual(code // 100, 4, "%d %s" % (code, text))
        # A forged bounce and a bounce with a valid tag: both deferred, never accepted
        # unverified.
        code, text = self.send("", USER, "forged", source=REMOTE_IP,
                               data=ndr_message(USER, "forged while down"))
        self.assertEqual(code // 100, 4, "%d %s" % (code, text))
        tag = harness.expected_tag(USER)
        code, text = self.send("", tag, "tagged", source=REMOTE_IP,
                               data=ndr_message(tag, "tagged while down"))
        self.assertEqual(code // 100, 4, "%d %s" % (code, text))
        # A real NDR: the remote Postfix bounces a message from a tagged sender; our Postfix
        # defers it, so the remote keeps it queued.
        code, text = smtp_send(self.remote.port, HOST, tag, [NDR_TARGET],
                               message(tag, NDR_TARGET, "real ndr while down"))
        self.assertEqual(code, 250, text)
        self.assertTrue(self.remote.wait_log(r"to=<%s>.*status=deferred" % re.escape(tag), 30),
                        "the remote's NDR was not deferred by our Postfix:\n%s"
                        % "\n".join(self.remote.log_lines()[-20:]))
        self.assertEqual(len(self.mailbox.accepted()), box_before, "accepted while down")
        self.assertEqual(len(self.internet.accepted()), net_before, "accepted while down")

        cls.relay = cls.start_relay()
        code, text = self.send(USER, OUTSIDE, "after restart")
        self.assertEqual(code, 250, text)
        self.assert_tag_verifies(self.wait_at(self.internet, "after restart").sender, USER, t0)
        rc, out = self.remote.flush()
        self.assertEqual(rc, 0, out)
        t = self.wait_at(self.mailbox, "real ndr while down", 60)
        self.assertEqual((t.sender, [addr_of(r) for r in t.rcpts]), ("", [USER]))
        self.assertEqual(len(self.mailbox.accepted()), box_before + 1,
                         [x.mail for x in self.mailbox.accepted()[box_before:]])


class MilterVerifyPostfixTest(PostfixFixture):
    """The milter verifying too (`verify = true`), with the socketmap and without the policy
    service: the tagged recipient reaches the milter at RCPT (the socketmap made it known, and
    canonical rewriting happens later, in cleanup), so the milter refuses forged bounces with
    SMFIR_REPLYCODE; a valid tag is stripped once (by the socketmap in cleanup; the milter's
    DELRCPT + ADDRCPT_PAR must not make a second copy)."""
    MILTER_VERIFY = True
    USE_POLICY = False

    def test_01_signing_unchanged(self):
        t0 = time.time()
        code, text = self.send(USER, OUTSIDE, "verify milter signs")
        self.assertEqual(code, 250, text)
        self.assert_tag_verifies(self.wait_at(self.internet, "verify milter signs").sender, USER, t0)

    def test_02_forged_ndr_refused_by_the_milter(self):
        before = len(self.mailbox.accepted())
        for rcpt, subject in ((USER, "forged to milter"), (bad_tag(USER), "bad tag to milter")):
            code, text = self.send("", rcpt, "forged", source=REMOTE_IP,
                                   data=ndr_message(rcpt, subject))
            self.assertEqual(code, 550, text)
            self.assertIn("5.7.1", text)
            self.assertIn("bounce refused", text)
        self.assertTrue(self.pf.wait_log(r"milter-reject: RCPT from", 10),
                        "Postfix did not log the milter's refusal")
        self.assertEqual(len(self.mailbox.accepted()), before)

    def test_03_valid_tag_delivered_once_untagged(self):
        before = len(self.mailbox.accepted())
        tag = harness.expected_tag(USER)
        code, text = self.send("", tag, "tagged", source=REMOTE_IP,
                               data=ndr_message(tag, "valid tag to milter"))
        self.assertEqual(code, 250, text)
        t = self.wait_at(self.mailbox, "valid tag to milter")
        self.assertEqual((t.sender, [addr_of(r) for r in t.rcpts]), ("", [USER]))
        # Bounded wait for a duplicate that must not come.
        time.sleep(scaled(1.0))
        got = [x for x in self.mailbox.accepted()[before:] if b"valid tag to milter" in x.data]
        self.assertEqual(len(got), 1, [x.rcpts for x in got])


if __name__ == "__main__":
    harness.run_tests(globals())
