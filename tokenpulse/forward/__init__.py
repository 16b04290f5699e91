"""Processor mode: stored spans go on, enriched, to OTLP destinations (docs/forwarding.md).

config.py (the ``forward`` setting) -> forwarder.py (queues, retries, metrics) -> transport.py
(gRPC / HTTP senders). The protobuf side, re-encoding the received request with the added
attributes, is tokenpulse/otlp/reencode.py.
"""
