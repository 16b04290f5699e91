"""The service's ``/runbooks`` page: for each loaded rule, what it means and what to do first.

Built-in rules link here (``runbook: /runbooks#NAME``, rules.py), so every message carries a
runbook without a wiki. The page is written from the rules themselves, as loaded with the
operator's overrides: the description, the thresholds in force, the timings, the action, and the
steps every spend incident starts with. A rule of your own can point elsewhere with ``-- runbook:``.
"""

from __future__ import annotations

import html
from typing import Iterable

from tokenpulse.alerts.rules import Rule

# What to do first, the same for every spend incident (each rule's description says what is specific).
FIRST_STEPS = (
    "Open the runs behind the alert (the message's 'runs behind it' link): the costliest runs of the "
    "tenant, feature, session or model it names, then a run's spans.",
    "Is it one run (a loop, a prompt that keeps growing) or many (a traffic rise, a retry storm)? "
    "The session and tool columns of the spans tell.",
    "If a tenant must be stopped now: <code>tokenpulse throttle set TENANT --for 30m --reason ...</code> "
    "(agent services using ThrottleGuard pause it); <code>tokenpulse throttle clear TENANT</code> releases it.",
    "If the rule is too eager for you: override its params or timings under <code>alert_rules</code>, or "
    "silence what it explains with <code>alert_inhibit</code>.",
)


def render(rules: Iterable[Rule]) -> str:
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>tokenpulse runbooks</title>",
             "<style>body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
             "section{border-top:1px solid #ddd;padding:.5rem 0}code{background:#f4f4f4;padding:0 .2rem}"
             "th{text-align:left;padding-right:1rem}</style>",
             "<h1>tokenpulse runbooks</h1><p>One section per alert rule loaded now, with the settings in force.</p>",
             "<h2>First steps, for any alert</h2><ol>"
             + "".join(f"<li>{step}</li>" for step in FIRST_STEPS) + "</ol>"]
    for r in sorted(rules, key=lambda r: r.name):
        params = "".join(f"<tr><th><code>{e(p.name)}</code></th><td>{e(str(r.values.get(p.name)))}</td>"
                         f"<td>{e(p.doc)}</td></tr>" for p in r.params)
        action = "<p><b>Action:</b> throttles the tenant (see <code>tokenpulse throttle</code>).</p>" \
            if r.action == "throttle" else ""
        parts.append(
            f"<section id='{e(r.name)}'><h2>{e(r.name)}</h2>"
            f"<p><b>{e(r.severity)}</b> · every {r.interval_s} s · fires after {r.for_s} s · "
            f"resolves {r.keep_firing_for_s} s after its condition ends · <code>{e(r.path)}</code></p>"
            f"<p><b>Message:</b> {e(r.summary)}</p>"
            f"<p>{e(r.description) if r.description else ''}</p>{action}"
            + (f"<table>{params}</table>" if params else "") + "</section>")
    return "\n".join(parts)
