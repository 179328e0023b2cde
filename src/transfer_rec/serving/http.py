"""The served model over HTTP: MLflow's scoring server (the app `mlflow models serve` runs), with a request body limit.

MLflow's server reads any body whole before the model sees it: a 5 MB body is parsed into a DataFrame and only then
refused by the model's row limit, after seconds of work. `BodyLimit` refuses a body past the limit with a 413 before
it is parsed. The rest of such a body is read and dropped first (up to DRAIN_MAX): a server that answers and closes
while the client is still sending makes the client see a connection reset instead of the 413. A client that asks
`Expect: 100-continue` (curl does for large bodies) gets the 413 before it sends anything.
`transfer-rec serve` (make serve) runs this app under uvicorn, as `mlflow models serve --env-manager local` does.

A server started on an alias (`models:/<name>@champion`) follows it: `Served` checks the alias every so often and,
when a promotion or rollback has moved it, loads the version it names and answers with that from then on. Without
this, a model replaced because people withdrew consent would keep answering until someone restarted the server.
Each check also reads the version's withheld list (serving/withheld.py), on a server pinned to a version too: a
champion that stays while people it holds have withdrawn stops answering from them. Every answer names the version
that gave it (header x-model-version).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from transfer_rec.schema.unified import PII_SALT_ENV, PII_SALT_FILE_ENV
from transfer_rec.serving.withheld import NOBODY, WITHHELD_TAG, Withheld

log = logging.getLogger("transfer_rec.serving")

MAX_BODY_ENV = "TRANSFER_REC_MAX_BODY_BYTES"
# What a server process loaded at start ("<name>/<version>") and, when it follows an alias, "<name>@<alias> <seconds>".
VERSION_ENV = "TRANSFER_REC_SERVE_VERSION"
FOLLOW_ENV = "TRANSFER_REC_SERVE_FOLLOW"
# A promotion reaches every worker about a minute after it (plus the new version's load); each check is one registry
# read. At most a day between checks.
DEFAULT_FOLLOW_SECONDS = 60
MAX_FOLLOW_SECONDS = 86_400
# MLflow splits a model URI at its last "@" (store/artifact/utils/models.py): a name may hold one
ALIAS_URI = re.compile(r"models:/(?P<name>[^/]+)@(?P<alias>[^/@]+)")
VERSION_URI = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+)")
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
    code = {413: "REQUEST_TOO_LARGE", 503: "TEMPORARILY_UNAVAILABLE"}.get(status, "BAD_REQUEST")
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


class Served:
    """ASGI app: the scoring app of one model version, named in every answer's x-model-version header. Given an
    alias to follow, a daemon thread reads it every `seconds` (jittered, so workers do not load at one moment);
    when it names another version, that version is downloaded and loaded beside the one answering, then swapped in
    (requests in flight finish on the old one). A server pinned to a version (`follow` with alias None) reads that
    version the same way. Each read also fetches the version's withheld list (serving/withheld.py) when its
    `serving.withheld` tag names another one, and hands it to the model before it answers with it. A registry that
    cannot be read, or a version or list that fails to load, leaves the loaded model answering as it did; each
    failed check is logged. Until the first check has read the served version's list, nothing is answered (HTTP
    503, /ping too): a worker started while the registry is down must not answer from people it withholds.

    The server's lifespan is answered here, not by the scoring app: uvicorn's lifespan call lasts as long as the
    process, and passed on it would hold the first model in memory after every swap (MLflow's app has no startup
    or shutdown work)."""

    def __init__(
        self,
        app: ASGIApp,
        version: str | None,
        follow: tuple[str, str | None, float] | None = None,
        model: Any = None,
    ):
        # what answers: the app, "<name>/<version>", our pyfunc model in it (None for another kind) and the URI of
        # the withheld list it was given
        self._current: tuple[ASGIApp, str | None, Any, str | None] = (app, version, model, None)
        self._local: str | None = None  # the folder of a version this process downloaded itself
        self._follow = follow
        self._checked = follow is None  # whether the withheld list of what answers has been read

    def start_following(self) -> None:
        """Check the alias once now (a worker restarted after a promotion must not answer with the version the
        server started on), then every `seconds` in a daemon thread."""
        if self._follow is None:
            return
        self._check_logged()
        threading.Thread(target=self._watch, name="follow-alias", daemon=True).start()

    @property
    def version(self) -> str | None:
        return self._current[1]

    def _watch(self) -> None:
        assert self._follow is not None
        stop = threading.Event()  # never set: the thread ends with the process
        # every few seconds while nothing may be answered yet
        while not stop.wait((self._follow[2] if self._checked else min(self._follow[2], 5)) * random.uniform(0.9, 1.1)):
            self._check_logged()

    def _followed(self) -> str:
        name, alias, _ = self._follow or ("", None, 0)
        return f"{name}@{alias}" if alias else f"{name} v{(self.version or '').rsplit('/', 1)[-1]}"

    def _check_logged(self) -> None:
        try:
            self.check()
        except Exception as error:  # the loaded model keeps answering; the next check tries again
            log.warning(
                "serve: %s not checked or not loaded, still answering with %s: %s",
                self._followed(),
                self.version,
                error,
            )

    def check(self) -> bool:
        """Load the version the alias names now, if that is not the one answering, and the withheld list it names,
        if that is not the one it has; whether anything changed."""
        from mlflow import MlflowClient
        from mlflow.artifacts import download_artifacts

        assert self._follow is not None
        name, alias, _ = self._follow
        client = MlflowClient()
        if alias is not None:
            found = client.get_model_version_by_alias(name, alias)
        else:
            found = client.get_model_version(name, (self.version or "").rsplit("/", 1)[-1])
        named, uri = f"{name}/{found.version}", (found.tags or {}).get(WITHHELD_TAG)
        app, version, model, given = self._current
        if named != version and not self._checked and version is not None:
            # the list of the version this worker answers with first: if the one the alias names now cannot be
            # loaded, this one answers on, as before the alias moved, never with no list and never not at all
            mine = client.get_model_version(name, version.rsplit("/", 1)[-1])
            given = (mine.tags or {}).get(WITHHELD_TAG)
            _withhold(model, given, version)
            self._current = (app, version, model, given)
            self._checked = True
        if named == version:
            if uri == given and self._checked:
                return False
            _withhold(model, uri, named)
            self._current = (app, version, model, uri)
            self._checked = True
            return True
        # into a folder of this process's own: without dst_path a local registry hands back its stored folder itself
        local = tempfile.mkdtemp(prefix="transfer-rec-serve-")
        try:
            app, model = scoring_app(download_artifacts(artifact_uri=f"models:/{named}", dst_path=local))
            _withhold(model, uri, named)  # before it answers anyone
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        previous, self._local = self._local, local
        self._current = (app, named, model, uri)
        self._checked = True
        log.warning("serve: %s moved to version %s: now answering with it", self._followed(), found.version)
        if previous:
            shutil.rmtree(previous, ignore_errors=True)
        return True

    def remove_own_copy(self) -> None:
        if self._local:
            shutil.rmtree(self._local, ignore_errors=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    self.remove_own_copy()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http" and not self._checked:
            await _drain(receive)
            await _refuse(send, 503, "the served model's withheld list has not been read yet (registry unreachable?)")
            return
        app, version, _, _ = self._current
        if scope["type"] != "http" or version is None:
            await app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-model-version", version.encode())]}
            await send(message)

        await app(scope, receive, named)


def _withhold(model: Any, uri: str | None, version: str) -> None:
    """Give the served model the withheld list at `uri` (None: nobody), read from the registry's artifact store."""
    if model is None or not hasattr(model, "withheld"):
        if uri is not None:  # not our model: nothing could honour the list, which must not pass unnoticed
            raise ValueError(f"{version} names a withheld list ({uri}) but is no transfer-rec model")
        return
    if uri is None:
        model.withheld = NOBODY
        log.warning("serve: %s withholds nobody", version)
        return
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="transfer-rec-withheld-") as folder:
        withheld = Withheld.read(Path(download_artifacts(artifact_uri=uri, dst_path=folder)))
    model.withheld = withheld
    log.warning(
        "serve: %s withholds %d account(s) and %d link(s) of people who withdrew (%s)",
        version,
        len(withheld.accounts),
        len(withheld.links),
        uri,
    )


def scoring_app(local: str) -> tuple[ASGIApp, Any]:
    """MLflow's scoring app of the model in a local folder, and the Python model inside it (None if it has none)."""
    from mlflow.pyfunc import scoring_server

    model = scoring_server.load_model_with_mlflow_config(local)
    try:
        inner = model.unwrap_python_model()
    except Exception:  # a flavour other than a Python model
        inner = None
    return scoring_server.init(model), inner


def max_body_bytes() -> int:
    value = os.environ.get(MAX_BODY_ENV)
    if value is None:
        return DEFAULT_MAX_BODY
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_BODY_ENV}={value!r}: expected a positive number of bytes")
    return int(value)


def create_app() -> ASGIApp:
    """The scoring app of the model at MLflow's model-path variable, behind the body limit, following the alias it
    was started on when told to (uvicorn's --factory)."""
    from mlflow.pyfunc import scoring_server

    follow: tuple[str, str | None, float] | None = None
    if os.environ.get(FOLLOW_ENV):
        followed, seconds = os.environ[FOLLOW_ENV].rsplit(" ", 1)
        # "<name>@<alias>", or "<name>/<version>" for a server pinned to a version (only its withheld list moves)
        name, alias = followed.rsplit("@", 1) if "@" in followed else (followed.rsplit("/", 1)[0], None)
        follow = (name, alias, float(seconds))
    version = os.environ.get(VERSION_ENV) or None
    app, model = scoring_app(os.environ[scoring_server._SERVER_MODEL_PATH])
    served = Served(app, version, follow, model)
    served.start_following()
    return BodyLimit(served, max_body_bytes())


def resolve(model_uri: str) -> tuple[str, str | None]:
    """The URI to download and "<name>/<version>" for a registry URI: an alias is read once, so the version
    downloaded is the version named in answers even if the alias moves meanwhile."""
    from mlflow import MlflowClient

    aliased = ALIAS_URI.fullmatch(model_uri)
    if aliased:
        version = MlflowClient().get_model_version_by_alias(aliased["name"], aliased["alias"]).version
        return f"models:/{aliased['name']}/{version}", f"{aliased['name']}/{version}"
    numbered = VERSION_URI.fullmatch(model_uri)
    return model_uri, f"{numbered['name']}/{numbered['version']}" if numbered else None


def serve_command(
    model_uri: str, host: str, port: int, workers: int, max_body: int, follow_seconds: float = DEFAULT_FOLLOW_SECONDS
) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line and environment that serve `model_uri` (downloaded to a local folder first);
    an alias URI is followed every `follow_seconds` (0: never)."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    exact, version = resolve(model_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=exact)
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
    # the linking secret is the pipeline's, not the server's: requests name people by link id or account, never by
    # an identity to hash, so a server (and anything that can read its environment) never holds it
    for secret in (PII_SALT_ENV, PII_SALT_FILE_ENV):
        env.pop(secret, None)
    env.pop(FOLLOW_ENV, None)
    env.pop(VERSION_ENV, None)
    if version:
        env[VERSION_ENV] = version
    if follow_seconds > 0 and ALIAS_URI.fullmatch(model_uri):
        env[FOLLOW_ENV] = f"{model_uri.removeprefix('models:/')} {follow_seconds:g}"
    elif follow_seconds > 0 and version:  # pinned to a version: its withheld list is read all the same
        env[FOLLOW_ENV] = f"{version} {follow_seconds:g}"
    return command, env


def serve(
    model_uri: str, host: str, port: int, workers: int, max_body: int, follow_seconds: float = DEFAULT_FOLLOW_SECONDS
) -> None:
    """Become the server (exec): a signal to this process reaches uvicorn itself, and nothing is left behind."""
    command, env = serve_command(model_uri, host, port, workers, max_body, follow_seconds)
    sys.stdout.flush()
    os.execve(command[0], command, env)
