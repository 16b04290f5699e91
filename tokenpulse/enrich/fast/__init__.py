"""The enrichment steps as the service runs them: the same answers as the reference modules, with
the per-span work moved to per-batch, per-shape and per-trace work.

The reference implementations stay where they are (``normalize.py``, ``calls.py``, ``price.py``,
``attribute.py``): each is the specification its fast counterpart here must match, row for row
and column by column. ``tests/unit/test_enrich_fast.py`` runs both pipelines over generated spans of
every dialect and over the whole recorded conformance corpus and compares every column.

Where the two may differ, on purpose and documented in each module: only which entries a bounded
memory forgets first once it is full (the reference forgets per map, the fast steps whole traces).
Under the bounds, nothing differs.

    normalize.py  columns per attribute shape: the key tables resolved once per shape and batch
    calls.py      the duplicate-call memory kept per trace, a call as a tuple; a trace that
                  repeated nothing kept as positions in its request's columns until seen again
    price.py      calls grouped by price key, the cost arithmetic per group
    attribute.py  trace tags and agent roles kept per trace, learned once per trace and batch
"""
