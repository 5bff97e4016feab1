"""`metalcore lab up|down|status`: the rack lab's service peers (see metalcore/lab/README.md).

`up` starts the peers detached (they outlive this command) and records them in
<run-dir>/lab/state.json; `down` stops exactly the recorded pids; `status` reports them.
`up --foreground` stays attached and brings the lab down on Ctrl-C / SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

DEFAULT_RUN_DIR = ".run"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `lab` and its sub-commands on an argparse ``subparsers`` object."""
    p = subparsers.add_parser("lab", help="start/stop the rack lab's service peers (NSQ, switches, BMCs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="lab_command", metavar="{up,down,status}")
    sub.required = True

    def common(sp):
        sp.add_argument("--run-dir", default=os.environ.get("METALCORE_RUN_DIR", DEFAULT_RUN_DIR),
                        help="directory holding lab/state.json, logs and datastores "
                             "(default: $METALCORE_RUN_DIR or ./.run)")
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON")

    up = sub.add_parser("up", help="start the peers (idempotent when the same lab is already up)")
    common(up)
    up.add_argument("--bmcs", type=int, default=4, help="number of machines/BMCs (default 4)")
    up.add_argument("--ports-per-switch", type=int, default=8, help="machine ports swp1..swpN per leaf (default 8)")
    up.add_argument("--bmc-user", default="admin")
    up.add_argument("--bmc-password", default="password")
    up.add_argument("--chassis-hook", default=None,
                    help="command ipmi_sim runs for chassis control (state dir appended); default: the built-in file hook")
    up.add_argument("--no-switches", action="store_true", help="skip the NETCONF switches")
    up.add_argument("--no-nsq", action="store_true", help="skip nsqd/nsqlookupd")
    up.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C brings the lab down")
    up.add_argument("--rack", action="store_true",
                    help="the whole rack: also the Metal API stand-in, the PXE network (namespaces, site DHCP) "
                         "and one QEMU machine per BMC, powered by its BMC (what scripts/run starts)")
    up.add_argument("--settings", help="with --rack: write metalcore's settings for this lab to this TOML file")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop every recorded peer process")
    common(down)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show the recorded peers and whether they run")
    common(status)
    status.add_argument("--machines", action="store_true", help="also list the machine inventory")
    status.set_defaults(func=cmd_status)
    return p


def _summary(lab, st: dict) -> str:
    lines = [f"lab in {st['run_dir']}: {'UP' if st['up'] else 'NOT UP'}"]
    if st["nsq"]:
        lines.append(f"  nsqd tcp {st['nsq']['nsqd_tcp']}  http {st['nsq']['nsqd_http']}  "
                     f"nsqlookupd http {st['nsq']['lookupd_http']}")
    for name, sw in lab.switches.items():
        lines.append(f"  {name}: NETCONF ssh {sw.host}:{sw.port} user {sw.username}")
    lines.append(f"  BMCs: {st['bmcs']} (ipmi_sim, lanplus)")
    for p in st["procs"]:
        lines.append(f"  {'running' if p['running'] else 'DEAD   '} {p['pid']:>7} {p['name']}")
    return "\n".join(lines)


def cmd_up(args) -> int:
    from metalcore.lab.procs import LabError
    from metalcore.lab.rack import RackLab
    from metalcore.lab.bmcs import DEFAULT_HOOK

    try:
        if args.rack:
            from metalcore.lab.full_rack import up_full, write_settings
            lab = up_full(Path(args.run_dir), machines=args.bmcs, ports_per_switch=args.ports_per_switch)
            if args.settings:
                write_settings(lab, args.settings)
        else:
            lab = RackLab(Path(args.run_dir), bmcs=args.bmcs, ports_per_switch=args.ports_per_switch,
                          bmc_user=args.bmc_user, bmc_password=args.bmc_password,
                          chassis_hook=args.chassis_hook or DEFAULT_HOOK,
                          with_switches=not args.no_switches, with_nsq=not args.no_nsq)
            lab.up()
    except LabError as e:
        print(f"metalcore lab up: {e}", file=sys.stderr)
        return 1
    st = lab.status()
    if args.json:
        print(json.dumps({"status": st, "machines": [m.to_dict() for m in lab.machines],
                          "up_seconds": lab.up_seconds}, indent=1))
    else:
        print(_summary(lab, st))
        print(f"  up in {lab.up_seconds:.2f}s; state: {lab.state_path}")
    if not args.foreground:
        return 0
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.5)
    if args.rack:
        from metalcore.lab.full_rack import down_full
        left = down_full(args.run_dir)
    else:
        left = lab.down()
    return 1 if left else 0


def cmd_down(args) -> int:
    from metalcore.lab.procs import LabError
    from metalcore.lab.rack import RackLab

    try:
        lab = RackLab.load(args.run_dir)
    except LabError as e:
        print(f"metalcore lab down: {e}", file=sys.stderr)
        return 0  # nothing recorded: nothing to stop
    pids = [r.pid for r in lab.all_procs()]
    if "pxe-net" in lab.service_info:
        from metalcore.lab.full_rack import down_full
        left = down_full(args.run_dir)
    else:
        left = lab.down()
    if args.json:
        print(json.dumps({"stopped": [p for p in pids if p not in left], "left": left}))
    else:
        print(f"stopped {len(pids) - len(left)} processes" + (f"; still alive: {left}" if left else ""))
    return 1 if left else 0


def cmd_status(args) -> int:
    from metalcore.lab.procs import LabError
    from metalcore.lab.rack import RackLab

    try:
        lab = RackLab.load(args.run_dir)
    except LabError as e:
        print(json.dumps({"up": False, "error": str(e)}) if args.json else f"no lab: {e}")
        return 3
    st = lab.status()
    if args.json:
        if args.machines:
            st["machines"] = [m.to_dict() for m in lab.machines]
        print(json.dumps(st, indent=1))
    else:
        print(_summary(lab, st))
        if args.machines:
            for m in lab.machines:
                ports = ", ".join(f"{n.switch}/{n.port}" for n in m.nics if n.switch) or "no switch ports"
                print(f"  {m.name} {m.id} {m.mac} bmc {m.bmc.address} [{ports}]")
    return 0 if st["up"] else 3


def main(argv=None) -> int:
    """Stand-alone entry (python -m metalcore.cli.lab ...) until the lead wires the main CLI."""
    parser = argparse.ArgumentParser(prog="metalcore")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
