"""Free loopback port allocation for the lab peers.

Ports are found by binding port 0 (the kernel picks), and every socket of one request stays
open until the whole batch is known, so one call never hands out the same port twice.  The
sockets are bound without SO_REUSEADDR: a port in use by anyone (even a second ipmi_sim that
would happily share a UDP port, see peers-on-this-machine.md ipmi_sim gotcha 4) is never
returned.  There is an unavoidable window between closing our socket and the peer binding it;
the peers' own readiness checks catch the rare loss.
"""
from __future__ import annotations

import socket

HOST = "127.0.0.1"


def _free_ports(kind: int, count: int, host: str = HOST) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, kind)
            socks.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_tcp_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct TCP ports that are free on ``host`` right now."""
    return _free_ports(socket.SOCK_STREAM, count, host)


def free_udp_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct UDP ports that are free on ``host`` right now."""
    return _free_ports(socket.SOCK_DGRAM, count, host)


def free_tcp_port(host: str = HOST) -> int:
    return free_tcp_ports(1, host)[0]


def free_udp_port(host: str = HOST) -> int:
    return free_udp_ports(1, host)[0]


def _bindable(kind: int, port: int, host: str, reuse: bool) -> bool:
    s = socket.socket(socket.AF_INET, kind)
    try:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def udp_port_free(port: int, host: str = HOST) -> bool:
    """True when nobody has ``port`` bound (used before restarting a BMC on its old port)."""
    return _bindable(socket.SOCK_DGRAM, port, host, reuse=False)


def tcp_port_free(port: int, host: str = HOST) -> bool:
    """True when nobody listens on ``port`` (TIME_WAIT leftovers do not count: the peers,
    like nsqd, bind with SO_REUSEADDR, so we check the same way)."""
    return _bindable(socket.SOCK_STREAM, port, host, reuse=True)


def tcp_accepts(port: int, host: str = HOST, timeout: float = 0.2) -> bool:
    """True when something accepts a TCP connection on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
