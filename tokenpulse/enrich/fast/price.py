"""Price: ``enrich/price.py``'s price step, per price key instead of per span.

The reference looks up each counted call's price (memoized per provider, model, host, tier and
minute) and calls ``billing_context``, ``prices_at`` and ``cost_parts`` for it. Here the calls of
a request are grouped by that key first, a key's entry is found once, and the costs come from the
reference's own ``prices_at`` and ``cost_parts`` (an inlined copy of the arithmetic measured no
faster). ``billing_context`` runs only for spans whose attribute shape has one of its keys (a span
without any of them has no tier and no 1-hour cache writes).
"""

from __future__ import annotations

from typing import Callable

from tokenpulse.enrich.price import (ONE_HOUR_KEYS, RAW_RESPONSE_KEYS, TIER_KEYS, PriceLookups, PriceTable,
                                     billing_context, cost_parts, prices_at)
from tokenpulse.record import SpanBatch

_BILLING_KEYS = frozenset(TIER_KEYS + ONE_HOUR_KEYS + RAW_RESPONSE_KEYS)
_NO_USAGE = ("none", "missing")
_PRICED = ("ok", "inconsistent")
MAX_SHAPES = 4096


def make_price_step(table: PriceTable, on_unknown: Callable[[str], None] = lambda model: None):
    """``price(batch, shapes=None)``: the reference step's columns, as the reference fills them."""
    lookup = PriceLookups(table)
    billed_shapes: dict[tuple[str, ...], bool] = {}  # shape -> it has a tier or 1-hour cache key

    last = [None, False]  # the previous span's shape object and its answer: no hashing

    def has_billing(shape: tuple[str, ...]) -> bool:
        if shape is last[0]:
            return last[1]
        got = billed_shapes.get(shape)
        if got is None:
            if len(billed_shapes) >= MAX_SHAPES:
                billed_shapes.clear()
            got = billed_shapes[shape] = not _BILLING_KEYS.isdisjoint(shape)
        last[0], last[1] = shape, got
        return got

    def price(batch: SpanBatch, shapes: list[tuple[str, ...]] | None = None) -> SpanBatch:
        usage_status, counted, models, providers = batch.usage_status, batch.counted, batch.model, batch.provider
        attributes, starts, price_status = batch.attributes, batch.start_time_ns, batch.price_status
        cw_col = batch.cache_write_tokens
        groups: dict[tuple, list[int]] = {}
        for i, (status, c, model) in enumerate(zip(usage_status, counted, models)):
            if not c:
                price_status[i] = "not_counted" if status not in _NO_USAGE else ""
                continue
            if status in _NO_USAGE:
                price_status[i] = "no_usage" if status == "missing" else ""
                continue
            if status not in _PRICED:
                price_status[i] = "invalid_usage"
                continue
            if not model:
                price_status[i] = "no_model"
                continue
            attrs = attributes[i]
            tier = ""
            if shapes is None or has_billing(shapes[i]):
                tier, one_hour = billing_context(attrs, cw_col[i])
                if tier:
                    batch.service_tier[i] = tier
                if one_hour:
                    cw = cw_col[i]
                    batch.cache_write_1h_tokens[i] = one_hour if one_hour < cw else cw
            # Per minute: genai-prices has time-of-day prices (off-peak rates) besides dated ones.
            key = (providers[i], model, attrs.get("server.address", ""), tier, starts[i] // 60_000_000_000)
            rows = groups.get(key)
            if rows is None:
                groups[key] = [i]
            else:
                rows.append(i)
        for key, rows in groups.items():
            got = lookup(key, starts[rows[0]])
            if got is None:
                for i in rows:
                    price_status[i] = "unknown_model"
                    on_unknown(key[1])
                continue
            _cost(batch, rows, *got)
        return batch

    return price


def _cost(batch: SpanBatch, rows: list[int], entry, status: str) -> None:
    """The six cost components and their sum for ``rows``, all priced by ``entry``."""
    inp, out, cr, cw, rs, cw1h = (batch.input_tokens, batch.output_tokens, batch.cache_read_tokens,
                                  batch.cache_write_tokens, batch.reasoning_tokens, batch.cache_write_1h_tokens)
    parts = [cost_parts(prices_at(entry, inp[i]), entry.per_request, inp[i], out[i], cr[i], cw[i], rs[i], cw1h[i])
             for i in rows]
    ic, crc, cwc, oc, rc, qc = (batch.input_cost_usd, batch.cache_read_cost_usd, batch.cache_write_cost_usd,
                                batch.output_cost_usd, batch.reasoning_cost_usd, batch.request_cost_usd)
    total, price_status, price_id = batch.cost_usd, batch.price_status, batch.price_id
    for i, p in zip(rows, parts):
        ic[i], crc[i], cwc[i], oc[i], rc[i], qc[i] = p
        total[i] = p[0] + p[1] + p[2] + p[3] + p[4] + p[5]
        price_status[i] = status
        price_id[i] = entry.id
