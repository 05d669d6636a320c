"""areal_sys/ports.py: rendezvous ports come from outside the kernel's ephemeral range."""

from __future__ import annotations

import socket

from areal_sys.ports import _ephemeral_start, free_port


def test_free_port_is_bindable_and_below_the_ephemeral_range() -> None:
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 10  # random draws, not one fixed port
    for port in ports:
        assert 20000 <= port < _ephemeral_start()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
