#!/usr/bin/env python3
"""The Grafana dashboard and the Prometheus alerting rules against a real /metrics scrape.

Usage: test_monitoring.py --relay PATH/batv-relay --keys PATH/batv-keys [--source DIR]

Starts a relay (an outbound and an inbound listener in front of scripted next hops, metrics on),
sends a signed message and a bounce through it so that every family has moved, scrapes /metrics,
and checks every PromQL expression of tools/package.d/grafana/batv-relay.json (panels and
template variables) and tools/package.d/prometheus/batv-relay.rules.yml:
  - every metric name used (batv_...) is a series name in the scrape;
  - every label matcher on such a metric names a label the scrape has on that metric, and a
    literal value (label="x", or each alternative of label=~"a|b") is a value the scrape has
    (job and instance are Prometheus's own labels and are skipped).
So a renamed metric, label or label value in the relay breaks this test, not the operator's
dashboard. `promtool check rules` and `promtool test rules` run as ctest monitoring.promtool.
"""
import json
import os
import re
import shutil
import smtplib
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import (HOST, KeyFile, Relay, RelayLogMixin, ScriptedUpstream,  # noqa: E402
                     expected_tag, run_tests, tmpdir, wait_until)

RELAY = KEYS = None
SOURCE = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
DASHBOARD = os.path.join(SOURCE, "tools", "package.d", "grafana", "batv-relay.json")
RULES = os.path.join(SOURCE, "tools", "package.d", "prometheus", "batv-relay.rules.yml")
PROMETHEUS_LABELS = {"job", "instance", "le"}  # added by Prometheus, or the histogram's own

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# A metric name in PromQL, with its optional selector: batv_x{a="b",c=~"d|e"}.
_USE = re.compile(r'\b(batv_[a-zA-Z0-9_]+)(\{[^}]*\})?')
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def parse_scrape(text):
    """{series name: {label: set(values)}} of a text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError("not a sample line: %r" % line)
        labels = out.setdefault(m.group(1), {})
        for k, v in _LABEL.findall(m.group(2) or ""):
            labels.setdefault(k, set()).add(v)
    return out


def dashboard_exprs():
    """(where, PromQL) of every query of the dashboard: panel targets and template variables."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            out.append(("panel %r %s" % (p.get("title"), t.get("refId")), t["expr"]))
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            # label_values(metric{...}, label): the metric and the label it lists.
            out.append(("variable %s" % v["name"], q))
    return dash, out


def rule_exprs():
    """(where, PromQL) of every rule of the rules file, and the alert names. The file is our own
    YAML in one shape (`- alert:` or `- record:`, then `expr:` inline or as a `|` block), read
    without a YAML library (the Python running the tests may have none); promtool's count of the
    rules in the file (when promtool is there) must equal the number found here."""
    with open(RULES) as f:
        lines = f.read().splitlines()
    out, names, current = [], [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*- (alert|record): (\S+)\s*$", line)
        if m:
            current = m.group(2)
            names.append(current)
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if m:
            indent, value = len(m.group(1)), m.group(2).strip()
            if value in ("|", ">", "|-", ">-"):
                block = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    block.append(lines[i].strip())
                    i += 1
                value = " ".join(b for b in block if b)
                i -= 1
            out.append(("rule %s" % current, value))
        i += 1
    return names, out


def promtool_rule_count():
    tool = shutil.which("promtool")
    if not tool:
        return None
    p = subprocess.run([tool, "check", "rules", RULES], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=60)
    m = re.search(rb"SUCCESS: (\d+) rules found", p.stdout)
    assert m, p.stdout.decode(errors="replace")
    return int(m.group(1))


class MonitoringTest(RelayLogMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tmpdir()
        d = cls._tmp.name
        cls.keys = KeyFile(KEYS, os.path.join(d, "keys.toml"))
        cls.smarthost, cls.mx = ScriptedUpstream(), ScriptedUpstream()
        cls.relay = Relay(RELAY, d, cls.keys,
                          listeners=[{"role": "outbound", "upstream": cls.smarthost.port},
                                     {"role": "inbound", "upstream": cls.mx.port}],
                          verify_domains=["example.com"],
                          extra_toml='[metrics]\nlisten = "127.0.0.1:0"\n')
        try:
            rec = cls.relay.wait_log("metrics_listening", 10)
            assert rec is not None, "no event=metrics_listening log line"
            cls.metrics_port = int(rec["address"].rpartition(":")[2])
            out_port, in_port = cls.relay.port(0), cls.relay.port(1)
            # One signed message out, one bounce to its tag back in: every family moves.
            with smtplib.SMTP(HOST, out_port, timeout=10) as s:
                s.sendmail("homer@example.com", ["bart@elsewhere.org"],
                           b"Subject: monitoring\r\n\r\nhello\r\n")
            tagged = expected_tag("homer@example.com")
            with smtplib.SMTP(HOST, in_port, timeout=10) as s:
                s.sendmail("", [tagged], b"Subject: bounce\r\n\r\nbounced\r\n")
            cls.scrape = wait_until(cls._scraped_after_traffic, 10)
            assert cls.scrape is not None, "the counters never showed the traffic"
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _scraped_after_traffic(cls):
        text = harness.metrics_text(cls.metrics_port)
        scrape = parse_scrape(text)
        counted = re.search(r'^batv_added_latency_seconds_count (\d+)', text, re.M)
        return scrape if counted and int(counted.group(1)) >= 2 else None

    @classmethod
    def tearDownClass(cls):
        for what in ("relay", "smarthost", "mx"):
            obj = getattr(cls, what, None)
            if obj is not None:
                obj.close()
        cls._tmp.cleanup()

    def check_expr(self, where, expr):
        uses = _USE.findall(expr)
        if where.startswith("rule BatvRelayDown"):
            self.assertIn("up{", expr)
        else:
            self.assertTrue(uses, "%s uses no batv_ metric: %s" % (where, expr))
        for name, selector in uses:
            self.assertIn(name, self.scrape, "%s: %s is not in /metrics (%s)" % (where, name, expr))
            have = self.scrape[name]
            for label, op, value in _MATCHER.findall(selector or ""):
                if label in PROMETHEUS_LABELS:
                    continue
                self.assertIn(label, have, "%s: %s has no label %s" % (where, name, label))
                if op in ("=", "!="):
                    wanted = [value]
                elif re.fullmatch(r"[a-zA-Z0-9_.|]+", value):  # a plain alternation
                    wanted = value.split("|")
                else:
                    wanted = []
                for v in wanted:
                    self.assertIn(v, have[label], "%s: %s{%s} is never %r in /metrics; it has %s"
                                  % (where, name, label, v, sorted(have[label])))
        # label_values(metric, label): the label must exist on the metric.
        m = re.match(r"label_values\((batv_[a-zA-Z0-9_]+)(?:\{[^}]*\})?,\s*([a-zA-Z_]+)\)", expr)
        if m and m.group(2) not in PROMETHEUS_LABELS:
            self.assertIn(m.group(2), self.scrape[m.group(1)], where)

    def test_dashboard(self):
        dash, exprs = dashboard_exprs()
        self.assertNotIn("id", dash, "a provisioned dashboard has no database id")
        self.assertEqual(dash.get("uid"), "batv-relay")
        self.assertGreaterEqual(len(exprs), 15)
        for where, expr in exprs:
            with self.subTest(where=where):
                self.check_expr(where, expr)
        # Every query goes to the data source chosen by the variable, not to a fixed one.
        def datasources(node):
            if isinstance(node, dict):
                if isinstance(node.get("datasource"), dict):
                    yield node["datasource"]
                for v in node.values():
                    yield from datasources(v)
            elif isinstance(node, list):
                for v in node:
                    yield from datasources(v)
        for ds in datasources(dash.get("panels", [])):
            self.assertEqual(ds.get("uid"), "${datasource}", ds)
        # What the issue asks the dashboard to show.
        used = {n for _, e in exprs for n, _ in _USE.findall(e)}
        for family in ("batv_messages_total", "batv_recipients_total", "batv_verify_total",
                       "batv_signing_total", "batv_sessions_current", "batv_upstream_errors_total",
                       "batv_added_latency_seconds_bucket", "batv_reloads_total"):
            self.assertIn(family, used)

    def test_rules(self):
        names, exprs = rule_exprs()
        self.assertGreaterEqual(len(exprs), 6)
        self.assertEqual(len(exprs), len(names), "an expr per rule")
        count = promtool_rule_count()
        if count is not None:
            self.assertEqual(count, len(exprs), "promtool counts another number of rules")
        for where, expr in exprs:
            with self.subTest(where=where):
                self.check_expr(where, expr)
        # What the issue asks alerts for.
        for alert in ("BatvSigningKeyMismatch", "BatvKeyFileStale", "BatvVerifyFailuresRising",
                      "BatvNextHopFailures", "BatvReloadFailed", "BatvSessionsNearLimit"):
            self.assertIn(alert, names)

    def test_the_check_can_fail(self):
        # A misspelt metric, label and label value are each caught.
        for bad in ('rate(batv_message_total[5m])', 'batv_messages_total{outcom="accepted"}',
                    'batv_messages_total{outcome="acepted"}',
                    'batv_verify_total{verdict=~"unknown_key|bad_sig"}'):
            with self.assertRaises(AssertionError, msg=bad):
                self.check_expr("probe", bad)


if __name__ == "__main__":
    run_tests(globals())
