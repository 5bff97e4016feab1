"""The floor under the machine-event path: what the lab's BMCs (ipmi_sim + the chassis hook) can do on this
machine with no metalcore in between.

One "op" = what one ON/OFF event needs at the BMC: Chassis Control (set power) + Get Chassis Status (read-back),
two IPMI requests over lanplus, each one popen of the chassis hook inside ipmi_sim.

    .venv/bin/python bench/bench_bmc_floor.py [--bmcs 100] [--seconds 5] [--procs 1,2,4] [--threads 8]
    .venv/bin/python bench/bench_bmc_floor.py --hook "/bin/sh /path/to/other_hook.sh"   # compare hooks

Modes:
  hook     the chassis hook alone, run like ipmi_sim runs it (popen of "/bin/sh -c '<hook> <dir> get power'")
  pyghmi   P processes x T threads, each thread owns BMCs (one pyghmi session each) and loops set+get on them
  ipmitool one ipmitool process per BMC running the same pairs from an exec file (one session per process)
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metalcore.lab.bmcs import DEFAULT_HOOK, BmcFarm  # noqa: E402


def hook_rate(hook: str, state_dir: str, seconds: float) -> dict:
    """popen of the hook as ipmi_sim does it (through /bin/sh -c), get and set alternately."""
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        cmd = f'{hook} {state_dir} get power' if n % 2 else f'{hook} {state_dir} set power "{n // 2 % 2}"'
        subprocess.run(cmd, shell=True, stdout=subprocess.DEVNULL, check=True)
        n += 1
    dt = time.monotonic() - t0
    return {"hook_calls_per_s": round(n / dt, 1), "ms_per_call": round(dt / n * 1000, 2)}


def _worker(bmcs: list[tuple[str, int]], threads: int, seconds: float, q) -> None:
    import threading

    from pyghmi.ipmi import command

    groups = [bmcs[i::threads] for i in range(threads)]
    counts = [0] * threads
    errors = [0] * threads
    go = threading.Event()
    end = [0.0]

    def loop(k: int) -> None:
        cmds = [command.Command(bmc=h, userid="admin", password="password", port=p) for h, p in groups[k]]
        go.wait()
        i = 0
        while time.monotonic() < end[0]:
            c = cmds[i % len(cmds)]
            want = (i // len(cmds)) % 2
            r = c.raw_command(netfn=0, command=2, data=(want,))
            s = c.raw_command(netfn=0, command=1)
            if r.get("code") or s.get("code") or (s["data"][0] & 1) != want:
                errors[k] += 1
            counts[k] += 1
            i += 1
    ts = [threading.Thread(target=loop, args=(k,)) for k in range(threads) if groups[k]]
    for t in ts:
        t.start()
    time.sleep(1.0)  # logins
    end[0] = time.monotonic() + seconds
    go.set()
    for t in ts:
        t.join()
    q.put((sum(counts), sum(errors)))


def pyghmi_rate(farm: BmcFarm, procs: int, threads: int, seconds: float) -> dict:
    addrs = [(b.host, b.port) for b in farm.bmcs]
    q = mp.Queue()
    ps = [mp.Process(target=_worker, args=(addrs[i::procs], threads, seconds, q)) for i in range(procs)]
    for p in ps:
        p.start()
    got = [q.get(timeout=seconds + 60) for _ in ps]
    for p in ps:
        p.join()
    ops = sum(g[0] for g in got)
    return {"procs": procs, "threads": threads, "ops_per_s": round(ops / seconds, 1),
            "ipmi_requests_per_s": round(2 * ops / seconds, 1), "bad_readbacks": sum(g[1] for g in got)}


def ipmitool_rate(farm: BmcFarm, n_bmcs: int, pairs: int) -> dict:
    """n_bmcs ipmitool processes at once, each `exec`s pairs x (power on|off + power status) in one session."""
    tmp = tempfile.mkdtemp(prefix="ipmitool-", dir="/tmp")
    script = os.path.join(tmp, "cmds")
    with open(script, "w") as f:
        for i in range(pairs):
            f.write(f"raw 0x00 0x02 {i % 2:#04x}\nraw 0x00 0x01\n")
    t0 = time.monotonic()
    ps = [subprocess.Popen(["ipmitool", "-I", "lanplus", "-C", "3", "-H", b.host, "-p", str(b.port), "-U", "admin",
                            "-P", "password", "exec", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
          for b in farm.bmcs[:n_bmcs]]
    rcs = [p.wait() for p in ps]
    dt = time.monotonic() - t0
    return {"ipmitool_procs": n_bmcs, "pairs_each": pairs, "ops_per_s": round(n_bmcs * pairs / dt, 1),
            "failed_procs": sum(1 for r in rcs if r)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bmcs", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--procs", default="1,2,4")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--hook", default=DEFAULT_HOOK)
    ap.add_argument("--only", default="hook,pyghmi,ipmitool")
    a = ap.parse_args()
    only = a.only.split(",")
    farm = BmcFarm(tempfile.mkdtemp(prefix="bf-", dir="/tmp"), count=a.bmcs, chassis_hook=a.hook)
    farm.start(timeout=60)
    try:
        print(json.dumps({"hook": a.hook, "load": os.getloadavg()[0]}), flush=True)
        if "hook" in only:
            print(json.dumps({"hook_alone": hook_rate(a.hook, farm.bmcs[0].state_dir, 2.0)}), flush=True)
        if "pyghmi" in only:
            for p in (int(x) for x in a.procs.split(",")):
                print(json.dumps({"pyghmi": pyghmi_rate(farm, p, a.threads, a.seconds)}), flush=True)
        if "ipmitool" in only:
            print(json.dumps({"ipmitool": ipmitool_rate(farm, a.bmcs, 50)}), flush=True)
    finally:
        farm.stop()


if __name__ == "__main__":
    main()
