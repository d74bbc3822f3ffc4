"""batv-relay's milter role driven by an independent milter client: Debian's `miltertest`
(OpenDKIM's Lua-scripted MTA side of the milter protocol, built on libmilter's own definitions).

Usage: test_milter.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args]

Each test writes a Lua script and runs `miltertest -s SCRIPT` against the real batv-relay binary
with a milter listener (TCP or unix socket). The script fails (non-zero exit, the message on
stderr) when a reply or an end-of-message action is not the expected one. What is covered:
negotiation with the MTA's default offer (libmilter's masks),
the macros the milter asks for ({client_addr}, {auth_authen}, {daemon_name}) and the steps it
skips (connect and helo: miltertest refuses to send those once a milter has skipped them, which
checks the negotiation), which mail is ours,
RCPT replies (continue, 452 for a differing signing decision, 550 REPLYCODE for a forged bounce in
verify mode), and the end-of-message recipient actions of verify mode (DELRCPT of the tagged
address, ADDRCPT of the stripped one). miltertest cannot see CHGFROM: the CHGFROM bytes are
checked by the milter's unit tests (tests/unit/milter_test.cpp) and by a real Postfix
(tests/e2e/test_postfix_nohop.py: the signed sender arrives at the next hop).

The key is the harness's (secret "secretkey", id 3); tags come from harness.expected_tag.
"""
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, expected_tag, scaled  # noqa: E402

RELAY = KEYS = None
MILTERTEST = shutil.which("miltertest") or "/usr/bin/miltertest"

HOMER = "homer@example.com"
BART = "bart@remote.example"

# Shared Lua: helpers that turn every unexpected reply into an error naming the step.
LUA_PRELUDE = r'''
function expect(conn, what, want)
  local got = mt.getreply(conn)
  if got ~= want then
    error(what .. ": reply " .. string.format("%%q", string.char(got)) ..
          ", expected " .. string.format("%%q", string.char(want)))
  end
end
function must(what, err)
  if err ~= nil then error(what .. " failed: " .. tostring(err)) end
end
mt.set_timeout(%(timeout)d)
conn = mt.connect("%(sock)s", 20, 0.1)
if conn == nil then error("mt.connect() failed") end
'''


class MilterTest(cases.RelayTestCase):
    RELAY_KW = {"signing": {"exempt_destinations": ["@lists.example"]}}

    def setUp(self):
        if not os.path.exists(MILTERTEST):
            self.skipTest("miltertest is not installed (Debian package miltertest)")
        super().setUp()

    def relay(self, verify=False, mode="enforce", unix=False, **listener):
        li = {"role": "milter", "allow_clients": ["127.0.0.2/32"], "verify": verify}
        if unix:
            li["listen"] = "unix:" + os.path.join(self.dir, "milter.sock")
        li.update(listener)
        r = self.start_relay([li], inbound={"mode": mode})
        port = r.port(0)
        self.sock = ("unix:" + port[len("unix:"):]) if isinstance(port, str) else "inet:%d@%s" % (port, HOST)
        return r

    def run_lua(self, body, expect_ok=True, trace=False):
        script = LUA_PRELUDE % {"sock": self.sock, "timeout": int(scaled(10))} + body
        path = os.path.join(self.dir, "t.lua")
        with open(path, "w") as f:
            f.write(script)
        p = subprocess.run([MILTERTEST] + (["-vv"] if trace else []) + ["-s", path],
                           capture_output=True, timeout=scaled(60),
                           stdin=subprocess.DEVNULL)
        out = (p.stdout + p.stderr).decode(errors="replace")
        if expect_ok:
            self.assertEqual(p.returncode, 0, "miltertest failed:\n%s\nscript:\n%s" % (out, script))
        return p.returncode, out

    def test_negotiation_and_our_mail_is_accepted(self):
        r = self.relay()
        self.run_lua(r'''
must("mail", mt.macro(conn, SMFIC_MAIL, "{client_addr}", "127.0.0.2", "{daemon_name}", "mx", "i", "4F3A2"))
must("mail", mt.mailfrom(conn, "<homer@example.com>", "SIZE=100"))
expect(conn, "mail", SMFIR_CONTINUE)
must("rcpt", mt.rcptto(conn, "<bart@remote.example>"))
expect(conn, "rcpt", SMFIR_CONTINUE)
-- the exempt mailing list decides differently from the first recipient: a separate transaction
must("rcpt2", mt.rcptto(conn, "<list@lists.example>"))
expect(conn, "rcpt2", SMFIR_REPLYCODE)
must("eom", mt.eom(conn))
local eom = mt.getreply(conn)
if eom ~= SMFIR_CONTINUE and eom ~= SMFIR_ACCEPT then error("eom: unexpected reply") end
if mt.eom_check(conn, MT_RCPTADD, "<homer@example.com>") then error("signing added a recipient") end
mt.disconnect(conn)
''')
        # The decision is logged and counted with the outbound proxy's names.
        rec = r.wait_log(lambda x: x.get("event") == "mail" and x.get("signing") == "signed", timeout=scaled(5))
        self.assertIsNotNone(rec, r.stderr_text())
        tagged = rec["upstream_from"].strip("<>")
        self.assertTrue(tagged.startswith("prvs=3") and tagged.endswith("=" + HOMER), rec)
        self.assertEqual(self.keys.verify(tagged), (0, "valid"))

    def test_mail_that_is_not_ours_passes_unsigned(self):
        r = self.relay()
        self.run_lua(r'''
must("mail", mt.macro(conn, SMFIC_MAIL, "{client_addr}", "192.0.2.9", "{daemon_name}", "mx"))
must("mail", mt.mailfrom(conn, "<homer@example.com>"))
expect(conn, "mail", SMFIR_CONTINUE)
must("rcpt", mt.rcptto(conn, "<bart@remote.example>"))
expect(conn, "rcpt", SMFIR_CONTINUE)
must("rcpt2", mt.rcptto(conn, "<list@lists.example>"))
expect(conn, "rcpt2", SMFIR_CONTINUE)
must("eom", mt.eom(conn))
mt.disconnect(conn)
''')
        self.assertFalse([x for x in r.logs("mail") if x.get("signing") == "signed"], r.stderr_text())

    def test_authenticated_and_originating_clients_are_ours(self):
        r = self.relay(unix=True)
        for macros in ('"{auth_authen}", "homer"', '"{daemon_name}", "ORIGINATING"'):
            self.run_lua(r'''
must("mail", mt.macro(conn, SMFIC_MAIL, "{client_addr}", "198.51.100.4", %s))
must("mail", mt.mailfrom(conn, "<homer@example.com>"))
expect(conn, "mail", SMFIR_CONTINUE)
must("rcpt", mt.rcptto(conn, "<bart@remote.example>"))
expect(conn, "rcpt", SMFIR_CONTINUE)
must("eom", mt.eom(conn))
mt.disconnect(conn)
''' % macros)
        self.assertTrue(r.wait_logs(lambda x: x.get("event") == "mail" and x.get("signing") == "signed",
                                    2, timeout=scaled(5)), r.stderr_text())

    def test_verify_refuses_forged_bounces_and_strips_valid_tags(self):
        self.relay(verify=True)
        tagged = expected_tag(HOMER)
        out = self.run_lua(r'''
must("mail", mt.macro(conn, SMFIC_MAIL, "{client_addr}", "192.0.2.9", "{daemon_name}", "mx"))
must("mail", mt.mailfrom(conn, "<>"))
expect(conn, "mail", SMFIR_CONTINUE)
must("forged", mt.rcptto(conn, "<homer@example.com>"))
expect(conn, "forged rcpt", SMFIR_REPLYCODE)
must("bad tag", mt.rcptto(conn, "<%(bad)s>"))
expect(conn, "bad tag rcpt", SMFIR_REPLYCODE)
must("postmaster", mt.rcptto(conn, "<postmaster@example.com>"))
expect(conn, "postmaster rcpt", SMFIR_CONTINUE)
must("valid", mt.rcptto(conn, "<%(tagged)s>", "NOTIFY=FAILURE", "ORCPT=rfc822;%(tagged)s"))
expect(conn, "valid rcpt", SMFIR_CONTINUE)
must("eom", mt.eom(conn))
if not (mt.eom_check(conn, MT_RCPTDELETE, "<%(tagged)s>") or mt.eom_check(conn, MT_RCPTDELETE, "%(tagged)s")) then
  error("the tagged recipient was not deleted")
end
-- The stripped recipient comes back with ADDRCPT_PAR ('2', its DSN arguments kept), which
-- miltertest's eom_check does not record (it knows only ADDRCPT '+'): its -vv trace shows it.
if mt.eom_check(conn, MT_RCPTDELETE, "<postmaster@example.com>") then error("postmaster touched") end
mt.disconnect(conn)
''' % {"tagged": tagged, "bad": tagged[:14] + ("0" if tagged[14] != "0" else "1") + tagged[15:]},
                             trace=True)[1]
        # One ADDRCPT_PAR at end of message: the stripped address and both DSN arguments, each
        # NUL-terminated, so its length says they were all kept.
        args = ["<%s>" % HOMER, "NOTIFY=FAILURE", "ORCPT=rfc822;" + tagged]
        want = sum(len(a) + 1 for a in args)
        self.assertEqual(re.findall(r"mt_milter_read\(\d+\): cmd 2, len (\d+)", out), [str(want)], out)
        self.assertEqual(len(re.findall(r"mt_milter_read\(\d+\): cmd -, len", out)), 1, out)

    def test_monitor_mode_adds_the_status_header(self):
        self.relay(verify=True, mode="monitor")
        self.run_lua(r'''
must("mail", mt.macro(conn, SMFIC_MAIL, "{client_addr}", "192.0.2.9", "{daemon_name}", "mx"))
must("mail", mt.mailfrom(conn, "<>"))
expect(conn, "mail", SMFIR_CONTINUE)
must("rcpt", mt.rcptto(conn, "<homer@example.com>"))
expect(conn, "rcpt (monitor: never refused)", SMFIR_CONTINUE)
must("header", mt.header(conn, "X-BATV-Status", "valid"))
must("header", mt.header(conn, "Subject", "Undelivered Mail Returned to Sender"))
must("eom", mt.eom(conn))
if not mt.eom_check(conn, MT_HDRADD, "X-BATV-Status") and not mt.eom_check(conn, MT_HDRINSERT, "X-BATV-Status") then
  error("no X-BATV-Status header added")
end
local v = mt.getheader(conn, "X-BATV-Status", 0)
if v == nil or not string.find(v, "untagged") then error("X-BATV-Status: " .. tostring(v)) end
if not mt.eom_check(conn, MT_HDRDELETE, "X-BATV-Status") and not mt.eom_check(conn, MT_HDRCHANGE, "X-BATV-Status") then
  error("the sender's X-BATV-Status header was kept")
end
mt.disconnect(conn)
''')


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
