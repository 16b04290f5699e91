"""Coverage-guided fuzz targets (atheris / libFuzzer) for the OTLP decoders and enrichment.

    python tests/fuzz/atheris_targets.py protobuf -runs=5000 -max_len=4096
    python tests/fuzz/atheris_targets.py json -runs=5000

A finding is an exception other than InvalidRequest, or an inconsistent batch;
libFuzzer then exits non-zero and writes the crashing input. The test suite runs
each target for a bounded number of runs (tests/unit/test_decode_fuzz.py).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from tokenpulse.enrich import Pipeline
    from tokenpulse.enrich.attribute import Attributor
    from tokenpulse.errors import InvalidRequest
    from tokenpulse.otlp.decode import decode_json, decode_protobuf
    from tokenpulse.receiver.limits import Limits, apply_limits
    from tokenpulse.record import FIELD_NAMES

PIPELINE = Pipeline(attributor=Attributor(user_id_mode="pseudonymize", user_id_key=b"k" * 16))


def _target(decoder):
    def run(data: bytes) -> None:
        try:
            d = decoder(data)
        except InvalidRequest:
            return
        if len(d.batch):
            apply_limits(d, Limits())
            PIPELINE(d.batch)
        n = len(d.batch)
        assert all(len(getattr(d.batch, f)) == n for f in FIELD_NAMES)

    return run


if __name__ == "__main__":
    which = sys.argv.pop(1)
    atheris.Setup(sys.argv, _target(decode_protobuf if which == "protobuf" else decode_json))
    atheris.Fuzz()
