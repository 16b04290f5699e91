"""Rule files: header parsing, errors with file:line, config overrides, templates."""

from __future__ import annotations

import pytest

from tokenpulse.alerts.rules import RuleError, apply_overrides, load_rules, parse_rule, render

GOOD = """\
-- summary: Tenant $tenant at $value tokens/min (threshold $factor x)
-- description: Longer text.
-- interval: 5s
-- for: 1m
-- keep_firing_for: 30s
-- repeat_interval: 2h
-- severity: critical
-- labels: team=platform, page=yes
-- channels: pager, chat
-- extra: ratio
-- action: throttle
-- param: factor Float64 10 Times the median
-- param: window UInt32 15m Window
-- param: thresholds String "50,80,100" Percent thresholds
SELECT tenant, 1 AS value, 2 AS ratio
FROM usage_minute
WHERE x > {factor:Float64} AND minute > {now:DateTime64(3, 'UTC')} - {window:UInt32} AND y = {thresholds:String}
"""

BUILTINS = ("run_size_rate", "token_rate_anomaly", "token_rate_anomaly_by_role", "tenant_spike", "tenant_outlier", "user_surge", "budget_forecast",
            "budget", "agent_loop", "context_bloat", "io_ratio_drift", "unpriced_model", "unattributed_share")


def test_parse_good_rule():
    r = parse_rule("my/tenant_spike.sql", GOOD)
    assert (r.name, r.interval_s, r.for_s, r.keep_firing_for_s, r.repeat_interval_s) == ("tenant_spike", 5, 60, 30, 7200)
    assert r.severity == "critical" and r.labels == {"team": "platform", "page": "yes"}
    assert r.channels == ("pager", "chat") and r.extra == ("ratio",) and r.action == "throttle"
    assert r.values == {"factor": 10.0, "window": 900, "thresholds": "50,80,100"}
    assert r.sql_line == 15 and r.sql.startswith("SELECT tenant")
    assert r.query_params(0)["now"] == "1970-01-01 00:00:00.000"


@pytest.mark.parametrize("change,line,message", [
    (("-- interval: 5s", "-- interval: soon"), 3, "interval: 'soon' is not a duration"),
    (("-- severity: critical", "-- severity: loud"), 7, "severity 'loud'"),
    (("-- labels: team=platform, page=yes", "-- labels: team"), 8, "labels must be"),
    (("-- action: throttle", "-- action: reboot"), 11, "action 'reboot'"),
    (("-- param: factor Float64 10", "-- param: factor Decimal 10"), 12, "param must be"),
    (("-- param: factor Float64 10", "-- param: factor Float64 ten"), 12, "not a valid Float64"),
    (("-- extra: ratio", "-- colour: red"), 10, "unknown header 'colour'"),
    (("-- for: 1m", "-- interval: 9s"), 4, "given twice"),
    (("{factor:Float64}", "{factr:Float64}"), 15, "undeclared parameters ['factr']"),
])
def test_bad_rules_name_file_and_line(change, line, message):
    text = GOOD.replace(*change)
    with pytest.raises(RuleError) as e:
        parse_rule("rules/x.sql", text)
    assert e.value.where == f"rules/x.sql:{line}"
    assert message in str(e.value)


def test_no_summary_and_no_query():
    with pytest.raises(RuleError, match="no '-- summary:' header"):
        parse_rule("r.sql", "-- interval: 5s\nSELECT 1 AS value")
    with pytest.raises(RuleError, match="no query"):
        parse_rule("r.sql", "-- summary: x\n")


def test_builtins_load_without_errors():
    rules, errors = load_rules()
    assert errors == []
    assert set(rules) == set(BUILTINS)
    assert rules["tenant_outlier"].action == "throttle" and rules["budget"].action == "throttle"
    assert rules["budget"].repeat_interval_s == 0  # each threshold once per period
    assert all(r.interval_s == 5 for n, r in rules.items()
               if n in ("run_size_rate", "token_rate_anomaly", "token_rate_anomaly_by_role", "tenant_outlier"))


def test_user_dir_adds_and_replaces_and_a_bad_file_does_not_stop_the_others(tmp_path):
    (tmp_path / "mine.sql").write_text(GOOD)
    (tmp_path / "broken.sql").write_text("-- summary: x\n-- for: forever\nSELECT 1 AS value")
    (tmp_path / "tenant_outlier.sql").write_text("-- summary: replaced\n-- interval: 1m\nSELECT 1 AS value")
    (tmp_path / "notes.txt").write_text("not a rule")
    rules, errors = load_rules(str(tmp_path))
    assert "mine" in rules and rules["tenant_outlier"].summary == "replaced"
    assert [e.where for e in errors] == [f"{tmp_path}/broken.sql:2"]
    assert set(BUILTINS) <= set(rules)


def test_overrides_change_thresholds_and_timings_or_disable():
    rules, errors = load_rules(overrides={
        "tenant_outlier": {"factor": 5, "for": "30s", "channels": "pager", "severity": "error"},
        "user_surge": {"enabled": False},
        "nope": {"factor": 1},
        "budget": {"thresholds": "90,100", "labels": {"team": "finance"}},
    })
    t = rules["tenant_outlier"]
    assert t.values["factor"] == 5.0 and t.for_s == 30 and t.channels == ("pager",) and t.severity == "error"
    assert "user_surge" not in rules
    assert rules["budget"].values["thresholds"] == "90,100" and rules["budget"].labels == {"team": "finance"}
    assert [str(e) for e in errors] == ["alert_rules: override for unknown rule 'nope'"]


def test_override_with_unknown_param_is_an_error_naming_the_params():
    rule = parse_rule("x.sql", GOOD)
    with pytest.raises(RuleError, match="has no parameter 'facto' \\(it takes: factor, window, thresholds\\)"):
        apply_overrides(rule, {"facto": 3}, "alert_rules.x")


def test_render_formats_numbers_and_leaves_unknown_names():
    assert render("$tenant: $value ($ratio x) $missing", {"tenant": "acme"}, {"ratio": 12.345}, 1234567) == \
        "acme: 1,234,567 (12.35 x) $missing"
    assert render("$value", {}, {}, 0.00012) == "0.00012"
