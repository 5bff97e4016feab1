"""Jobs through the bus: throughput and restart-to-resume time, beside a bare ZeroMQ DEALER/ROUTER echo.

    .venv/bin/python bench/bench_bus.py [--jobs 20000]

The worker is a real process (tests/e2e/job_effect_worker.py, no-op handler); the anchor is a bare ROUTER
echo in a process of its own with the same socket type and transport, so the ratio is what our envelope,
ack, journal and Future bookkeeping cost.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from metalcore.bus import JobClient  # noqa: E402

ECHO = """
import sys, zmq
s = zmq.Context().socket(zmq.ROUTER); s.bind(sys.argv[1])
while True:
    s.send_multipart(s.recv_multipart())
"""


def bare_echo(run_dir: str, n: int) -> float:
    ep = f"ipc://{run_dir}/echo.sock"
    p = subprocess.Popen([sys.executable, "-c", ECHO, ep])
    try:
        d = zmq.Context.instance().socket(zmq.DEALER)
        d.connect(ep)
        d.send_multipart([b"warm", b"{}"])
        d.recv_multipart()
        t0 = time.perf_counter()
        window = 1000
        sent = got = 0
        while got < n:
            while sent < n and sent - got < window:
                d.send_multipart([b"ipmi.noop", b'{"n": %d}' % sent])
                sent += 1
            d.recv_multipart()
            got += 1
        return n / (time.perf_counter() - t0)
    finally:
        p.kill()
        p.wait()


def start_worker(run_dir: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "tests/e2e/job_effect_worker.py"), run_dir,
                             os.path.join(run_dir, "effects")], stderr=subprocess.DEVNULL)


def metalcore_jobs(run_dir: str, n: int) -> tuple[float, float]:
    worker = start_worker(run_dir)
    client = JobClient(run_dir, "jobtest", "bench")
    try:
        client.call("noop", {"n": -1}, timeout=10)
        t0 = time.perf_counter()
        window = 1000
        futures = []
        for i in range(n):
            futures.append(client.submit("noop", {"n": i}))
            if len(futures) >= window:
                futures.pop(0).result(30)
        for f in futures:
            f.result(30)
        rate = n / (time.perf_counter() - t0)
        # restart-to-resume: kill -9, start a new worker, time until a job sent meanwhile has its result
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        fut = client.submit("noop", {"n": -2})
        t1 = time.perf_counter()
        worker = start_worker(run_dir)
        fut.result(30)
        resume = time.perf_counter() - t1
        return rate, resume
    finally:
        client.close()
        worker.kill()
        worker.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mcb-") as d:
        echo = bare_echo(d, args.jobs)
        rate, resume = metalcore_jobs(d, args.jobs)
    print(f"bare ZeroMQ DEALER/ROUTER echo: {echo:,.0f} msgs/s")
    print(f"metalcore jobs (ack + result + journal): {rate:,.0f} jobs/s  (ratio {rate / echo:.2f} of bare)")
    print(f"restart-to-resume (start of a new worker process -> result of a job sent while it was down): {resume * 1000:.0f} ms")


if __name__ == "__main__":
    main()
