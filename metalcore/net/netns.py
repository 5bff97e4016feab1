"""Open sockets inside another network namespace while the process stays in its own.

A socket keeps the namespace it was created in. So a stage can listen on the rack's PXE network (the lab
puts that in a namespace) and still reach the Metal API, nsqd and the BMCs from the host namespace: open
the listening sockets inside ``with in_netns(name):``, everything else outside. setns(2) acts on the calling
thread only, which is what makes the switch back safe in a threaded process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Iterator

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block in network namespace ``name`` (from `ip netns add`); None or "" = stay where we are."""
    if not name:
        yield
        return
    path = name if name.startswith("/") else os.path.join(NETNS_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(f"network namespace {name!r} does not exist ({path})") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)
