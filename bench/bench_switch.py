"""Switch stage benchmarks against a real netconfd leaf (48 machine ports) and the in-process Metal API stand-in.

    .venv/bin/python bench/bench_switch.py [--runs 10] [--out docs/benchmarks-switch.md]

Measures
1. 48 ports moved in one commit, end to end: read running, desired state, diff, lock, discard, one
   edit-config, confirmed commit, read-back + verify, confirming commit (goal < 1 s); and the same inside a
   full reconcile (GET /v1/switch, ..., notify).
2. A no-op reconcile (GET /v1/switch + get-config + diff + notify; no commit).
3. NETCONF RPC latency with ncclient's TICK tuned (0.001 s) vs its default (0.1 s).
Needs root (the lab's private sshd) and the netconfd package, like the integration tests.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loguru import logger  # noqa: E402

from metalcore import config  # noqa: E402
from metalcore.clients.metal_api import MetalAPIClient  # noqa: E402
from metalcore.lab.metal_api import LabConfig, LabServer  # noqa: E402
from metalcore.lab.switches import SwitchLab  # noqa: E402
from metalcore.switch import models  # noqa: E402
from metalcore.switch.netconf_leaf import NetconfLeafDriver, set_tick  # noqa: E402
from metalcore.switch.reconcile import SwitchReconciler  # noqa: E402

KEYS = {"Metal-View": "v", "Metal-Edit": "bench-edit-key", "Metal-Admin": "a"}
PORTS = 48


class NullPublisher:
    def publish(self, *a, **kw):
        pass


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(round(0.9 * (len(xs) - 1))))]
    return (f"median {statistics.median(xs) * 1000:.1f} ms, p90 {p90 * 1000:.1f} ms, "
            f"min {xs[0] * 1000:.1f} ms, max {xs[-1] * 1000:.1f} ms (n={len(xs)})")


def nics(vrf: str) -> list[dict]:
    return [{"name": f"swp{k}", "vrf": vrf} for k in range(1, PORTS + 1)]


def move_all(driver, vrf: str, uplinks) -> tuple[float, float, int]:
    """End to end: read running -> desired -> diff -> apply (incl. read-back). (total s, commit s, ports)."""
    t0 = time.perf_counter()
    running = driver.read_running()
    changes = models.diff(models.desired_state(nics(vrf), running, spine_uplinks=uplinks), running)
    res = driver.apply(changes)
    return time.perf_counter() - t0, res.commit_seconds, len(changes.ports)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    root = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    lab = SwitchLab(root, names=("leaf01",), ports_per_switch=PORTS)
    lab.start()
    srv = LabServer(LabConfig(keys=KEYS, partition_id="lab", twin_switches=False,
                              bootconfig={"imageurl": "i", "kernelurl": "k", "commandline": "c"})).start()
    api = MetalAPIClient(f"http://{srv.host}:{srv.port}", KEYS["Metal-Edit"], timeout=10)
    try:
        sw = lab.switches["leaf01"]
        target = config.SwitchTarget(sw.name, sw.host, sw.port, sw.username, sw.password)
        say(f"leaf01: netconfd (yuma123) with {PORTS} machine ports + uplinks {sw.uplinks}; "
            f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        say()

        # 1. 48 ports in one commit -------------------------------------------------------------------
        drv = NetconfLeafDriver(target, confirm_timeout=60, tick=0.001)
        drv.read_running()  # session open outside the timing
        totals, commits = [], []
        for i in range(args.runs):
            total, commit, n = move_all(drv, "vrf30" if i % 2 == 0 else "", sw.uplinks)
            assert n == PORTS, n
            totals.append(total)
            commits.append(commit)
        if args.runs % 2:
            move_all(drv, "", sw.uplinks)
        say(f"## 1. {PORTS} ports moved in one commit (PXE <-> vrf30, alternating), TICK 0.001")
        say(f"- end to end (get-config, diff, lock, discard, edit, confirmed commit, read-back, confirm): {stats(totals)}")
        say(f"- of which lock .. confirming commit incl. read-back: {stats(commits)}")
        say(f"- goal < 1 s: {'met' if max(totals) < 1 else 'NOT met'} (max {max(totals) * 1000:.0f} ms)")

        # the same through a full reconcile with the stand-in (GET desired, notify)
        env = {"METAL_CORE_PARTITION_ID": "lab", "METAL_CORE_RACK_ID": "r1", "METAL_CORE_HMAC_KEY": "x",
               "METAL_CORE_SWITCHES": f"leaf01=netconf://u:p@{sw.host}:{sw.port}",
               "METAL_CORE_SPINE_UPLINKS": ",".join(sw.uplinks), "METAL_CORE_RECONFIGURE_SWITCH": "true"}
        settings = config.load("switch", environ=env)
        rec = SwitchReconciler(settings, target, api, NullPublisher(), driver=drv)
        rec.register()
        store = srv.state.store
        full = []
        for i in range(args.runs):
            with store.lock:
                for n in store.switches["leaf01"]["nics"]:
                    if n["name"] not in sw.uplinks:
                        n["vrf"] = "vrf30" if i % 2 == 0 else ""
            t0 = time.perf_counter()
            out = rec.reconcile()
            full.append(time.perf_counter() - t0)
            assert out.outcome == "applied" and len(out.changes.ports) == PORTS, out
        if args.runs % 2:
            with store.lock:
                for n in store.switches["leaf01"]["nics"]:
                    n["vrf"] = ""
            rec.reconcile()
        say(f"- full reconcile moving {PORTS} ports (GET /v1/switch .. notify): {stats(full)}")
        say()

        # 2. no-op reconcile ----------------------------------------------------------------------------
        startup = Path(sw.dir) / "startup-cfg.xml"
        stamp = startup.stat().st_mtime_ns
        noop = []
        for _ in range(max(30, args.runs * 3)):
            t0 = time.perf_counter()
            out = rec.reconcile()
            noop.append(time.perf_counter() - t0)
            assert out.outcome == "noop", out
        assert startup.stat().st_mtime_ns == stamp, "a no-op reconcile touched the datastore"
        reads = []
        for _ in range(30):
            t0 = time.perf_counter()
            drv.read_running()
            reads.append(time.perf_counter() - t0)
        say(f"## 2. no-op reconcile ({PORTS}-port switch, nothing to change; startup-cfg.xml untouched)")
        say(f"- full no-op reconcile (GET /v1/switch, get-config, desired, diff, POST notify): {stats(noop)}")
        say(f"- of which get-config of the whole switch subtree + parse: {stats(reads)}")
        say()
        drv.close()

        # 3. TICK tuned vs default ------------------------------------------------------------------------
        say("## 3. NETCONF RPC latency: ncclient TICK 0.001 s (tuned) vs 0.1 s (default)")
        say("| TICK | connect+hello | get-config (full) | apply, 1 port (7 RPCs) | 48 ports end to end |")
        say("|---|---|---|---|---|")
        one_port = models.ChangeSet(ports=(models.PortChange("swp1", None, models.PortState("access", access_vlan=4000, mtu=1500)),))
        back = models.ChangeSet(ports=(models.PortChange("swp1", None, models.PortState("access", access_vlan=4000, mtu=9000)),))
        for tick in (0.001, 0.1):
            d = NetconfLeafDriver(target, confirm_timeout=60, tick=tick)
            conns, gets, edits, big = [], [], [], []
            for _ in range(5):
                t0 = time.perf_counter()
                d.read_ports()
                conns.append(time.perf_counter() - t0)  # includes one small get-config
                d.close()
            d.read_running()
            for _ in range(10):
                t0 = time.perf_counter()
                d.read_running()
                gets.append(time.perf_counter() - t0)
            for i in range(6):
                t0 = time.perf_counter()
                d.apply(one_port if i % 2 == 0 else back)
                edits.append(time.perf_counter() - t0)
            for i in range(4):
                big.append(move_all(d, "vrf30" if i % 2 == 0 else "", sw.uplinks)[0])
            d.close()
            say(f"| {tick} | {statistics.median(conns) * 1000:.0f} ms | {statistics.median(gets) * 1000:.1f} ms | "
                f"{statistics.median(edits) * 1000:.1f} ms | "
                f"{statistics.median(big) * 1000:.0f} ms |")
        set_tick(0.001)
        say()
        say("(apply = lock, discard-changes, edit-config, confirmed commit, get-config read-back, confirming "
            "commit, unlock: 7 RPCs; connect+hello includes one small get-config.)")
    finally:
        api.close()
        srv.stop()
        lab.stop()
    if args.out:
        Path(args.out).write_text(HEADER + "\n".join(lines) + "\n")
    return 0


HEADER = """# Switch stage benchmarks

Command (as root, netconfd installed; about 30 s):

    .venv/bin/python bench/bench_switch.py --runs 10 --out docs/benchmarks-switch.md

One netconfd (yuma123) leaf behind the lab's private sshd on 127.0.0.1, ncclient over SSH, the Metal API
stand-in in-process (waitress, real HTTP). The machine has 2 shared cores: figures are noisy.

"""

if __name__ == "__main__":
    sys.exit(main())
