"""metalcore tap [STREAM ...] [--machine ID|MAC] [--json]: a live view of bus streams.

A tap is a plain subscriber with a small receive queue: when it cannot keep up, ZeroMQ drops messages on
the tap's side; the stages never wait for it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from metalcore.bus import EventSubscriber
from metalcore.cli import run_dir
from metalcore.protocol.envelope import Envelope


def add_parser(sub) -> None:
    p = sub.add_parser("tap", help="watch bus streams live (dhcp, boot, hammer, nsq, switch, ipmi, heartbeat, bus)")
    p.add_argument("streams", nargs="*", help="streams to show (default: all but heartbeat)")
    p.add_argument("--machine", help="only messages of this machine id or MAC")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages")
    p.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")
    p.set_defaults(func=run)


def matches(env: Envelope, machine: str | None) -> bool:
    if not machine:
        return True
    m = machine.lower()
    return m in ((env.machine_id or "").lower(), (env.mac or "").lower())


def render(env: Envelope) -> str:
    when = datetime.datetime.fromtimestamp(env.ts).strftime("%H:%M:%S.%f")[:-3]
    who = " ".join(x for x in (env.machine_id, env.mac) if x)
    body = json.dumps(env.body, separators=(",", ":"), sort_keys=True)
    return f"{when} {env.source:<12} {env.stream}.{env.name:<20} {who} {body}"


def run(args: argparse.Namespace) -> int:
    import time
    sub = EventSubscriber(run_dir(args), args.streams)
    deadline = time.monotonic() + args.timeout if args.timeout else None
    shown = 0
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return 0
            env = sub.recv(timeout=left if left is not None else 1.0)
            if env is None or (not args.streams and env.stream == "heartbeat") or not matches(env, args.machine):
                continue
            if args.json:
                line = json.dumps({"ts": env.ts, "source": env.source, "kind": env.kind, "stream": env.stream,
                                   "name": env.name, "id": env.id, "trace_id": env.trace_id,
                                   "machine_id": env.machine_id, "mac": env.mac, "body": env.body})
            else:
                line = render(env)
            print(line, flush=True)
            shown += 1
            if args.count and shown >= args.count:
                return 0
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    finally:
        sub.close()
        sys.stdout.flush()
