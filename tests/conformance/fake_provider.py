"""A fake LLM provider: a real local HTTP server speaking the OpenAI and Anthropic wire formats.

It serves what the official ``openai`` and ``anthropic`` Python SDKs ask for, with usage
numbers chosen per call, and logs the exact usage it served (or billed without sending, for a
stream without ``include_usage``). That log is the conformance corpus's ground truth.

Wire formats, in our own words (upstream: the OpenAI API reference for Chat Completions,
Embeddings and Responses, and Anthropic's Messages and streaming-messages docs):

* OpenAI ``usage.prompt_tokens`` *includes* ``prompt_tokens_details.cached_tokens``;
  ``completion_tokens`` includes ``completion_tokens_details.reasoning_tokens``. A chat stream
  sends usage only with ``stream_options.include_usage``, as one last chunk with empty
  ``choices``. The Responses API names them ``input_tokens``/``input_tokens_details.cached_tokens``
  and ``output_tokens``/``output_tokens_details.reasoning_tokens``; its stream ends with a
  ``response.completed`` event carrying the full response and its usage.
* Anthropic ``usage.input_tokens`` *excludes* cache: the prompt is ``input_tokens +
  cache_read_input_tokens + cache_creation_input_tokens``. ``cache_creation`` splits the writes
  by TTL (``ephemeral_5m_input_tokens``, ``ephemeral_1h_input_tokens``). A stream reports
  input and cache counts in ``message_start`` and the final ``output_tokens`` in ``message_delta``.

Each request may carry ``x-conformance-call: <name>``; the usage served is a function of the name.
A framework that makes several calls under one name (an agent loop) gets ``name#1``, ``name#2``...
A request offering tools is answered with a tool call unless its last message is a tool result,
so agent loops end. The embeddings endpoint honours ``encoding_format=base64`` (the openai SDK's
default).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """One call as the provider saw and billed it. Token fields use the provider's own meaning
    (OpenAI: input includes cache; Anthropic: input excludes cache)."""
    call: str
    library: str
    api: str  # openai.chat | openai.embeddings | openai.responses | anthropic.messages
    model: str
    stream: bool
    usage_sent: bool  # False: billed, but the client never saw the numbers
    status: int
    received_ns: int
    finished_ns: int = 0
    usage: dict = field(default_factory=dict)


def _n(name: str, salt: str, lo: int, hi: int) -> int:
    """A deterministic, call-specific count so that sums over calls are meaningful."""
    h = int.from_bytes(hashlib.sha256(f"{name}/{salt}".encode()).digest()[:4], "big")
    return lo + h % (hi - lo)


# Response models per request model (what the real APIs answer: a dated snapshot).
RESPONSE_MODELS = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "o4-mini": "o4-mini-2025-04-16",
    "text-embedding-3-small": "text-embedding-3-small",
    "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
}


def openai_usage(call: str, cached: bool, reasoning: bool) -> dict:
    prompt = _n(call, "in", 200, 4000)
    cached_tokens = (prompt // 128) * 64 if cached else 0
    completion = _n(call, "out", 20, 600)
    reasoning_tokens = _n(call, "reason", 10, completion) if reasoning else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def anthropic_usage(call: str, cache_read: bool, cache_write: bool, one_hour: bool) -> dict:
    inp = _n(call, "in", 20, 900)
    read = _n(call, "cr", 1024, 6000) if cache_read else 0
    write = _n(call, "cw", 1024, 5000) if cache_write else 0
    write_1h = write // 3 if one_hour else 0
    return {"input_tokens": inp, "output_tokens": _n(call, "out", 20, 700),
            "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
            "cache_creation": {"ephemeral_5m_input_tokens": write - write_1h, "ephemeral_1h_input_tokens": write_1h},
            "service_tier": "standard"}


class Provider(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, otlp_sink=None):
        super().__init__(("127.0.0.1", port), _Handler)
        self.log: list[Served] = []
        self.lock = threading.Lock()
        self.seen: dict[str, int] = {}
        self.otlp_sink = otlp_sink  # receives OTLP/HTTP bodies posted to .../v1/traces (Langfuse)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "Provider":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def name_call(self, library: str, call: str) -> str:
        """The call's logged name: a name seen before in this library's run gets ``#n``."""
        with self.lock:
            n = self.seen[(library, call)] = self.seen.get((library, call), 0) + 1
        return call if n == 1 else f"{call}#{n}"

    def record(self, served: Served) -> None:
        with self.lock:
            self.log.append(served)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Provider

    def log_message(self, *args) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

    def _sse(self, data, event: str | None = None) -> None:
        text = (f"event: {event}\n" if event else "") + "data: " + (data if isinstance(data, str) else json.dumps(data))
        self.wfile.write((text + "\n\n").encode())
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        path = self.path.split("?")[0]
        if path.endswith("/v1/traces"):  # OTLP/HTTP export (Langfuse's native exporter)
            if self.server.otlp_sink is not None:
                self.server.otlp_sink.save_http(raw, self.headers.get("content-type", ""),
                                                self.headers.get("content-encoding", ""))
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        body = json.loads(raw or b"{}")
        library = self.headers.get("x-conformance-library", "")
        call = self.server.name_call(library, self.headers.get("x-conformance-call", "unnamed"))
        served = Served(call=call, library=library, api="", model=body.get("model", ""),
                        stream=bool(body.get("stream")), usage_sent=True, status=200, received_ns=time.time_ns())
        try:
            if path.endswith("/chat/completions"):
                served.api = "openai.chat"
                self._chat(body, served)
            elif path.endswith("/embeddings"):
                served.api = "openai.embeddings"
                self._embeddings(body, served)
            elif path.endswith("/responses"):
                served.api = "openai.responses"
                self._responses(body, served)
            elif path.endswith("/messages"):
                served.api = "anthropic.messages"
                self._messages(body, served)
            else:
                served.api = "unknown"
                served.status = 404
                self._json(404, {"error": {"message": f"no route {path}"}})
        finally:
            served.finished_ns = time.time_ns()
            self.server.record(served)

    # ------------------------------------------------------------------ OpenAI
    def _rate_limited(self, served: Served, anthropic: bool) -> bool:
        if not served.call.startswith("rate_limited"):
            return False
        served.status, served.usage_sent = 429, False
        if anthropic:
            self._json(429, {"type": "error", "error": {"type": "rate_limit_error",
                                                         "message": "Number of request tokens has exceeded your "
                                                                    "per-minute rate limit"}},
                       {"retry-after": "1", "request-id": "req_fake429"})
        else:
            self._json(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                       "param": None, "code": "rate_limit_exceeded"}},
                       {"retry-after": "1", "x-request-id": "req_fake429"})
        return True

    def _chat(self, body: dict, served: Served) -> None:
        if self._rate_limited(served, anthropic=False):
            return
        model = RESPONSE_MODELS.get(served.model, served.model)
        usage = openai_usage(served.call, cached="cached" in served.call, reasoning=served.model.startswith("o"))
        served.usage = usage
        rid = "chatcmpl-" + hashlib.sha1(served.call.encode()).hexdigest()[:24]
        created = int(time.time())
        tools = body.get("tools")
        last = (body.get("messages") or [{}])[-1]
        if tools and last.get("role") != "tool":
            fn = tools[0]["function"]["name"]
            message = {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                       "tool_calls": [{"id": "call_" + rid[-12:], "type": "function",
                                       "function": {"name": fn, "arguments": "{\"city\": \"Paris\"}"}}]}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": "Hello from the fake provider.", "refusal": None,
                       "annotations": []}
            finish = "stop"
        if not served.stream:
            self._json(200, {"id": rid, "object": "chat.completion", "created": created, "model": model,
                             "choices": [{"index": 0, "message": message, "logprobs": None,
                                          "finish_reason": finish}],
                             "usage": usage, "service_tier": "default", "system_fingerprint": "fp_fake"})
            return
        include = bool((body.get("stream_options") or {}).get("include_usage"))
        served.usage_sent = include
        self._sse_start()
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": "fp_fake"}
        extra = {"usage": None} if include else {}
        if finish == "tool_calls":
            tc = message["tool_calls"][0]
            deltas = [{"role": "assistant", "content": None,
                       "tool_calls": [{"index": 0, "id": tc["id"], "type": "function",
                                       "function": {"name": tc["function"]["name"], "arguments": ""}}]},
                      {"tool_calls": [{"index": 0, "function": {"arguments": tc["function"]["arguments"]}}]}]
        else:
            deltas = [{"role": "assistant", "content": "", "refusal": None},
                      {"content": "Hello from "}, {"content": "the fake provider."}]
        for d in deltas:
            self._sse({**base, "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}],
                       **extra})
        self._sse({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}],
                   **extra})
        if include:
            self._sse({**base, "choices": [], "usage": usage})
        self._sse("[DONE]")

    def _embeddings(self, body: dict, served: Served) -> None:
        inputs = body.get("input")
        inputs = inputs if isinstance(inputs, list) else [inputs]
        prompt = _n(served.call, "in", 5, 400)
        served.usage = {"prompt_tokens": prompt, "total_tokens": prompt}
        vec = [0.125, -0.5, 0.25, 0.0625]
        if body.get("encoding_format") == "base64":
            emb = base64.b64encode(struct.pack("<4f", *vec)).decode()
        else:
            emb = vec
        self._json(200, {"object": "list", "model": RESPONSE_MODELS.get(served.model, served.model),
                         "data": [{"object": "embedding", "index": i, "embedding": emb} for i in range(len(inputs))],
                         "usage": served.usage})

    def _responses(self, body: dict, served: Served) -> None:
        if self._rate_limited(served, anthropic=False):
            return
        u = openai_usage(served.call, cached="cached" in served.call, reasoning=served.model.startswith("o"))
        usage = {"input_tokens": u["prompt_tokens"],
                 "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"]},
                 "output_tokens": u["completion_tokens"],
                 "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
                 "total_tokens": u["total_tokens"]}
        served.usage = usage
        rid = "resp_" + hashlib.sha1(served.call.encode()).hexdigest()[:24]
        msg_id = "msg_" + rid[-16:]
        text = "Hello from the fake provider."
        item = {"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

        def response(status: str, output: list, usage_: dict | None) -> dict:
            return {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
                    "background": False, "error": None, "incomplete_details": None,
                    "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
                    "model": RESPONSE_MODELS.get(served.model, served.model), "output": output,
                    "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None,
                                                                                            "summary": None},
                    "service_tier": "default", "store": True, "temperature": 1.0,
                    "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto",
                    "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage_, "user": None,
                    "metadata": {}}

        if not served.stream:
            self._json(200, response("completed", [item], usage))
            return
        self._sse_start()
        seq = iter(range(1000))
        started = {**item, "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        events = [
            ("response.created", {"response": response("in_progress", [], None)}),
            ("response.in_progress", {"response": response("in_progress", [], None)}),
            ("response.output_item.added", {"output_index": 0, "item": started}),
            ("response.content_part.added", {"item_id": msg_id, "output_index": 0, "content_index": 0, "part": part}),
            ("response.output_text.delta", {"item_id": msg_id, "output_index": 0, "content_index": 0,
                                            "delta": text, "logprobs": []}),
            ("response.output_text.done", {"item_id": msg_id, "output_index": 0, "content_index": 0, "text": text,
                                           "logprobs": []}),
            ("response.content_part.done", {"item_id": msg_id, "output_index": 0, "content_index": 0,
                                            "part": {**part, "text": text}}),
            ("response.output_item.done", {"output_index": 0, "item": item}),
            ("response.completed", {"response": response("completed", [item], usage)}),
        ]
        for event, data in events:
            self._sse({"type": event, "sequence_number": next(seq), **data}, event=event)

    # ------------------------------------------------------------------ Anthropic
    def _messages(self, body: dict, served: Served) -> None:
        if self._rate_limited(served, anthropic=True):
            return
        call = served.call
        # The call's name says what it exercises: "..._cache_read_write_1h" reads and writes, a third of
        # the writes with the 1-hour TTL.
        usage = anthropic_usage(call, cache_read="cache_read" in call, cache_write="write" in call,
                                one_hour="1h" in call)
        served.usage = usage
        model = RESPONSE_MODELS.get(served.model, served.model)
        mid = "msg_" + hashlib.sha1(call.encode()).hexdigest()[:24]
        last = (body.get("messages") or [{}])[-1].get("content")
        answered = isinstance(last, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                                  for b in last)
        if body.get("tools") and not answered:
            content = [{"type": "text", "text": "Let me check."},
                       {"type": "tool_use", "id": "toolu_" + mid[-12:], "name": body["tools"][0]["name"],
                        "input": {"city": "Paris"}}]
            stop = "tool_use"
        else:
            content = [{"type": "text", "text": "Hello from the fake provider."}]
            stop = "end_turn"
        if not served.stream:
            self._json(200, {"id": mid, "type": "message", "role": "assistant", "model": model, "content": content,
                             "stop_reason": stop, "stop_sequence": None, "usage": usage})
            return
        self._sse_start()
        start_usage = {**usage, "output_tokens": 1}
        self._sse({"type": "message_start", "message": {"id": mid, "type": "message", "role": "assistant",
                                                        "model": model, "content": [], "stop_reason": None,
                                                        "stop_sequence": None, "usage": start_usage}},
                  event="message_start")
        for idx, block in enumerate(content):
            if block["type"] == "text":
                self._sse({"type": "content_block_start", "index": idx, "content_block": {"type": "text", "text": ""}},
                          event="content_block_start")
                self._sse({"type": "ping"}, event="ping")
                self._sse({"type": "content_block_delta", "index": idx,
                           "delta": {"type": "text_delta", "text": block["text"]}}, event="content_block_delta")
            else:
                self._sse({"type": "content_block_start", "index": idx,
                           "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"],
                                             "input": {}}}, event="content_block_start")
                self._sse({"type": "content_block_delta", "index": idx,
                           "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}},
                          event="content_block_delta")
            self._sse({"type": "content_block_stop", "index": idx}, event="content_block_stop")
        self._sse({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                   "usage": {"output_tokens": usage["output_tokens"]}}, event="message_delta")
        self._sse({"type": "message_stop"}, event="message_stop")
