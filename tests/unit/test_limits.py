"""Request limits: excess spans refused, extra attributes dropped (GenAI keys kept), long values cut."""

from __future__ import annotations

from tests.otlp import request, span
from tokenpulse.otlp.decode import decode_protobuf
from tokenpulse.receiver.limits import Limits, apply_limits


def decoded(n_spans=1, attrs=None, resource=None):
    return decode_protobuf(request([span(attrs=attrs) for _ in range(n_spans)], resource=resource)
                           .SerializeToString())


def test_spans_over_the_limit_are_refused_and_counted():
    d = decoded(5)
    assert apply_limits(d, Limits(max_spans=3)) == {"dropped": 0, "truncated": 0}
    assert len(d.batch) == 3 and d.rejected == 2 and d.reasons == {"too_many_spans": 2}
    assert "more than 3 spans" in d.error_message


def test_extra_attributes_dropped_keeping_what_enrichment_reads():
    attrs = {f"custom.{i:03d}": "x" for i in range(20)}
    attrs.update({"gen_ai.usage.input_tokens": 5, "tenant.id": "acme"})
    d = decoded(2, attrs=attrs, resource={f"r{i}": "y" for i in range(10)})
    counts = apply_limits(d, Limits(max_attributes=5))
    a = d.batch.attributes[0]
    assert len(a) == 5 and a["gen_ai.usage.input_tokens"] == "5" and a["tenant.id"] == "acme"
    assert len(d.batch.resource_attributes[0]) == 5
    assert d.batch.resource_attributes[0] is d.batch.resource_attributes[1]  # still shared
    # 2 spans x 17 extra attributes + the resource (counted once): 6 extra
    assert counts == {"dropped": 2 * 17 + 6, "truncated": 0}


def test_long_values_are_cut_and_counted():
    d = decoded(1, attrs={"gen_ai.input.messages": "m" * 1000, "short": "ok"})
    assert apply_limits(d, Limits(max_value_chars=100)) == {"dropped": 0, "truncated": 1}
    assert d.batch.attributes[0] == {"gen_ai.input.messages": "m" * 100, "short": "ok"}


def test_within_limits_nothing_changes():
    d = decoded(3, attrs={"a": "b"})
    before = [dict(x) for x in d.batch.attributes]
    assert apply_limits(d, Limits()) == {"dropped": 0, "truncated": 0}
    assert d.batch.attributes == before and d.rejected == 0


from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.unit.test_decode_fast import _requests  # noqa: E402


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
def test_the_c_walk_measures_what_the_limits_check(req):
    """The C walk's (most attributes, longest value) is never below what the batch holds, so a
    request it says is within the limits is: apply_limits then skips its per-span look."""
    d = decode_protobuf(req.SerializeToString())
    assert d.widest is not None
    dicts = d.batch.attributes + d.batch.resource_attributes
    assert d.widest[0] >= max(map(len, dicts), default=0)
    assert d.widest[1] >= max((len(v) for x in dicts for v in x.values()), default=0)


def test_a_request_measured_within_the_limits_is_left_as_it_is_and_one_over_is_cut():
    d = decoded(3, attrs={"a": "x" * 10, "b": "y"}, resource={"r": "z" * 4})
    assert d.widest == (2, 10)  # two attributes on the span and on the resource; the longest value: a's
    assert apply_limits(d, Limits(max_attributes=2, max_value_chars=10)) == {"dropped": 0, "truncated": 0}
    assert apply_limits(d, Limits(max_attributes=3, max_value_chars=9)) == {"dropped": 0, "truncated": 3}
    assert d.batch.attributes[0]["a"] == "x" * 9
