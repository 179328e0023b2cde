"""The served model over HTTP: MLflow's scoring server (the app `mlflow models serve` runs), with a request body limit.

MLflow's server reads any body whole before the model sees it: a 5 MB body is parsed into a DataFrame and only then
refused by the model's row limit, after seconds of work. `BodyLimit` refuses a body past the limit with a 413 before
it is parsed. The rest of such a body is read and dropped first (up to DRAIN_MAX): a server that answers and closes
while the client is still sending makes the client see a connection reset instead of the 413. A client that asks
`Expect: 100-continue` (curl does for large bodies) gets the 413 before it sends anything.
`transfer-rec serve` (make serve) runs this app under uvicorn, as `mlflow models serve --env-manager local` does.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

MAX_BODY_ENV = "TRANSFER_REC_MAX_BODY_BYTES"
# A request at the model's own limits (1,000 rows; a history of 10,000 item ids) fits in 1 MiB for the catalogues
# we serve; more is a batch job (publish covers every user of a target).
DEFAULT_MAX_BODY = 1 << 20
# Past this much, an oversized body is not read to its end: the 413 goes out and the connection closes.
DRAIN_MAX = 64 << 20

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _refuse(send: Send, status: int, message: str) -> None:
    code = "REQUEST_TOO_LARGE" if status == 413 else "BAD_REQUEST"
    body = json.dumps({"error_code": code, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + [(b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, read: int = 0) -> None:
    """Read and drop the rest of a refused body (up to DRAIN_MAX), so the client is done sending when the 413 comes."""
    while read <= DRAIN_MAX:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body"):
            return


class BodyLimit:
    """ASGI middleware: a request body past `max_bytes` gets a 413 naming the limit; the app never sees it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> str:
        return f"request body of {size} bytes; at most {self.max_bytes:,} bytes per request (split the request)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(send, 400, f"Content-Length {declared[:40].decode(errors='replace')!r} is not a number")
                return
            if int(declared) > self.max_bytes:
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await _drain(receive)
                await _refuse(send, 413, self._too_large(f"{int(declared):,}"))
                return
        # A chunked body (or one longer than declared) is read here, up to the limit, and then handed on whole.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body"):
                    await _drain(receive, size)
                await _refuse(send, 413, self._too_large(f"more than {self.max_bytes:,}"))
                return
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def max_body_bytes() -> int:
    value = os.environ.get(MAX_BODY_ENV)
    if value is None:
        return DEFAULT_MAX_BODY
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_BODY_ENV}={value!r}: expected a positive number of bytes")
    return int(value)


def create_app() -> ASGIApp:
    """The scoring app of the model at MLflow's model-path variable, behind the body limit (uvicorn's --factory)."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(os.environ[scoring_server._SERVER_MODEL_PATH])
    return BodyLimit(scoring_server.init(model), max_body_bytes())


def serve_command(
    model_uri: str, host: str, port: int, workers: int, max_body: int
) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line and environment that serve `model_uri` (downloaded to a local folder first)."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri)
    command = [
        str(Path(sys.executable).parent / "uvicorn"),
        "--factory",
        "transfer_rec.serving.http:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, scoring_server._SERVER_MODEL_PATH: local, MAX_BODY_ENV: str(max_body)}
    return command, env


def serve(model_uri: str, host: str, port: int, workers: int, max_body: int) -> None:
    """Become the server (exec): a signal to this process reaches uvicorn itself, and nothing is left behind."""
    command, env = serve_command(model_uri, host, port, workers, max_body)
    sys.stdout.flush()
    os.execve(command[0], command, env)
