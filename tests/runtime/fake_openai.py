"""A local server that speaks the OpenAI chat-completions protocol, for tests (no network but loopback).

It answers every POST /v1/chat/completions with a scripted reply (or the default one), records each call
(body and the X-Warden-Action header) and can be made slow, fail, or hang.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self):
        self.calls: list[dict] = []
        self.script: collections.deque = collections.deque()
        self.delay = 0.0
        self.lock = threading.Lock()
        self.url = ""
        self.stream_usage = True  # a stream ends with a usage chunk when the client asks for one

    def reply(self, status: int = 200, body: dict | str | None = None, headers: dict | None = None,
              delay: float = 0.0) -> None:
        """Queue the answer to the next call (then the default: a short valid completion)."""
        self.script.append((status, body, headers or {}, delay))

    def per_action(self) -> collections.Counter:
        return collections.Counter(call["action"] for call in self.calls)

    def completion(self, request: dict) -> dict:
        content = "fake answer to: " + request["messages"][-1]["content"][:40]
        if request.get("response_format", {}).get("type") == "json_schema":
            content = json.dumps({"approved": True, "score": 4, "notes": "fine"})
        return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": request["model"] + "-2026-01-01",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}}


def _handler(fake: FakeOpenAI):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body are two writes: with Nagle's algorithm the body waited for the client's delayed ACK
        # (~40 ms on loopback), which the bench measured as the upstream's latency.
        disable_nagle_algorithm = True

        def log_message(self, *args):
            pass

        def do_POST(self):
            length = int(self.headers.get("Content-Length", 0))
            request = json.loads(self.rfile.read(length) or b"{}")
            with fake.lock:
                fake.calls.append({"path": self.path, "body": request, "action": self.headers.get("X-Warden-Action"),
                                   "authorization": self.headers.get("Authorization")})
                status, body, headers, delay = fake.script.popleft() if fake.script else (200, None, {}, 0.0)
            time.sleep(delay or fake.delay)
            if request.get("stream") and status == 200 and (body is None or body == BROKEN):
                return self._stream(request, broken=body == BROKEN)
            if body is None and self.path.endswith("/embeddings"):
                items = request["input"] if isinstance(request["input"], list) else [request["input"]]
                body = {"object": "list", "model": request["model"],
                        "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                                 for i in range(len(items))],
                        "usage": {"prompt_tokens": 5 * len(items), "total_tokens": 5 * len(items)}}
            if body is None:
                body = fake.completion(request)
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

        def _stream(self, request: dict, broken: bool) -> None:
            """Server-sent events, chunked: two content deltas, then (if asked) a usage chunk and [DONE]. Broken:
            the connection drops after the first delta."""
            base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": request["model"]}
            events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "streamed "},
                                            "finish_reason": None}]},
                      {**base, "choices": [{"index": 0, "delta": {"content": "answer"}, "finish_reason": "stop"}]}]
            if (request.get("stream_options") or {}).get("include_usage") and fake.stream_usage:
                events.append({**base, "choices": [], "usage": {"prompt_tokens": 30, "completion_tokens": 9,
                                                                "total_tokens": 39}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for number, event in enumerate(events):
                    self._chunk(b"data: " + json.dumps(event).encode() + b"\n\n")
                    if broken and number == 0:
                        self.wfile.flush()
                        self.connection.shutdown(2)  # mid-stream, no terminating chunk
                        return
                self._chunk(b"data: [DONE]\n\n")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass

        def _chunk(self, data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

    return Handler


BROKEN = "__broken_stream__"


@contextmanager
def fake_openai():
    fake = FakeOpenAI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_port}/v1"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
