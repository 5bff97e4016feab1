"""metalcore trace <machine id | MAC>: one machine's timeline across every stage.

Reads the event records the stages keep in the run directory (``events-<stage>.jsonl``, see
metalcore/bus.py EventRecord), links a machine's MACs, machine id and trace id (a DHCP packet knows only the
MAC and the client GUID; metal-hammer's calls know the machine id; the register call carries both), and
prints the events in time order with the time each step took, then one line per phase.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import time

from metalcore.cli import run_dir
from metalcore.config import parse_duration

# stream (or stream.name prefix) -> phase, in the order of a machine's life
PHASES = (
    ("dhcp", "DHCP"), ("boot", "boot"), ("hammer.register", "register"), ("hammer.install", "wait"),
    ("hammer.report", "report"), ("hammer", "hammer"), ("nsq", "event"), ("switch", "switch"), ("ipmi", "BMC"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("trace", help="one machine's timeline: DHCP, boot, register, wait, report, switch, BMC")
    p.add_argument("machine", help="machine id or MAC")
    p.add_argument("--json", action="store_true", help="print the linked events as JSON lines")
    p.add_argument("--since", type=_since_arg, default=None, metavar="DURATION",
                   help="only events of the last DURATION (e.g. 30m, 2h, 90s): a long-lived rack records "
                        "every life of a machine")
    p.set_defaults(func=run)


def _since_arg(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def load_events(directory: str, since: float | None = None) -> list[dict]:
    """Every recorded event (``ts`` ≥ ``since``, Unix seconds, when given), in time order."""
    events = []
    for path in sorted(glob.glob(os.path.join(directory, "events-*.jsonl*"))):
        with open(path, "rb") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue  # a torn last line of a killed stage
                if isinstance(obj, dict) and isinstance(obj.get("ts"), (int, float)) and (
                        since is None or obj["ts"] >= since):
                    events.append(obj)
    events.sort(key=lambda e: e["ts"])
    return events


def _keys_of(event: dict) -> set[str]:
    keys = {str(event[k]).lower() for k in ("machine_id", "mac", "trace_id") if event.get(k)}
    body = event.get("body") or {}
    for mac in body.get("macs") or ():
        if isinstance(mac, str):
            keys.add(mac.lower())
    return keys


def link(events: list[dict], seed: str) -> list[dict]:
    """Events of one machine: grow the set of its identifiers until no event adds one."""
    keys = {seed.lower()}
    mine: dict[int, dict] = {}
    grew = True
    while grew:
        grew = False
        for i, event in enumerate(events):
            if i in mine:
                continue
            ek = _keys_of(event)
            if ek & keys:
                mine[i] = event
                if not ek <= keys:
                    keys |= ek
                    grew = True
    return [mine[i] for i in sorted(mine)]


def phase_of(event: dict) -> str:
    topic = f"{event.get('stream')}.{event.get('name')}"
    for prefix, phase in PHASES:
        if topic == prefix or topic.startswith(prefix + ".") or topic.startswith(prefix):
            return phase
    return str(event.get("stream"))


def _summary(body: dict) -> str:
    parts = []
    for k, v in body.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, separators=(",", ":"))
            if len(v) > 60:
                v = v[:57] + "..."
        parts.append(f"{k}={v}")
    return " ".join(parts)


def render(events: list[dict]) -> list[str]:
    if not events:
        return []
    t0 = events[0]["ts"]
    start = datetime.datetime.fromtimestamp(t0).isoformat(sep=" ", timespec="milliseconds")
    ids = sorted({e["machine_id"] for e in events if e.get("machine_id")})
    macs = sorted({e["mac"] for e in events if e.get("mac")})
    lines = [f"machine {', '.join(ids) or '?'}  MAC {', '.join(macs) or '?'}  from {start}", ""]
    lines.append(f"{'+time':>9} {'step':>8}  {'phase':<9}{'stage':<13}{'event':<28}detail")
    prev = t0
    for e in events:
        lines.append(f"{e['ts'] - t0:>8.3f}s {e['ts'] - prev:>7.3f}s  {phase_of(e):<9}{e.get('source', ''):<13}"
                     f"{e.get('stream')}.{e.get('name'):<{27 - len(str(e.get('stream')))}} {_summary(e.get('body') or {})}")
        prev = e["ts"]
    lines += ["", f"{'phase':<10}{'first':>10}{'last':>10}{'took':>10}{'events':>8}"]
    phases: dict[str, list[float]] = {}
    for e in events:
        phases.setdefault(phase_of(e), []).append(e["ts"])
    for phase, times in sorted(phases.items(), key=lambda kv: kv[1][0]):
        lines.append(f"{phase:<10}{times[0] - t0:>9.3f}s{times[-1] - t0:>9.3f}s{times[-1] - times[0]:>9.3f}s"
                     f"{len(times):>8}")
    return lines


def run(args: argparse.Namespace) -> int:
    since = None if args.since is None else time.time() - args.since
    events = link(load_events(run_dir(args), since), args.machine)
    if not events:
        window = "" if args.since is None else f" within the last {args.since:g} s"
        print(f"no events of {args.machine} in {run_dir(args)}{window}")
        return 1
    if args.json:
        for e in events:
            print(json.dumps(e))
    else:
        print("\n".join(render(events)))
    return 0
