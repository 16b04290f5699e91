"""tokenpulse: token and cost observability for LLM agents, on OTLP and ClickHouse."""

__version__ = "0.1.0"
