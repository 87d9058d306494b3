"""A reverse proxy in front of a real OpenAI-compatible server that counts the chat requests reaching it and can die
after a number of them, like a judge killed mid-run."""

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler

from helpers.chat_stub import LoopbackServer


class CountingProxy:
    """Forwards http://127.0.0.1:<port>/v1/... to `upstream` (a base URL ending in /v1). `chat_requests` counts the
    POSTs to /chat/completions that reached the upstream; after `die_after` of them every request gets a 503 and
    the connection is closed."""

    def __init__(self, upstream: str, die_after: int | None = None):
        self.upstream = upstream.rstrip("/")
        self.die_after = die_after
        self.chat_requests = 0
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length) if length else None
                chat = method == "POST" and self.path.endswith("/chat/completions")
                with proxy._lock:
                    dead = proxy.die_after is not None and proxy.chat_requests >= proxy.die_after
                    if chat and not dead:
                        proxy.chat_requests += 1
                        proxy.bodies.append(data)
                if dead:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    return
                path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                request = urllib.request.Request(proxy.upstream + path, data=data, method=method,
                                                 headers={"Content-Type": "application/json"})
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                try:
                    with opener.open(request, timeout=300) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                self._forward("GET")

            def do_POST(self):
                self._forward("POST")

        self.loopback = LoopbackServer(Handler)
        self.url = self.loopback.url

    def __enter__(self):
        self.loopback.__enter__()
        return self

    def __exit__(self, *exc):
        self.loopback.__exit__(*exc)
