"""Helpers of the tests that start their own Ray nodes with ``ray start`` (imported, not collected)."""

from __future__ import annotations

import socket
from pathlib import Path

import psutil


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on now, so a test's nodes never collide with each other or another Ray on the machine."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def processes_under(temp_dir: Path) -> list[psutil.Process]:
    """The processes of the node started in ``temp_dir`` (command lines naming it) and their children: never
    another Ray's, as ``ray stop --force`` would be."""
    mine = str(temp_dir)
    roots = [p for p in psutil.process_iter(["cmdline"]) if any(mine in part for part in p.info["cmdline"] or [])]
    return list({p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}.values())
