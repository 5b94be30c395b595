"""Free local TCP ports for the tests' servers, process groups and Ray nodes."""

from __future__ import annotations

import socket

_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port not handed out before in this process: the OS can give a port just
    released back to the next bind, and Ray refuses two of a node's components on one port."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
