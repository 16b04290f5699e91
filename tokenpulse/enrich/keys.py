"""Find, for many fields at once, the highest-priority attribute key present.

A span has ~10-20 attributes and the dialect tables list ~80 candidate keys.
Probing every candidate costs ~80 dict lookups per span; instead the span's
keys are intersected with the index in C (``frozenset.intersection(dict)``) and only the
hits (a handful) are ranked. Measured on bench spans: normalize 10 -> ~3 us/span.
"""

from __future__ import annotations


class KeyIndex:
    def __init__(self, fields: dict[str, tuple[str, ...]]):
        self.fields = fields
        self._where: dict[str, list[tuple[str, int]]] = {}
        for field, keys in fields.items():
            for rank, key in enumerate(keys):
                self._where.setdefault(key, []).append((field, rank))
        self.keys = frozenset(self._where)

    def pick(self, attrs: dict) -> dict[str, str]:
        """field -> the value of its best-ranked key present with a non-empty value."""
        best: dict[str, tuple[int, str]] = {}
        where = self._where
        # frozenset.intersection(dict) probes the dict's keys without building a set of them
        # (0.8 us against 2.7 us for ``attrs.keys() & keys`` on a 16-attribute span).
        for key in self.keys.intersection(attrs):
            value = attrs[key]
            if not value:
                continue
            for field, rank in where[key]:
                got = best.get(field)
                if got is None or rank < got[0]:
                    best[field] = (rank, value)
        return {field: value for field, (_, value) in best.items()}
