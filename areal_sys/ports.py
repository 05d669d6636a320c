"""Free TCP ports for rendezvous points (process groups, stores, local servers).

A port is chosen in one process and bound later in another (a trainer rank's TCPStore, a
weight-sync store), so it must not be taken in between. Ports the kernel hands out for port 0
come from the ephemeral range, the same range every outgoing connection's local port comes from:
on a busy machine (Ray opens many connections) one of those can take the port first, and the
bind fails with EADDRINUSE. So the port is drawn at random *below* the ephemeral range (and above
Ray's worker ports, 10002-19999 by default), where the kernel never allocates on its own.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_LOW = 20000  # above Ray's default worker port range
_FALLBACK_EPHEMERAL_START = 32768


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _FALLBACK_EPHEMERAL_START


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` ("" = every interface) now, outside the kernel's ephemeral range
    when that range leaves room below it (else any port the OS reports free)."""
    high = _ephemeral_start()
    rng = random.SystemRandom()
    if high - _LOW >= 1000:
        for _ in range(100):
            port = rng.randrange(_LOW, high)
            if _bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
