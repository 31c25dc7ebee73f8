"""The read lane's control channel: one msgpack message per SEQPACKET datagram, with
at most one socket attached (agent/workers/read_lane.py draws the whole lane).

node -> reader ``["names", {key: name}]``, ``["conn", bytes] +fd``; reader -> node
``["ready"]``, ``["back", bytes] +fd``, ``["served", n, bucket counts, seconds]``.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import msgpack

__all__ = ["IDLE_S", "MAX_CONNECTIONS", "MAX_MESSAGE", "control_pair", "pack", "receive",
           "unpack"]

MAX_CONNECTIONS = 1024
"""Connections one reader holds; past it, offered connections go back to the node."""
IDLE_S = 75.0
"""A connection idle this long is closed (aiohttp's keep-alive timeout)."""
MAX_MESSAGE = 1 << 20


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, max_bin_len=MAX_MESSAGE, max_str_len=MAX_MESSAGE,
                           max_array_len=1 << 16, max_map_len=1 << 16)


def receive(ctl: socket.socket) -> tuple[bytes, list[int]] | None:
    """One control message and its fds; None when there is none yet.

    Raises:
        EOFError: the other end is gone.
    """
    try:
        data, fds, flags, _ = socket.recv_fds(ctl, MAX_MESSAGE, 1)
    except BlockingIOError:
        return None
    if not data and not fds:
        raise EOFError
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            with contextlib.suppress(OSError):
                socket.close(fd)
        raise EOFError  # not what either side sends: end the link
    return data, fds


def control_pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 2 * MAX_MESSAGE)
    ours.setblocking(False)
    return ours, theirs

