"""Benchmarks of the machine-event path: publish on nsqd -> nsq_consumer -> ipmi stage -> ipmi_sim BMC read-back
-> FIN (the consumer's ``nsq.done`` bus event is published right after the FIN).

    .venv/bin/python bench/bench_nsq_ipmi.py [--events 2000] [--cycle-bmcs 500] [--only throughput,latency,cycle]

Not part of the test suite. Results go to docs/benchmarks-nsq-ipmi.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nsq  # noqa: E402

from tests.integration.nsq_ipmi_rig import Rig, machine_id  # noqa: E402


PROFILE = ""  # --profile DIR: py-spy (pip install py-spy) samples both stages during the throughput window
MAX_IN_FLIGHT = 256  # --max-in-flight: the consumer's mq_max_in_flight in the throughput runs
IPMI_CONCURRENCY = 64  # --ipmi-concurrency: the ipmi stage's request budget in the throughput runs
HOOK = ""  # --hook: another chassis hook command for the BMCs (default: the lab's)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def anchor_rate(rig: Rig, n: int) -> float:
    """A bare pynsq Reader (FIN at once) on the same nsqd, through the same nsqlookupd: messages/s."""
    topic = "anchor"
    data = b"\n".join(b'{"type":"command","cmd":{"target":"x","cmd":"ON"}}' for _ in range(n))
    req = urllib.request.Request(f"http://{rig.nsq.nsqd_http_address}/mpub?topic={topic}", data=data, method="POST")
    urllib.request.urlopen(req, timeout=30).read()

    async def run() -> float:
        got = 0
        first = None
        done = asyncio.get_running_loop().create_future()

        def handler(msg):
            nonlocal got, first
            first = first or time.monotonic()
            got += 1
            if got == n and not done.done():
                done.set_result(time.monotonic())
            return True
        r = nsq.Reader(message_handler=handler, lookupd_http_addresses=[f"http://{rig.nsq.lookupd_http_address}"],
                       topic=topic, channel="anchor", max_in_flight=64, lookupd_poll_interval=1,
                       lookupd_poll_jitter=0.0, output_buffer_timeout=25)
        end = await asyncio.wait_for(done, 120)
        r.close()
        return n / (end - first)
    return asyncio.run(run())


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, children: bool = False) -> float:
    """utime+stime of a process (plus its reaped children's, e.g. ipmi_sim's chassis hooks) from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / _TICK


def cpu_snapshot(rig: Rig) -> dict[str, float]:
    """CPU seconds so far of each part of the path; the BMCs' chassis hooks (ipmi_sim's children) apart."""
    return {"nsq_consumer": cpu_seconds(rig.procs["nsq_consumer"].pid),
            "ipmi": cpu_seconds(rig.procs["ipmi"].pid),
            "bmcs_ipmi_sim": sum(cpu_seconds(b.proc.pid) for b in rig.farm.bmcs if b.proc),
            "bmcs_hooks": sum(cpu_seconds(b.proc.pid, children=True) - cpu_seconds(b.proc.pid)
                              for b in rig.farm.bmcs if b.proc),
            "nsqd": sum(cpu_seconds(r.pid) for r in rig.nsq.procs.values()),
            "bench": cpu_seconds(os.getpid())}


def cpu_per_event(before: dict[str, float], after: dict[str, float], events: int) -> dict[str, float]:
    """CPU milliseconds per event, by part (the bench itself publishes and reads every bus event)."""
    out = {k: round((after[k] - before[k]) * 1000 / max(1, events), 2) for k in before}
    out["total"] = round(sum(out.values()), 2)
    return out


def throughput(n_bmcs: int, events: int) -> dict:
    # TTL off: a queue of thousands of events for one BMC is the point here, not staleness
    rig = Rig(tempfile.mkdtemp(prefix="bnt-", dir="/tmp"), bmcs=n_bmcs, mq_max_in_flight=MAX_IN_FLIGHT,
              ipmi_concurrency=IPMI_CONCURRENCY, log_level="warning", machine_topic_ttl=0)
    if HOOK:
        rig.farm.chassis_hook = HOOK
    rig.up()
    try:
        rig.start_stage("ipmi")
        rig.start_stage("nsq_consumer")
        # warm up: one event per machine (credential fetch + login)
        rig.mpublish([{"type": "command", "cmd": {"target": machine_id(i), "cmd": "ON"}}
                      for i in range(1, n_bmcs + 1)])
        assert len(rig.collect("done", n_bmcs, 120)) == n_bmcs, "warm-up incomplete"
        bodies = [{"type": "command", "cmd": {"target": machine_id(i % n_bmcs + 1),
                                              "cmd": ("OFF", "ON")[(i // n_bmcs) % 2]}} for i in range(events)]
        spies = [subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-r", "250",
                                   "-p", str(rig.procs[st].pid), "-f", "raw", "-o", os.path.join(PROFILE, f"{st}.raw"),
                                   "--nonblocking", "--gil", "-d", "600"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for st in ("nsq_consumer", "ipmi")] if PROFILE else []
        if spies:
            time.sleep(1.0)  # py-spy attaches
        cpu0, load0 = cpu_snapshot(rig), os.getloadavg()[0]
        t0 = time.monotonic()
        for k in range(0, events, 500):
            rig.mpublish(bodies[k:k + 500])
        done = rig.collect("done", events, 600)
        t1 = time.monotonic()
        cpu1 = cpu_snapshot(rig)
        for spy in spies:
            spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
            spy.wait(30)
        anchor = anchor_rate(rig, events)
        return {"bmcs": n_bmcs, "events": events, "done": len(done), "seconds": round(t1 - t0, 2),
                "events_per_s": round(len(done) / (t1 - t0), 1), "anchor_per_s": round(anchor, 1),
                "cpu_ms_per_event": cpu_per_event(cpu0, cpu1, len(done)),
                "load_avg_1m": [round(load0, 1), round(os.getloadavg()[0], 1)]}
    finally:
        rig.down()


def latency(samples: int) -> dict:
    rig = Rig(tempfile.mkdtemp(prefix="bnl-", dir="/tmp"), bmcs=4, log_level="warning").up()
    out = {}
    try:
        rig.start_stage("ipmi")
        rig.start_stage("nsq_consumer")
        mid = machine_id(1)
        rig.publish({"type": "command", "cmd": {"target": mid, "cmd": "ON"}})
        rig.wait_event("done", timeout=30)
        for cmds in (("ON", "OFF"), ("LED-ON", "LED-OFF"), ("PXE", "DISK")):
            lat = []
            for i in range(samples):
                cmd = cmds[i % 2]
                t0 = time.monotonic()
                rig.publish({"type": "command", "cmd": {"target": mid, "cmd": cmd, "params": ["bench"]}})
                rig.wait_event("done", lambda e: e.body["event"] == cmd, timeout=30)
                lat.append((time.monotonic() - t0) * 1000)
                time.sleep(0.01)
            out["/".join(cmds)] = {"p50_ms": round(statistics.median(lat), 1), "p99_ms": round(pct(lat, 99), 1),
                                   "n": len(lat)}
        out["anchor_per_s"] = round(anchor_rate(rig, 2000), 1)
        return out
    finally:
        rig.down()


def cycle_all(n_bmcs: int) -> dict:
    t = time.monotonic()
    rig = Rig(tempfile.mkdtemp(prefix="bnc-", dir="/tmp"), bmcs=n_bmcs, mq_max_in_flight=1000,
              ipmi_concurrency=64, log_level="warning").up()
    started = time.monotonic() - t
    try:
        rig.start_stage("ipmi")
        rig.start_stage("nsq_consumer")
        rig.mpublish([{"type": "command", "cmd": {"target": machine_id(i), "cmd": "ON"}}
                      for i in range(1, n_bmcs + 1)])
        assert len(rig.collect("done", n_bmcs, 300)) == n_bmcs, "power-on warm-up incomplete"
        t0 = time.monotonic()
        rig.mpublish([{"type": "command", "cmd": {"target": machine_id(i), "cmd": "CYCLE"}}
                      for i in range(1, n_bmcs + 1)])
        done = rig.collect("done", n_bmcs, 300)
        t1 = time.monotonic()
        cycled = sum(1 for b in rig.farm.bmcs if b.events()[-2:] == ["power 0", "power 1"] and b.power() == "on")
        return {"bmcs": n_bmcs, "done": len(done), "cycled_read_back": cycled, "seconds": round(t1 - t0, 2),
                "lab_start_s": round(started, 1), "anchor_per_s": round(anchor_rate(rig, 2000), 1)}
    finally:
        rig.down()


def _exit_on_term(signum, frame) -> None:
    # SIGTERM (timeout, kill) ends the run through the rigs' finally blocks: their nsqd, BMCs and stages
    # are stopped instead of outliving the benchmark
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_term)
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--cycle-bmcs", type=int, default=500)
    ap.add_argument("--bmcs", default="1,10,100")
    ap.add_argument("--only", default="throughput,latency,cycle")
    ap.add_argument("--hook", default="", help="chassis hook command of the BMCs (default: the lab's)")
    ap.add_argument("--profile", default="", help="directory for py-spy raw profiles of both stages")
    ap.add_argument("--max-in-flight", type=int, default=256)
    ap.add_argument("--ipmi-concurrency", type=int, default=64)
    a = ap.parse_args()
    global HOOK, PROFILE, MAX_IN_FLIGHT, IPMI_CONCURRENCY
    HOOK, PROFILE = a.hook, a.profile
    MAX_IN_FLIGHT, IPMI_CONCURRENCY = a.max_in_flight, a.ipmi_concurrency
    if PROFILE:
        os.makedirs(PROFILE, exist_ok=True)
    only = a.only.split(",")
    if "latency" in only:
        print(json.dumps({"latency": latency(a.samples)}), flush=True)
    if "throughput" in only:
        for n in (int(x) for x in a.bmcs.split(",")):
            # one BMC runs its commands one after another (~100/s): fewer events keep the run short
            print(json.dumps({"throughput": throughput(n, a.events if n >= 10 else a.events // 5)}), flush=True)
    if "cycle" in only:
        print(json.dumps({"cycle": cycle_all(a.cycle_bmcs)}), flush=True)


if __name__ == "__main__":
    main()
