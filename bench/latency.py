"""Serving latency benchmark of a registered model: in-process pyfunc calls, and HTTP through `transfer-rec serve`.

    python -m bench.latency --model models:/transfer_rec-ml-100k@champion [--rate 50 --seconds 30]

In-process: one user per call, top-10, through the pyfunc loaded from the registry (signature checks included),
timed call by call: known users by id (their scores are precomputed when the model loads), then new users given 5
items (scored at request time). HTTP: known users, the model served on loopback (`--env-manager local`, --workers
processes), requests sent open-loop at a fixed rate (a request is sent at its scheduled time whether or not earlier
ones have returned, so a slow server shows up as latency instead of silently lowering the load); latency is send to
full response.
With a model that has a linked part (`--model models:/transfer_rec-action@champion` after `make run`), also people
new to the target named by a source account (`{"platform": "family", "user_id": ...}`).
Targets: in-process p99 < 5 ms (issue #5), < 10 ms for a linked newcomer (#22); HTTP p99 < 50 ms with zero errors.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

IN_PROCESS_P99_MS = 5.0
LINKED_P99_MS = 10.0  # issue #22: a person new to the target, answered from their other platforms' histories
HTTP_P99_MS = 50.0


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_ms, dtype=np.float64)
    if not len(values):
        return {"n": 0, "p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {
        "n": int(len(values)),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def known_users(model: Any, n: int) -> list[str]:
    users = sorted(model.unwrap_python_model().bundle.histories)
    if not users:
        raise SystemExit("the model knows no users: nothing to benchmark with")
    rng = np.random.default_rng(0)
    return [users[i] for i in rng.integers(0, len(users), size=n)]


def linked_newcomers(model: Any, n: int) -> list[tuple[str, str]]:
    """Source accounts (platform, user id) of people with no history on the model's target: each is answered from
    their other platforms' histories. Empty when the model has no linked part."""
    bundle = model.unwrap_python_model().bundle
    if bundle.linked is None:
        return []
    accounts = bundle.accounts
    on_target = set(accounts.loc[accounts["platform"] == bundle.target, "link_id"])
    newcomers = accounts[(accounts["platform"] != bundle.target) & ~accounts["link_id"].isin(on_target)]
    rows = newcomers.iloc[np.random.default_rng(0).integers(0, len(newcomers), size=n)] if len(newcomers) else newcomers
    return list(zip(rows["platform"], rows["user_id"], strict=True))


def in_process(
    model: Any, requests: int, k: int = 10, warmup: int = 50, new_users: bool = False, linked: bool = False
) -> dict[str, float]:
    """Latency of single-user pyfunc predictions (one user, top-k), after a warm-up: known users by id, or with
    `new_users` unknown users given the first 5 items of a known user's history (scored at request time), or with
    `linked` people new to the target named by a source account (answered from their other platforms' histories)."""
    import pandas as pd

    histories = model.unwrap_python_model().bundle.histories
    users: list[Any] = linked_newcomers(model, requests + warmup) if linked else known_users(model, requests + warmup)
    latencies = []
    for index, user in enumerate(users):
        if linked:
            frame = pd.DataFrame({"platform": [user[0]], "user_id": [user[1]], "history": [[]]})
        elif new_users:
            frame = pd.DataFrame({"user_id": [None], "history": [list(histories[user][:5])]})
        else:
            frame = pd.DataFrame({"user_id": [user], "history": [[]]})
        started = time.perf_counter()
        out = model.predict(frame, params={"k": k})
        elapsed = (time.perf_counter() - started) * 1000
        if len(out) != k:
            raise RuntimeError(f"user {user}: expected {k} recommendations, got {len(out)}")
        if index >= warmup:
            latencies.append(elapsed)
    return percentiles(latencies)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model_uri: str, port: int, log_path: Path, workers: int = 1) -> subprocess.Popen:
    """`transfer-rec serve` on loopback (what `make serve` runs: MLflow's scoring server behind the body limit)."""
    bin_dir = Path(sys.executable).parent
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(bin_dir / "transfer-rec"), "serve", "--model", model_uri, "--port", str(port), "--workers", str(workers)],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"transfer-rec serve exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/ping")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    from transfer_rec.runtime.processes import stop_group

    stop_group(proc)
    raise SystemExit(f"transfer-rec serve did not answer /ping within 120 s: {log_path.read_text()[-2000:]}")


class MemorySampler:
    """The resident memory of a process and its children, sampled every second in a thread while a load runs."""

    def __init__(self, pid: int):
        import psutil

        self.root = psutil.Process(pid)
        self.samples: list[float] = [self._rss()]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _rss(self) -> float:
        import psutil

        total = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20

    def _run(self) -> None:
        while not self._done.wait(1.0):
            self.samples.append(self._rss())

    def stop(self) -> dict[str, float]:
        self._done.set()
        self._thread.join()
        self.samples.append(self._rss())
        return {"start": self.samples[0], "end": self.samples[-1], "max": max(self.samples)}


def http_load(
    port: int, users: list[str], rate: float, seconds: float, k: int = 10, warmup: int = 20
) -> dict[str, Any]:
    """Open-loop load: request i is sent at start + i / rate; keep-alive connections, one per sender thread."""
    local = threading.local()

    def send(user: str) -> tuple[float, bool, str]:
        body = json.dumps({"dataframe_records": [{"user_id": user, "history": []}], "params": {"k": k}})
        started = time.perf_counter()
        try:
            reused = getattr(local, "conn", None) is not None
            if not reused:
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                local.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = local.conn.getresponse()
            except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                if not reused:
                    raise
                # the server closed this idle keep-alive connection (uvicorn does after 5 s): reconnect and send
                # again, as HTTP client pools do; the time it takes stays in this request's latency
                local.conn.close()
                local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                local.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
                response = local.conn.getresponse()
            payload = response.read()
            ok = response.status == 200 and len(json.loads(payload)["predictions"]) == k
            return (time.perf_counter() - started) * 1000, ok, "" if ok else f"HTTP {response.status}"
        except Exception as error:  # counted and reported, the load goes on
            local.conn = None
            return (time.perf_counter() - started) * 1000, False, repr(error)[:200]

    for user in users[:warmup]:
        send(user)
    total = int(rate * seconds)
    futures, lateness = [], []
    with ThreadPoolExecutor(max_workers=16) as pool:
        start = time.perf_counter() + 0.1
        for index in range(total):
            scheduled = start + index / rate
            pause = scheduled - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            lateness.append(max(0.0, time.perf_counter() - scheduled) * 1000)
            futures.append(pool.submit(send, users[(warmup + index) % len(users)]))
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - start
    errors = [reason for _, ok, reason in results if not ok]
    return {
        **percentiles([ms for ms, _, _ in results]),
        "requests": total,
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "offered_rate": rate,
        "achieved_rate": total / elapsed,
        "send_lateness_p99_ms": float(np.percentile(lateness, 99)) if lateness else 0.0,
    }


def heavy_body(model: Any, distinct: int = 5000, k: int = 1000) -> tuple[bytes, int]:
    """The heavy request of issue #25: one row whose history names `distinct` ids, half the catalogue's items and the
    rest ids the model does not know, at k = 1000. Returns the body and the number of unknown ids."""
    bundle = model.unwrap_python_model().bundle
    catalogue = sorted({item for history in bundle.histories.values() for item in history})
    known = catalogue[: min(len(catalogue) // 2, distinct)]
    unknown = [f"unknown-item-{i:05d}" for i in range(distinct - len(known))]
    body = json.dumps({"dataframe_records": [{"history": known + unknown}], "params": {"k": k}})
    return body.encode(), len(unknown)


def heavy_load(port: int, body: bytes, concurrent: int) -> dict[str, Any]:
    """`concurrent` heavy requests sent at the same moment, each on its own connection; latency, status, size."""
    barrier = threading.Barrier(concurrent)

    def send(_: int) -> tuple[float, int, int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        barrier.wait()
        started = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            return (time.perf_counter() - started) * 1000, response.status, len(payload), ""
        except Exception as error:  # counted and reported
            return (time.perf_counter() - started) * 1000, 0, 0, repr(error)[:200]
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=concurrent) as pool:
        results = list(pool.map(send, range(concurrent)))
    statuses: dict[str, int] = {}
    for _, status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        **percentiles([ms for ms, _, _, _ in results]),
        "concurrent": concurrent,
        "request_bytes": len(body),
        "statuses": statuses,
        "server_errors": sum(1 for _, status, _, _ in results if status >= 500 or status == 0),
        "response_bytes_max": max(size for _, _, size, _ in results),
        "error_examples": sorted({reason for _, _, _, reason in results if reason})[:3],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="models:/transfer_rec-ml-100k@champion",
        help="model URI (default: the embedded target's champion; `make run` creates it)",
    )
    parser.add_argument("--requests", type=int, default=2000, help="in-process calls")
    parser.add_argument("--rate", type=float, default=50.0, help="HTTP requests per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="HTTP load duration")
    parser.add_argument("--workers", type=int, default=1, help="`transfer-rec serve` worker processes")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--heavy",
        type=int,
        default=0,
        metavar="N",
        help="also send one heavy request alone, then N at once (5,000 distinct ids, most unknown, k = 1000)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    import mlflow

    from transfer_rec.io.state import StateLayout

    os.environ.setdefault("MLFLOW_TRACKING_URI", StateLayout.from_env().mlflow_uri())
    try:
        model = mlflow.pyfunc.load_model(args.model)
    except mlflow.exceptions.MlflowException as error:
        raise SystemExit(f"cannot load {args.model}: {error}\n(run `make run` first, or pass --model)") from error
    result: dict[str, Any] = {
        "model": args.model,
        "workers": args.workers,
        "in_process": in_process(model, args.requests),
        "in_process_new_user": in_process(model, args.requests, new_users=True),
    }
    cases = [
        ("in_process", "one known user", IN_PROCESS_P99_MS),
        ("in_process_new_user", "one new user (5-item history)", IN_PROCESS_P99_MS),
    ]
    if linked_newcomers(model, 1):
        result["in_process_linked_newcomer"] = in_process(model, args.requests, linked=True)
        cases.append(("in_process_linked_newcomer", "one linked newcomer (a source account)", LINKED_P99_MS))
    for key, what, target in cases:
        ip = result[key]
        print(
            f"in-process, {what}, top-10: p50 {ip['p50_ms']:.2f} ms, p99 {ip['p99_ms']:.2f} ms over {ip['n']} "
            f"calls (target p99 < {target} ms: {'met' if ip['p99_ms'] < target else 'NOT met'})"
        )
    # Latency targets are reported (a shared machine is noisy); failed requests fail the command.
    ok = True
    if not args.skip_http:
        from transfer_rec.runtime.processes import stop_group

        port = _free_port()
        log_path = Path(tempfile.mkdtemp(prefix="transfer-rec-latency-")) / "serve.log"
        proc = start_server(args.model, port, log_path, args.workers)
        try:
            users = known_users(model, int(args.rate * args.seconds) + 20)
            sampler = MemorySampler(proc.pid)
            result["http"] = h = http_load(port, users, args.rate, args.seconds)
            h["server_rss_mib"] = sampler.stop()
            if args.heavy:
                body, n_unknown = heavy_body(model)
                sampler = MemorySampler(proc.pid)
                alone = heavy_load(port, body, 1)
                together = heavy_load(port, body, args.heavy)
                result["heavy"] = {"unknown_ids": n_unknown, "alone": alone, "together": together}
                result["heavy"]["server_rss_mib"] = sampler.stop()
        finally:
            stop_group(proc)
        met = h["p99_ms"] < HTTP_P99_MS and h["errors"] == 0
        print(
            f"HTTP (transfer-rec serve, {args.workers} worker(s), loopback) "
            f"at {h['offered_rate']:.0f} req/s for {args.seconds:.0f} "
            f"s: p50 {h['p50_ms']:.2f} ms, p99 {h['p99_ms']:.2f} ms, max {h['max_ms']:.1f} ms, {h['errors']} errors "
            f"of {h['requests']} (achieved {h['achieved_rate']:.1f} req/s; target p99 < {HTTP_P99_MS} ms and no "
            f"errors: {'met' if met else 'NOT met'})"
        )
        rss = h["server_rss_mib"]
        print(
            f"  server memory (RSS of its process tree): {rss['start']:.0f} MiB at the start, {rss['end']:.0f} MiB "
            f"at the end, {rss['max']:.0f} MiB at most"
        )
        if h["errors"]:
            print(f"  errors, e.g.: {h['error_examples']}")
        ok = h["errors"] == 0
        if args.heavy:
            heavy = result["heavy"]
            alone, together, rss = heavy["alone"], heavy["together"], heavy["server_rss_mib"]
            print(
                f"heavy request ({alone['request_bytes']:,} bytes, {heavy['unknown_ids']:,} unknown ids, k = 1000): "
                f"alone {alone['max_ms']:.0f} ms, {alone['response_bytes_max']:,} bytes back "
                f"(targets < 2,000 ms, < 1 MB); {together['concurrent']} at once: p50 {together['p50_ms']:.0f} ms, "
                f"p99 {together['p99_ms']:.0f} ms, statuses {together['statuses']}, "
                f"{together['server_errors']} 5xx or failed; server {rss['start']:.0f} -> {rss['max']:.0f} MiB at most"
            )
            ok = ok and alone["server_errors"] == 0 and together["server_errors"] == 0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
