#!/usr/bin/env python3
"""batv-relay metrics end to end: the real relay, real SMTP traffic, /metrics scraped with urllib.

Usage: test_metrics.py --relay PATH/batv-relay --keys PATH/batv-keys [unittest args, e.g. -k reload]

Each test starts the relay with an outbound listener (0) in front of a ScriptedUpstream playing
the smarthost, an inbound listener (1) in front of a second one playing the MX, domains.verify =
example.com, and `[metrics] listen = "127.0.0.1:0"`; the metrics port comes from the
`event=metrics_listening address=127.0.0.1:PORT` log line. The traffic is known exactly, and the
scraped counters must match it exactly: every series of a checked family that the test does not
expect to move must be 0.

The contract checked (issue 6, relay/metrics.hpp):
  sessions        batv_sessions_total / batv_sessions_current{role}, batv_session_end_total{role,reason}
  transactions    batv_messages_total{role,outcome}: one per data phase that reached the next
                  hop's final reply; a bounce refused at RCPT and never given DATA is not one
  recipients      batv_recipients_total{role,action}: outbound "relayed" per RCPT the next hop
                  accepted (and "refused" per RCPT it refused); inbound the decision's action
                  (accepted, refused, exempt, monitored, stripped, kept, passed)
  signing         batv_signing_total{decision="signed",key} / {decision="not_signed",reason}, one
                  per transaction (the decision taken at the first RCPT)
  verification    batv_verify_total{domain,verdict} per inbound RCPT in domains.verify
  bytes           batv_bytes_total{role}: the `size` of every accepted `event=message`
  latency         batv_added_latency_seconds: one observation per message counted above
  reloads / keys  batv_reloads_total{result} = the `event=reload` lines; batv_active_key_id{ring};
                  batv_key_age_seconds{ring,key} from the key file's creation times
  /healthz        200 "ok\\n"; unknown paths 404; other methods 405

Set BATV_E2E_LOGS=1 to print every relay log; the log tail of a failed test is always printed.
"""
import math
import os
import re
import signal
import smtplib
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cases  # noqa: E402
import harness  # noqa: E402
from harness import HOST, SmtpClient, expected_tag, wait_until  # noqa: E402

RELAY = KEYS = None

HOMER = "homer@example.com"
MARGE = "marge@example.com"
BART = "bart@elsewhere.org"
LISA = "lisa@remote.test"
BODY = b"Subject: metrics e2e\r\n\r\nhello\r\n.a dotted line\r\nbye\r\n"
NDR = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered Mail\r\n\r\nyour mail bounced\r\n"

REASONS = ("quit", "client_closed", "idle_timeout", "data_timeout", "too_many_errors",
           "too_many_commands", "too_many_invalid_recipients", "session_timeout", "tls_failed",
           "upstream_lost", "upstream_unavailable", "shutdown", "access_denied",
           "too_many_sessions", "io_error", "protocol_error", "request_too_large", "other")
ACTIONS = ("accepted", "exempt", "refused", "monitored", "stripped", "kept", "passed", "relayed",
           "other")
NOT_SIGNED = ("null_sender", "malformed_address", "already_tagged", "quoted_local_part",
              "too_long", "not_our_domain", "exempt_sender", "exempt_destination", "other")
VERDICTS = ("valid", "bad_signature", "expired", "unknown_key", "malformed", "untagged", "other")
STAGES = ("connect", "greeting", "ehlo", "tls", "mail", "rcpt", "data", "dot", "bdat", "reply",
          "other")
ROLES = ("outbound", "inbound")
BUCKETS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1", "2.5", "+Inf")


# ---------------------------------------------------------------------------------------------
# exposition format 0.0.4

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
_SAMPLE = re.compile(r"^(%s)(?:\{(%s(?:,%s)*)\})? (\S+)$" % (_NAME, _LABEL, _LABEL))
_LABELS = re.compile(_LABEL)


def _unescape(v):
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), v)


class Exposition:
    """A parsed scrape: samples {(name, frozenset(labels.items())): float}, types {family: type}.

    Parsing asserts the format: only HELP, TYPE and sample lines; HELP and TYPE once per family,
    before its samples; samples of a family contiguous; no duplicate series."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        self.types = {}
        self.helps = {}
        if not text.endswith("\n"):
            raise AssertionError("exposition does not end with a newline")
        current = None
        seen_families = []
        for line in text.split("\n")[:-1]:
            if line.startswith("# HELP "):
                parts = line.split(" ", 3)
                if len(parts) < 4 or not parts[3]:
                    raise AssertionError("bad HELP line: %r" % line)
                if parts[2] in self.helps:
                    raise AssertionError("HELP twice for %s" % parts[2])
                self.helps[parts[2]] = parts[3]
            elif line.startswith("# TYPE "):
                parts = line.split(" ")
                if len(parts) != 4 or parts[3] not in ("counter", "gauge", "histogram",
                                                       "summary", "untyped"):
                    raise AssertionError("bad TYPE line: %r" % line)
                if parts[2] in self.types:
                    raise AssertionError("TYPE twice for %s" % parts[2])
                self.types[parts[2]] = parts[3]
                current = parts[2]
                seen_families.append(current)
            elif line.startswith("#") or not line:
                raise AssertionError("unexpected line: %r" % line)
            else:
                m = _SAMPLE.match(line)
                if not m:
                    raise AssertionError("not a sample line: %r" % line)
                name, labeltext, value = m.group(1), m.group(2), m.group(len(m.groups()))
                family = name
                if self.types.get(current) == "histogram":
                    family = re.sub(r"_(bucket|sum|count)$", "", name)
                if family != current:
                    raise AssertionError("sample %r outside its family (%s)" % (line, current))
                labels = {}
                for k, v in _LABELS.findall(labeltext or ""):
                    if k in labels:
                        raise AssertionError("label %s twice: %r" % (k, line))
                    labels[k] = _unescape(v)
                key = (name, frozenset(labels.items()))
                if key in self.samples:
                    raise AssertionError("duplicate series: %r" % line)
                self.samples[key] = float(value)  # accepts +Inf, NaN
        for fam in self.types:
            if fam not in self.helps:
                raise AssertionError("family %s has no HELP" % fam)

    def get(self, name, **labels):
        """The value of one series; KeyError when it is not exported."""
        return self.samples[(name, frozenset(labels.items()))]

    def has(self, name, **labels):
        return (name, frozenset(labels.items())) in self.samples

    def family(self, name):
        """{frozenset(labels.items()): value} of every series named `name`."""
        return {lab: v for (n, lab), v in self.samples.items() if n == name}


# ---------------------------------------------------------------------------------------------
class MetricsTestCase(cases.RelayTestCase):
    CHECK_CONFIG = True
    METRICS = True

    def setUp(self):
        super().setUp()
        self.t_keys = time.time()

    # -- fixtures --
    def start_relay(self):
        """Relay with listener 0 outbound -> smarthost and listener 1 inbound -> MX; returns
        (relay, smarthost, mx) and sets self.metrics_port."""
        smarthost, mx = self.upstream(), self.upstream()
        r = self.relay([{"role": "outbound", "upstream": smarthost.port},
                        {"role": "inbound", "upstream": mx.port}], verify_domains=["example.com"])
        return r, smarthost, mx

    def http(self, path, method="GET"):
        """(status, headers, body text) of one request to the metrics listener."""
        req = urllib.request.Request("http://%s:%d%s" % (HOST, self.metrics_port, path),
                                     method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read().decode("utf-8")
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers, e.read().decode("utf-8", errors="replace")

    def scrape(self):
        status, headers, body = self.http("/metrics")
        self.assertEqual(status, 200, body[:500])
        self.assertTrue(headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"),
                        headers.get("Content-Type"))
        return Exposition(body)

    def scrape_when(self, predicate, timeout=5.0):
        """Scrape until predicate(exposition) holds (counters are updated right around the log
        lines the test waits for); returns the last scrape either way."""
        last = [None]

        def ok():
            last[0] = self.scrape()
            return predicate(last[0])
        wait_until(ok, timeout, 0.1)
        return last[0]

    # -- assertions --
    def assertFamily(self, exp, name, expected, label_sets):
        """Every series of `name` over the cartesian label sets must exist, equal to `expected`
        (dict keyed by label tuples in label_sets' key order) or 0 when not listed; no other
        series of that name may exist."""
        keys = list(label_sets.keys())
        want = {}

        def walk(i, acc):
            if i == len(keys):
                want[tuple(acc)] = expected.get(tuple(acc), 0)
                return
            for v in label_sets[keys[i]]:
                walk(i + 1, acc + [v])
        walk(0, [])
        unknown = [k for k in expected if k not in want]
        self.assertFalse(unknown, "test bug: expected series outside the label sets: %r" % unknown)
        got = exp.family(name)
        wrong = []
        for combo, value in want.items():
            lab = frozenset(zip(keys, combo))
            if lab not in got:
                wrong.append("missing %s%s" % (name, dict(zip(keys, combo))))
            elif got[lab] != value:
                wrong.append("%s%s = %s, want %s" % (name, dict(zip(keys, combo)), got[lab], value))
        extra = [dict(lab) for lab in got if tuple(dict(lab).get(k) for k in keys) not in want
                 or len(lab) != len(keys)]
        if extra:
            wrong.append("unexpected %s series: %r" % (name, extra))
        self.assertFalse(wrong, "\n".join(wrong))

    # -- traffic --
    def send_outbound(self, relay, sender, rcpt):
        with smtplib.SMTP(HOST, relay.port(0), local_hostname="client.test", timeout=10) as s:
            refused = s.sendmail(sender, [rcpt], BODY)
            self.assertEqual(refused, {})

    def send_bounce(self, relay, rcpt):
        with smtplib.SMTP(HOST, relay.port(1), local_hostname="mx.remote.test", timeout=10) as s:
            refused = s.sendmail("", [rcpt], NDR)
            self.assertEqual(refused, {})

    def send_forged_bounce(self, relay, rcpt):
        """MAIL FROM:<>, one RCPT refused with 550, QUIT: no DATA."""
        with SmtpClient(relay.port(1)) as c:
            self.assertEqual(c.read_reply().code, 220)
            self.assertEqual(c.cmd("EHLO mx.remote.test").code, 250)
            self.assertEqual(c.cmd("MAIL FROM:<>").code, 250)
            r = c.cmd("RCPT TO:<%s>" % rcpt)
            self.assertEqual(r.code, 550, r)
            self.assertIn("address not tagged", r.text)
            self.assertEqual(c.cmd("QUIT").code, 221)
            self.assertTrue(c.wait_closed(5))

    # =========================================================================================
    def test_counters_match_the_traffic(self):
        r, smarthost, mx = self.start_relay()
        before = self.scrape()
        self.assertEqual(before.get("batv_sessions_total", role="outbound"), 0)
        self.assertEqual(before.get("batv_added_latency_seconds_count"), 0)

        self.send_outbound(r, HOMER, BART)   # signed, key 3
        self.send_outbound(r, MARGE, LISA)   # signed, key 3
        self.send_outbound(r, BART, LISA)    # not_our_domain
        self.assertEqual(len(smarthost.wait_transactions(3)), 3)
        self.send_bounce(r, expected_tag(HOMER))  # a real bounce: valid tag, stripped
        self.assertEqual(len(mx.wait_transactions(1)), 1)
        self.send_forged_bounce(r, HOMER)         # backscatter: untagged, refused at RCPT

        ends = r.wait_logs(lambda x: x.get("event") == "session_end", 5, timeout=10)
        self.assertEqual(len(ends), 5, [e["_raw"] for e in ends])
        self.assertEqual({e.get("reason") for e in ends}, {"quit"})
        exp = self.scrape_when(lambda e: e.has("batv_sessions_current", role="inbound")
                               and e.get("batv_sessions_current", role="outbound") == 0
                               and e.get("batv_sessions_current", role="inbound") == 0
                               and e.get("batv_added_latency_seconds_count") >= 4)

        # Types of the families (HELP present for each is checked by the parser).
        for fam, typ in (("batv_sessions_current", "gauge"), ("batv_sessions_total", "counter"),
                         ("batv_session_end_total", "counter"), ("batv_messages_total", "counter"),
                         ("batv_recipients_total", "counter"), ("batv_signing_total", "counter"),
                         ("batv_verify_total", "counter"), ("batv_upstream_errors_total", "counter"),
                         ("batv_bytes_total", "counter"), ("batv_added_latency_seconds", "histogram"),
                         ("batv_reloads_total", "counter"), ("batv_active_key_id", "gauge"),
                         ("batv_key_age_seconds", "gauge")):
            self.assertEqual(exp.types.get(fam), typ, fam)

        self.assertFamily(exp, "batv_sessions_total", {("outbound",): 3, ("inbound",): 2},
                          {"role": ROLES})
        self.assertFamily(exp, "batv_sessions_current", {}, {"role": ROLES})
        self.assertFamily(exp, "batv_session_end_total",
                          {("outbound", "quit"): 3, ("inbound", "quit"): 2},
                          {"role": ROLES, "reason": REASONS})
        self.assertFamily(exp, "batv_messages_total",
                          {("outbound", "accepted"): 3, ("inbound", "accepted"): 1},
                          {"role": ROLES, "outcome": ("accepted", "rejected")})
        self.assertFamily(exp, "batv_recipients_total",
                          {("outbound", "relayed"): 3, ("inbound", "accepted"): 1,
                           ("inbound", "refused"): 1},
                          {"role": ROLES, "action": ACTIONS})
        signing = exp.family("batv_signing_total")
        self.assertEqual(signing.get(frozenset({("decision", "signed"), ("key", "3")})), 2,
                         exp.text)
        for lab, v in signing.items():
            d = dict(lab)
            if d["decision"] == "signed":
                self.assertEqual(set(d), {"decision", "key"})
                self.assertEqual(v, 2 if d["key"] == "3" else 0, d)
            else:
                self.assertEqual(d["decision"], "not_signed", d)
                self.assertEqual(set(d), {"decision", "reason"})
        not_signed = {frozenset({("reason", dict(lab)["reason"])}): v
                      for lab, v in signing.items() if dict(lab)["decision"] == "not_signed"}
        self.assertEqual(not_signed, {frozenset({("reason", x)}): (1 if x == "not_our_domain" else 0)
                                      for x in NOT_SIGNED})
        self.assertFamily(exp, "batv_verify_total",
                          {("example.com", "valid"): 1, ("example.com", "untagged"): 1},
                          {"domain": ("example.com", "other"), "verdict": VERDICTS})
        self.assertFamily(exp, "batv_upstream_errors_total", {}, {"stage": STAGES})
        self.assertFamily(exp, "batv_reloads_total", {}, {"result": ("ok", "failed")})

        # Bytes: the size of every accepted message, as the message log lines report it.
        role_of = {x.get("sid"): x.get("role") for x in r.logs("connect")}
        sizes = {"outbound": 0, "inbound": 0}
        msgs = [m for m in r.logs("message") if m.get("result") == "accepted"]
        self.assertEqual(len(msgs), 4, [m["_raw"] for m in msgs])
        for m in msgs:
            sizes[role_of[m.get("sid")]] += int(m["size"])
        self.assertGreater(sizes["outbound"], 3 * len(BODY) - 1)
        self.assertFamily(exp, "batv_bytes_total",
                          {("outbound",): sizes["outbound"], ("inbound",): sizes["inbound"]},
                          {"role": ROLES})

        # Latency: one observation per message; buckets cumulative, ending at _count.
        count = exp.get("batv_added_latency_seconds_count")
        self.assertEqual(count, 4)
        buckets = [exp.get("batv_added_latency_seconds_bucket", le=b) for b in BUCKETS]
        self.assertEqual(buckets, sorted(buckets), buckets)
        self.assertEqual(buckets[-1], count)
        self.assertEqual(len(exp.family("batv_added_latency_seconds_bucket")), len(BUCKETS))
        total = exp.get("batv_added_latency_seconds_sum")
        self.assertTrue(math.isfinite(total) and 0 <= total < 60, total)

        # Keys: key 3 signs, created when the test imported it.
        self.assertEqual(exp.get("batv_active_key_id", ring="default"), 3)
        ages = exp.family("batv_key_age_seconds")
        self.assertEqual(set(ages), {frozenset({("ring", "default"), ("key", "3")})}, ages)
        age = exp.get("batv_key_age_seconds", ring="default", key="3")
        self.assertGreaterEqual(age, 0)
        self.assertLessEqual(age, time.time() - self.t_keys + 5)

    def test_healthz_and_http_errors(self):
        self.start_relay()
        status, headers, body = self.http("/healthz")
        self.assertEqual((status, body), (200, "ok\n"))
        self.assertEqual(self.http("/nope")[0], 404)
        self.assertEqual(self.http("/metrics", method="POST")[0], 405)
        self.assertEqual(self.http("/metrics", method="DELETE")[0], 405)
        # Scrapes in a row on fresh connections: the listener keeps answering.
        for _ in range(20):
            self.scrape()
        self.assertEqual(self.http("/healthz")[0], 200)

    def test_reloads_and_key_rotation(self):
        r, smarthost, _ = self.start_relay()
        exp = self.scrape()
        self.assertEqual(exp.get("batv_active_key_id", ring="default"), 3)

        def reload_lines(result):
            return [x for x in r.logs("reload") if x.get("result") == result]

        # A good reload after a rotation: the new key signs; both keys have an age.
        new_id = self.keys.rotate()
        self.assertNotEqual(new_id, 3)
        r.send_signal(signal.SIGHUP)
        self.assertIsNotNone(r.wait_log(lambda x: x.get("event") == "reload"
                                        and x.get("signing_key") == str(new_id), 10),
                             "no event=reload with the new signing key")
        exp = self.scrape_when(lambda e: e.has("batv_active_key_id", ring="default")
                               and e.get("batv_active_key_id", ring="default") == new_id)
        self.assertEqual(exp.get("batv_active_key_id", ring="default"), new_id)
        self.assertEqual({dict(k)["key"] for k in exp.family("batv_key_age_seconds")},
                         {"3", str(new_id)})
        self.assertTrue(exp.has("batv_signing_total", decision="signed", key=str(new_id)))
        self.send_outbound(r, HOMER, BART)
        smarthost.wait_transactions(1)
        tagged = smarthost.transactions()[0].sender
        self.assertTrue(tagged.startswith("prvs=%d" % new_id), tagged)

        # A failed reload: counted, and the keys stay as they were.
        self.keys.break_file()
        r.send_signal(signal.SIGHUP)
        self.assertIsNotNone(r.wait_log(lambda x: x.get("event") == "reload"
                                        and x.get("result") == "failed", 10),
                             "no event=reload result=failed")
        exp = self.scrape_when(
            lambda e: e.get("batv_reloads_total", result="failed") == len(reload_lines("failed")))
        # A key file watcher may reload on its own as well: the counters equal the log lines.
        self.assertEqual(exp.get("batv_reloads_total", result="ok"), len(reload_lines("ok")))
        self.assertGreaterEqual(exp.get("batv_reloads_total", result="ok"), 1)
        self.assertEqual(exp.get("batv_reloads_total", result="failed"), len(reload_lines("failed")))
        self.assertGreaterEqual(exp.get("batv_reloads_total", result="failed"), 1)
        self.assertEqual(exp.get("batv_active_key_id", ring="default"), new_id)
        self.assertEqual(exp.get("batv_signing_total", decision="signed", key=str(new_id)), 1)
        self.assertTrue(r.running())


def main():
    harness.run_tests(globals())


if __name__ == "__main__":
    main()
