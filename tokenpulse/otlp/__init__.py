"""The OTLP codec: request bytes -> SpanBatch (decode.py, with its span walk in C, _otlpwalk.c),
enriched spans -> OTLP again (reencode.py), and the export response helpers. Used by the
receivers and by forwarding; protobuf and OTLP/JSON never leave this package and the receivers."""
