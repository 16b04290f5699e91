"""Enrichment: pure SpanBatch -> SpanBatch steps, applied in order.

The chain is normalize -> price -> attribute (the enrichment issue). Each step
is a plain function of the batch (and its loaded tables) with no I/O, so it is
tested with tables of cases and runs on the receiver's hot path.
"""

from __future__ import annotations

from typing import Callable, Sequence

from tokenpulse.record import SpanBatch

Step = Callable[[SpanBatch], SpanBatch]


def chain(steps: Sequence[Step]) -> Step:
    """Compose steps into one; with no steps, the batch passes unchanged."""
    steps = tuple(steps)

    def run(batch: SpanBatch) -> SpanBatch:
        for step in steps:
            batch = step(batch)
        return batch

    return run


def default_pipeline() -> Step:
    return chain(())
