"""A statement's own FORMAT clause, found outside literals and comments."""

from __future__ import annotations

import pytest

from tokenpulse.queries.user_sql import content_type, output_format


@pytest.mark.parametrize("sql, fmt", [
    ("SELECT 1 FORMAT JSONEachRow", "JSONEachRow"),
    ("select 1 format csv;", "csv"),
    ("SELECT 1 FORMAT Pretty ;  ", "Pretty"),
    ("SELECT 'x FORMAT CSV'", None),
    ("SELECT 1 -- FORMAT CSV", None),
    ("SELECT format FROM t", None),
    ("SELECT formatReadableSize(1)", None),
    ("SELECT 1 FORMAT Pretty -- the pretty one", "Pretty"),
    ("SELECT 'FORMAT TSV' AS a FORMAT CSV", "CSV"),
])
def test_output_format(sql, fmt):
    assert output_format(sql) == fmt


def test_content_types():
    assert content_type("JSONEachRow") == "application/x-ndjson"
    assert content_type("JSON") == "application/json"
    assert content_type("CSVWithNames").startswith("text/csv")
    assert content_type("TSV").startswith("text/tab-separated-values")
    assert content_type("Pretty").startswith("text/plain")
