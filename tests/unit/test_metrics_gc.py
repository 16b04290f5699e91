"""tokenpulse_gc_pause_seconds_total: the collector's pauses, per generation, on /metrics."""

from __future__ import annotations

import gc

from prometheus_client.parser import text_string_to_metric_families

from tokenpulse.metrics import Metrics


def _paused(metrics: Metrics) -> dict[str, float]:
    return {s.labels["generation"]: s.value for f in text_string_to_metric_families(metrics.render().decode())
            for s in f.samples if s.name == "tokenpulse_gc_pause_seconds_total"}


def test_a_full_collection_is_counted_in_generation_2():
    m = Metrics()
    before = _paused(m)
    assert set(before) == {"0", "1", "2"}
    junk = [[] for _ in range(200_000)]  # something for the collection to walk
    gc.collect()
    del junk
    after = _paused(m)
    assert after["2"] > before["2"] and after["0"] >= before["0"] and after["1"] >= before["1"]
