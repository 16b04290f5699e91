"""KeyIndex.pick plans once per shape of span; its answers must equal the direct algorithm's."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenpulse.enrich import keys as keys_mod
from tokenpulse.enrich.attribute import Attributor
from tokenpulse.enrich.keys import KeyIndex
from tokenpulse.enrich.normalize import INDEX

ATTRIBUTION = Attributor(user_id_key=b"k" * 32)._index
# Candidate keys of both indexes (several fields share some), and keys neither knows.
UNIVERSE = sorted(INDEX.keys | ATTRIBUTION.keys) + ["http.method", "x.other", "gen_ai.unknown"]
VALUES = st.sampled_from(["", "0", "12", "gpt-4o", "anthropic", "acme", " ", "1e3"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(UNIVERSE), VALUES, max_size=20), min_size=1, max_size=8))
def test_planned_pick_equals_the_direct_algorithm(spans):
    for index in (INDEX, ATTRIBUTION):
        for attrs in spans + spans:  # the second pass reuses the plans made by the first
            assert index.pick(attrs) == index.pick_unplanned(attrs), attrs


def test_same_shape_other_values_and_empty_best_key():
    index = KeyIndex({"model": ("gen_ai.response.model", "gen_ai.request.model")})
    a = {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o-2024-08-06"}
    b = {"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": ""}  # same shape: the plan is reused
    assert index.pick(a) == {"model": "gpt-4o-2024-08-06"}
    assert index.pick(b) == {"model": "gpt-4o"}  # an empty best key falls to the next one present
    assert index.pick({"gen_ai.response.model": ""}) == {}


def test_plans_are_bounded(monkeypatch):
    monkeypatch.setattr(keys_mod, "MAX_PLANS", 3)
    index = KeyIndex({"tenant": ("tenant.id", "tenant")})
    for i in range(10):
        attrs = {f"k{i}": "x", "tenant": f"t{i}"}
        assert index.pick(attrs) == {"tenant": f"t{i}"}
        assert len(index._plans) <= 3


def test_a_shape_with_one_key_per_field_reads_them_at_once_and_still_skips_empty_values():
    index = KeyIndex({"tenant": ("tenant.id", "tenant"), "feature": ("app.feature",), "user": ("user.id",)})
    full = {"tenant.id": "acme", "x": "1", "app.feature": "chat"}
    assert index.pick(full) == {"tenant": "acme", "feature": "chat"}
    assert index._plans[tuple(full)][1] is not None  # the direct read was planned for this shape
    assert index.pick({"tenant.id": "", "x": "1", "app.feature": "chat"}) == {"feature": "chat"}
    assert index.pick({"tenant.id": "acme", "x": "1", "app.feature": ""}) == {"tenant": "acme"}
    two_keys = {"tenant.id": "", "tenant": "beta", "app.feature": "chat"}
    assert index.pick(two_keys) == {"tenant": "beta", "feature": "chat"} == index.pick_unplanned(two_keys)
    assert index._plans[tuple(two_keys)][1] is None
