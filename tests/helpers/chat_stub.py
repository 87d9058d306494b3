"""Generation items and a stub OpenAI-compatible server, shared by the generation tests."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Translate 'good morning' into Spanish.",
    "Give a synonym for happy.",
    "Why is the sky blue?",
]


def make_items(count: int) -> list[dict]:
    return [{"id": f"q{i}", "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + f" ({i})"}],
             "source": "test"} for i in range(count)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) for `handler`, serving while the `with` block runs."""

    def __init__(self, handler):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class Stub:
    """An OpenAI-compatible stub on 127.0.0.1: `script` is a list of (status, delay_s) for successive chat requests
    (then 200 at once). Every choice's content is "seed=<seed> n=<i>" unless `content` is set."""

    def __init__(self, script=(), content=None, honour_n=True, reject_n=False, logprobs=None):
        """`content` may be a callable of the request body; `logprobs(body, content)` gives a choice's logprobs
        content ([{"token", "logprob", "bytes", "top_logprobs": [...]}]) when the request asks for them."""
        self.script = list(script)
        self.logprobs = logprobs
        self.content = content
        self.honour_n = honour_n
        self.reject_n = reject_n
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def _reply(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    pass

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub._lock:
                    stub.requests.append(body)
                    stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                    stub.times.append(time.monotonic())
                    status, delay = stub.script.pop(0) if stub.script else (200, 0.0)
                if delay:
                    time.sleep(delay)
                if status != 200:
                    self._reply(status, {"error": {"message": f"stub says {status}", "type": "stub"}})
                    return
                n = body.get("n", 1)
                if n > 1 and stub.reject_n:
                    self._reply(400, {"error": {"message": "n > 1 is not supported", "type": "invalid_request"}})
                    return
                count = n if stub.honour_n else 1
                content = stub.content(body) if callable(stub.content) else stub.content
                choices = [{"index": i, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": content or f"seed={body.get('seed')} n={i}"}}
                           for i in range(count)]
                if body.get("logprobs") and stub.logprobs is not None:
                    for choice in choices:
                        choice["logprobs"] = {"content": stub.logprobs(body, choice["message"]["content"])}
                self._reply(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": choices})

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def __enter__(self):
        self.loopback.__enter__()
        return self

    def __exit__(self, *exc):
        self.loopback.__exit__(*exc)
