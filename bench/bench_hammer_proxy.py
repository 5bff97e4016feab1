"""Benchmark of the hammer proxy: added latency and forwarded requests/s beside nginx, and 500 held
install long-polls (memory, CPU).

    .venv/bin/python bench/bench_hammer_proxy.py [--seconds 3] [--paced-rate 1000] [--long-polls 500] [--out FILE]

Setup (all on free ports, all killed by pid at the end):
* upstream: nginx answering ``GET /v1/machine/<id>`` with a static 1.6 KB machine JSON (the fastest
  upstream this box has, so the proxies are what is measured);
* nginx (Debian nginx-light, 1 worker) as a reverse proxy to it, keep-alive upstream connections;
* the hammer_proxy stage (``python -m stages.hammer_proxy``: waitress + Flask + the Metal API client's
  pooled HTTP/1.1 connections, HMAC signing)
  forwarding ``GET /machine/<id>`` to the same upstream.
The load generator (separate processes, keep-alive http.client connections, closed loop) runs at 1, 16
and 128 concurrent clients against the upstream directly, through nginx and through the hammer proxy
(saturation: every client sends its next request at once), then with 16 and 128 clients paced to
offer ``--paced-rate`` requests/s together (the latency added below saturation).
"added" = p50 through the proxy minus p50 direct.

Long-polls: a tiny asyncio upstream that holds every ``GET /v1/machine/<id>/wait`` for 20 s and then
answers metal-api's 504 "server timeout" (the Metal API stand-in's waitress accepts only 100 connections,
which would measure the stand-in); N concurrent ``GET /machine/install/<id>`` through a second
hammer_proxy are held until that 504 turns them into 304. RSS and CPU of the hammer process are read from
/proc while they are held, the held count from its long_polls_held gauge.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metalcore.lab.ports import free_tcp_port  # noqa: E402

MACHINE_JSON = json.dumps({
    "id": "00000000-0000-0000-0000-000000000001", "name": "m1", "description": "", "created": "2020-01-01T00:00:00Z",
    "changed": "2020-01-01T00:00:00Z", "rackid": "rack-1", "liveliness": "Alive", "tags": [],
    "partition": {"id": "lab", "name": "lab", "description": "", "bootconfig": {
        "imageurl": "http://lab/initrd", "kernelurl": "http://lab/kernel", "commandline": "console=ttyS0"}},
    "size": {"id": "c1-xlarge-x86", "name": "c1", "description": "", "constraints": []},
    "hardware": {"cpu_cores": 16, "memory": 68719476736, "nics": [
        {"name": f"eth{i}", "mac": f"aa:bb:cc:dd:ee:0{i}", "neighbors": [{"name": "swp1", "mac": "11:22:33:44:55:66",
                                                                       "neighbors": []}]} for i in range(2)],
        "disks": [{"name": "/dev/sda", "size": 480103981056, "partitions": []}]},
    "bios": {"version": "2.0", "vendor": "lab", "date": "2020-01-01"},
    "state": {"value": "", "description": ""}, "ledstate": {"value": "LED-OFF", "description": ""},
    "events": {"log": [{"event": "Waiting", "message": "", "time": "2020-01-01T00:00:00Z"}],
               "last_event_time": "2020-01-01T00:00:00Z", "incomplete_provisioning_cycles": "0"},
    "allocation": None}, separators=(",", ":"))


free_port = free_tcp_port  # one implementation: metalcore.lab.ports


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


# --- load generator ------------------------------------------------------------------------------------

def _client_proc(port: int, paths: list[str], threads: int, deadline: float, warmup: float, out,
                 interval: float = 0.0) -> None:
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, bad, path = [], 0, paths[i % len(paths)]
        # paced: each client sends every ``interval`` s (offset so that clients do not send together)
        next_at = time.perf_counter() + (interval * i / threads if interval else 0.0)
        while True:
            if interval:
                pause = next_at - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                next_at += interval
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            try:
                conn.request("GET", path)
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            t1 = time.perf_counter()
            if t0 >= warmup:
                if ok:
                    mine.append(t1 - t0)
                else:
                    bad += 1
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put((lat, errors[0]))


def load(port: int, path: str, concurrency: int, seconds: float, rate: float = 0.0) -> dict:
    """Closed-loop load: ``concurrency`` clients over up to 4 processes; latencies after 0.5 s warm-up.

    ``rate`` > 0: the clients together offer about that many requests/s (each client paced), to see
    the latency added at a given load rather than at saturation (a late request is not made up for)."""
    procs_n = min(concurrency, 4)
    per = [concurrency // procs_n + (1 if i < concurrency % procs_n else 0) for i in range(procs_n)]
    q: mp.Queue = mp.Queue()
    start = time.perf_counter() + 0.3
    warmup, deadline = start + 0.5, start + 0.5 + seconds
    interval = concurrency / rate if rate else 0.0
    procs = [mp.Process(target=_client_proc, args=(port, [path], n, deadline, warmup, q, interval)) for n in per]
    for p in procs:
        p.start()
    lat, errors = [], 0
    for _ in procs:
        l, e = q.get()
        lat += l
        errors += e
    for p in procs:
        p.join()
    lat.sort()
    pct = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1e3 if lat else float("nan")  # noqa: E731
    return {"rps": len(lat) / seconds, "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "errors": errors,
            "n": len(lat)}


# --- peers -------------------------------------------------------------------------------------------------

NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream metal {{ server 127.0.0.1:{up}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{up};
        location /v1/machine/ {{ default_type application/json; return 200 '{body}'; }}
    }}
    server {{
        listen 127.0.0.1:{proxy};
        location / {{ proxy_pass http://metal; proxy_http_version 1.1; proxy_set_header Connection ""; }}
    }}
}}
"""


def start_nginx(tmp: str, up: int, proxy: int) -> subprocess.Popen:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = os.path.join(tmp, "nginx.conf")
    Path(conf).write_text(NGINX_CONF.format(d=tmp, up=up, proxy=proxy, body=MACHINE_JSON.replace("'", "\\'")))
    proc = subprocess.Popen([nginx, "-c", conf, "-p", tmp, "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(up)
    wait_port(proxy)
    return proc


def start_hammer(api_port: int, port: int, run_dir: str, metrics_base: int = 0, threads: int = 640) -> subprocess.Popen:
    env = {**os.environ, "METAL_CORE_CIDR": "10.0.0.1/24", "METAL_CORE_PARTITION_ID": "lab",
           "METAL_CORE_RACK_ID": "rack-1", "METAL_CORE_HMAC_KEY": "lab-edit-key",
           "METAL_CORE_METAL_API_IP": "127.0.0.1", "METAL_CORE_METAL_API_PORT": str(api_port),
           "METAL_CORE_PORT": str(port), "METAL_CORE_BIND_ADDRESS": "127.0.0.1", "METAL_CORE_RUN_DIR": run_dir,
           "METAL_CORE_METRICS_SERVER_PORT": str(metrics_base), "METAL_CORE_LOG_LEVEL": "warning",
           "METAL_CORE_HAMMER_THREADS": str(threads)}
    proc = subprocess.Popen([sys.executable, "-m", "stages.hammer_proxy"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


# --- the two parts -------------------------------------------------------------------------------------------

def bench_forwarding(seconds: float, paced_rate: float = 1000.0) -> list[dict]:
    tmp = tempfile.mkdtemp(prefix="mc-bench-")
    up, proxy, hp = free_port(), free_port(), free_port()
    nginx = start_nginx(tmp, up, proxy)
    hammer = start_hammer(up, hp, os.path.join(tmp, "run"))
    rows = []
    try:
        mid = "00000000-0000-0000-0000-000000000001"
        # sanity: the hammer forwards and answers the upstream's machine
        c = http.client.HTTPConnection("127.0.0.1", hp)
        c.request("GET", f"/machine/{mid}")
        r = c.getresponse()
        assert r.status == 200 and json.loads(r.read())["id"] == mid, r.status
        for conc in (1, 16, 128):
            direct = load(up, f"/v1/machine/{mid}", conc, seconds)
            via_nginx = load(proxy, f"/v1/machine/{mid}", conc, seconds)
            via_hammer = load(hp, f"/machine/{mid}", conc, seconds)
            rows.append({"concurrency": conc, "direct": direct, "nginx": via_nginx, "hammer": via_hammer})
            print(f"c={conc:4d} direct p50 {direct['p50']:.3f} ms {direct['rps']:.0f}/s | nginx p50 "
                  f"{via_nginx['p50']:.3f} ms {via_nginx['rps']:.0f}/s | hammer p50 {via_hammer['p50']:.3f} ms "
                  f"{via_hammer['rps']:.0f}/s (errors {via_hammer['errors']})", flush=True)
        # the same clients offering paced_rate requests/s in all: the latency added below saturation
        for conc in (16, 128) if paced_rate else ():
            direct = load(up, f"/v1/machine/{mid}", conc, seconds, paced_rate)
            via_nginx = load(proxy, f"/v1/machine/{mid}", conc, seconds, paced_rate)
            via_hammer = load(hp, f"/machine/{mid}", conc, seconds, paced_rate)
            rows.append({"concurrency": conc, "rate": paced_rate, "direct": direct, "nginx": via_nginx,
                         "hammer": via_hammer})
            print(f"c={conc:4d} @{paced_rate:.0f}/s direct p50 {direct['p50']:.3f} ms | nginx p50 "
                  f"{via_nginx['p50']:.3f} ms | hammer p50 {via_hammer['p50']:.3f} p99 {via_hammer['p99']:.2f} ms "
                  f"{via_hammer['rps']:.0f}/s (errors {via_hammer['errors']})", flush=True)
    finally:
        stop(hammer)
        stop(nginx)
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


WAIT_UPSTREAM = r"""
import asyncio, sys
HOLD = float(sys.argv[2])
BODY = b'{"statuscode":504,"message":"server timeout"}'
async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if b"/wait " in head.split(b"\r\n", 1)[0]:
                await asyncio.sleep(HOLD)
            writer.write(b"HTTP/1.1 504 Gateway Timeout\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await srv.serve_forever()
asyncio.run(main())
"""


def bench_long_polls(n: int, wait_timeout: float = 20.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="mc-bench-lp-")
    up = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", WAIT_UPSTREAM, str(up), str(wait_timeout)])
    hp, metrics_base = free_port(), free_port()
    hammer = None
    try:
        wait_port(up)
        hammer = start_hammer(up, hp, os.path.join(tmp, "run"), metrics_base=metrics_base - 1,
                              threads=n + 140)
        ids = [f"00000000-0000-0000-0000-{i:012d}" for i in range(n)]
        time.sleep(0.5)
        rss_before, threads_before = rss_mib(hammer.pid), threads_of(hammer.pid)
        statuses: list[int] = []
        lock = threading.Lock()

        def poll(mid: str) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", hp, timeout=wait_timeout + 30)
            try:
                conn.request("GET", f"/machine/install/{mid}")
                r = conn.getresponse()
                r.read()
                st = r.status
            except OSError:
                st = -1
            with lock:
                statuses.append(st)

        t0 = time.monotonic()
        ts = [threading.Thread(target=poll, args=(mid,), daemon=True) for mid in ids]
        for t in ts:
            t.start()
        # wait until all are held (gauge), then measure CPU over a 5 s window while they are held
        held = 0
        while time.monotonic() - t0 < wait_timeout - 7:
            held = gauge(metrics_base, "metalcore_hammer_proxy_long_polls_held")
            if held >= n:
                break
            time.sleep(0.2)
        all_held_after = time.monotonic() - t0
        cpu0, w0 = cpu_seconds(hammer.pid), time.monotonic()
        time.sleep(5)
        cpu1, w1 = cpu_seconds(hammer.pid), time.monotonic()
        held_during = gauge(metrics_base, "metalcore_hammer_proxy_long_polls_held")
        rss_during = rss_mib(hammer.pid)
        for t in ts:
            t.join(wait_timeout + 40)
        return {"n": n, "held": int(held_during), "all_held_after_s": all_held_after,
                "rss_before_mib": rss_before, "rss_held_mib": rss_during,
                "threads": threads_before, "cpu_while_held_pct": 100 * (cpu1 - cpu0) / (w1 - w0),
                "answered_304": statuses.count(304), "other": len(statuses) - statuses.count(304),
                "total_s": time.monotonic() - t0}
    finally:
        if hammer is not None:
            stop(hammer)
        stop(upstream)
        shutil.rmtree(tmp, ignore_errors=True)


def gauge(metrics_port: int, name: str) -> float:
    c = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--long-polls", type=int, default=500)
    ap.add_argument("--paced-rate", type=float, default=1000.0,
                    help="requests/s offered by 16 and 128 paced clients (0: skip those points)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = bench_forwarding(args.seconds, args.paced_rate)
    lp = bench_long_polls(args.long_polls)
    print(json.dumps(lp, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"forwarding": rows, "long_polls": lp}, indent=1))


if __name__ == "__main__":
    main()
