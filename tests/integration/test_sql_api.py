"""/api/sql is read-only and cannot disturb anything else: each statement tried against the real
engine through the running service's admin API."""

from __future__ import annotations

import os
import threading

import pytest
import requests



def sql_api(svc, query: str, fmt: str = "json"):
    return requests.post(f"http://127.0.0.1:{svc.admin.port}/api/sql", params={"format": fmt}, data=query,
                         timeout=60)


@pytest.fixture
def svc(make_service):
    return make_service()


@pytest.mark.parametrize("clause", ["TRUNCATE", "APPEND", ""])
def test_into_outfile_is_refused_and_writes_nothing(svc, tmp_path, clause):
    target = tmp_path / "f"
    r = sql_api(svc, f"SELECT 'x' INTO OUTFILE '{target}' {clause} FORMAT TSVRaw")
    assert r.status_code == 400 and "INTO OUTFILE is not allowed" in r.json()["error"]
    assert not target.exists()


@pytest.mark.parametrize("statement", [
    "KILL QUERY WHERE 1 SYNC",
    "SYSTEM STOP MERGES",
    "SELECT 1; SYSTEM STOP MERGES",
    "/* hidden */ KILL QUERY WHERE query LIKE '%INSERT%'",
    "INSERT INTO spans (trace_id) VALUES ('x')",
    "SET readonly = 0",
])
def test_statements_that_control_the_server_are_refused(svc, statement):
    r = sql_api(svc, statement)
    assert r.status_code == 400 and r.json()["error"].startswith("refused:"), r.text


def test_words_inside_literals_comments_and_names_are_not_statements(svc):
    r = sql_api(svc, "SELECT 'kill; system' AS `system`, 'INTO OUTFILE' AS x -- KILL QUERY\n;")
    assert r.status_code == 200, r.text
    assert r.json()["data"] == [["kill; system", "INTO OUTFILE"]]
    assert sql_api(svc, "WITH 1 AS a SELECT a").json()["data"] == [[1]]
    assert sql_api(svc, "SHOW TABLES").status_code == 200
    assert sql_api(svc, "SELECT 'unterminated").status_code == 400


def test_a_failed_query_leaves_nothing_for_the_next(svc):
    r = sql_api(svc, "SELECT number FROM numbers(2000000)")  # over max_result_rows (1M)
    assert r.status_code == 400 and "TOO_MANY_ROWS" in r.text
    r = sql_api(svc, "SELECT 1 AS x")
    assert r.json()["data"] == [[1]] and r.json()["meta"][0]["name"] == "x"
    # the service's own reader too (panels, rules, the spool's checks)
    from tokenpulse.errors import StorageError

    with pytest.raises(StorageError):
        svc.backend.query("SELECT number FROM numbers(2000000)", "TSV", readonly=True)
    assert svc.backend.query("SELECT 7 AS y", "TSV", readonly=True).strip() == b"7"


def test_a_long_user_query_holds_neither_panels_nor_the_next_user_for_long(svc):
    done = threading.Event()
    answers = []

    svc.admin.user_query_wait_s = 1.0  # the line's patience (5 s in service), short for the test

    def long_query():
        answers.append(sql_api(svc, "SELECT sleep(3)"))  # ClickHouse's longest single sleep
        done.set()

    t = threading.Thread(target=long_query)
    t.start()
    try:
        running = "SELECT count() FROM system.processes WHERE query LIKE '%sleep(3)%' " \
                  "AND query NOT LIKE '%system.processes%'"
        while not int(svc.backend.query(running, "TSV", readonly=True)):  # the service's reader, not the users'
            assert not done.is_set(), answers
        # The service's reads (a panel) are not behind the user's query.
        r = requests.get(f"http://127.0.0.1:{svc.admin.port}/api/panels/price_coverage", params={"since": "1h"},
                         timeout=30)
        assert r.status_code == 200 and not done.is_set()
        # A second user query waits its turn, then is told to retry (bounded concurrency).
        busy = sql_api(svc, "SELECT 1")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1" and not done.is_set()
    finally:
        t.join(60)
    assert answers[0].status_code == 200, answers[0].text
    assert sql_api(svc, "SELECT 2").json()["data"] == [[2]]


def test_readonly_still_holds_for_what_passes_the_check(svc, database):
    r = sql_api(svc, f"SELECT * FROM file('{os.path.abspath(__file__)}', 'LineAsString')")
    assert r.status_code == 400 and "readonly" in r.text.lower()
