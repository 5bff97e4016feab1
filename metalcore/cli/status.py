"""metalcore status: one line per stage — supervisord state, uptime, last heartbeat, jobs, errors."""

from __future__ import annotations

import argparse
import os
import time
import xmlrpc.client

from metalcore.bus import HEARTBEAT_INTERVAL, EventSubscriber
from metalcore.cli import settings_for_cli
from metalcore.config import STAGES


def add_parser(sub) -> None:
    p = sub.add_parser("status", help="state of every stage")
    p.add_argument("--listen", type=float, default=2.5 * HEARTBEAT_INTERVAL,
                   help="seconds to listen for heartbeats")
    p.set_defaults(func=run)


def supervisor_states(socket_path: str) -> dict[str, dict]:
    from supervisor.xmlrpc import SupervisorTransport
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1",
                                      transport=SupervisorTransport(None, None, f"unix://{socket_path}"))
    return {info["name"]: info for info in proxy.supervisor.getAllProcessInfo()}


def collect_heartbeats(run_dir: str, listen: float) -> dict[str, tuple[float, dict]]:
    sub = EventSubscriber(run_dir, ["heartbeat"])
    seen: dict[str, tuple[float, dict]] = {}
    deadline = time.monotonic() + listen
    try:
        while len(seen) < len(STAGES) and (left := deadline - time.monotonic()) > 0:
            env = sub.recv(timeout=left)
            if env is not None:
                seen[env.source] = (env.ts, env.body)
    finally:
        sub.close()
    return seen


def _uptime(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(args: argparse.Namespace) -> int:
    settings = settings_for_cli(args)
    run_dir = args.run_dir or settings.run_dir
    sock = settings.supervisor_socket or os.path.join(run_dir, "supervisor.sock")
    try:
        states = supervisor_states(sock)
        sup_error = None
    except (OSError, xmlrpc.client.Error) as e:
        states, sup_error = {}, f"supervisord not reachable at {sock}: {e}"
    beats = collect_heartbeats(run_dir, args.listen)
    now = time.time()
    print(f"{'stage':<14}{'supervisord':<12}{'uptime':>10}  {'heartbeat':<12}{'jobs':>6}{'errors/min':>12}")
    all_ok = True
    for stage in STAGES:
        info = states.get(stage, {})
        state = info.get("statename", "?")
        uptime = _uptime(now - info["start"]) if state == "RUNNING" and info.get("start") else "-"
        if stage in beats:
            ts, body = beats[stage]
            beat = f"{now - ts:.1f}s ago"
            jobs, errors = body.get("jobs_in_flight", 0), body.get("errors_last_minute", 0)
        else:
            beat, jobs, errors = "none", "-", "-"
            all_ok = False
        all_ok &= state == "RUNNING"
        print(f"{stage:<14}{state:<12}{uptime:>10}  {beat:<12}{jobs!s:>6}{errors!s:>12}")
    if sup_error:
        print(sup_error)
    return 0 if all_ok else 3
