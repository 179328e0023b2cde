"""Free loopback ports for the servers integration tests start."""

from __future__ import annotations

import socket


def free_port_pair() -> int:
    """A port p with p and p + 10000 (weed's gRPC offset) both free on loopback."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port > 55000:
            continue
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on loopback")
