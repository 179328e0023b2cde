"""The HTTP load client of `bench.latency` against a real loopback server that drops keep-alive connections after
each answer (as uvicorn does with idle ones): the client reopens them, so the drop is not an error of the served
model, while real failures still count."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.latency import http_load


def serve(status: int):
    answered = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            k = json.loads(self.rfile.read(length))["params"]["k"]
            body = json.dumps({"predictions": [{"rank": r} for r in range(k)]}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            answered.append(status)
            self.close_connection = True  # closed without saying so: the client's next send on it fails

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.answered = answered
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("status, errors", [(200, 0), (500, 40)])
def test_dropped_keep_alive_connections_are_reopened_and_real_failures_counted(status, errors):
    server = serve(status)
    try:
        result = http_load(server.server_address[1], [f"u{i}" for i in range(50)], rate=20, seconds=2, warmup=2)
    finally:
        server.shutdown()
    # every request the client counts reached the server (the warm-up's came before them)
    assert result["requests"] == 40 and len(server.answered) >= 40
    assert result["errors"] == errors
    if errors:
        assert result["error_examples"] == ["HTTP 500"]
