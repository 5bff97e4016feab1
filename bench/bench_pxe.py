#!/usr/bin/env python3
"""bench_pxe.py [--only offers,codec,drops,boot,http] [--seconds S] [--count N] [--md FILE]

The PXE stage against dnsmasq 2.90 and nginx-light, side by side in one run, on the same lab namespaces and
with the same client (root required; peers: ip, dnsmasq, qemu, ipxe-qemu, nginx, curl).

offers  ProxyDHCP offers/s and p50/p99 latency at 1, 8 and 32 requests in flight. Client: a raw socket in
        the machines' namespace (metalcore/lab/pxe_client.py), 1024 distinct MACs, a new xid per request,
        closed loop, bounded by count and time. metalcore = the real stage process (Metal API stand-in in
        its own process, decisions warmed up first); dnsmasq = ``dhcp-range=<net>,proxy`` + pxe-service.
        No site DHCP runs during this part (its lease offers would be counted as answers).
codec   in-process per-packet cost: frame+DHCP decode, the whole slow path (decode, decide, build, encode)
        and the reply-cache path, with a fake socket.
drops   the stage's raw socket under a paced flood of 20k and 40k DISCOVERs/s (PACKET_STATISTICS).
boot    QEMU BIOS and UEFI (OVMF) machine to the initrd's first marker: through metalcore (site dnsmasq gives only the IP)
        vs dnsmasq's own PXE answer + a plain Python HTTP server.
http    48 curl clients fetching a 100 MB initrd at once: the stage's HTTP server (first fetch through the
        cache, then warm) vs nginx-light serving the same file.

Results are printed as Markdown (and appended to --md if given).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalcore.lab import procs  # noqa: E402
from metalcore.lab.netns import RackNet  # noqa: E402
from metalcore.lab.site_dhcp import SiteDhcp  # noqa: E402
from metalcore.lab.pxe_stage import PxeStageProc, UpstreamFiles, add_client_veth  # noqa: E402
from metalcore.lab.pxe_client import PxeClient, bench_mac, discover_frame  # noqa: E402

KEYS = {"Metal-View": "bench-view", "Metal-Edit": "bench-edit", "Metal-Admin": "bench-admin"}
OUT: list[str] = []


def load() -> str:
    return "load average %.1f %.1f %.1f" % os.getloadavg()


def say(line: str = "") -> None:
    print(line, flush=True)
    OUT.append(line)


def version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout or r.stderr).splitlines()[0]
    except (OSError, IndexError):
        return "?"


class Lab:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.net = RackNet(state_file=work / "netns.json").up()
        self.client_if = add_client_veth(self.net.machine_ns, self.net.bridge, f"c{self.net.tag}")
        self.client = PxeClient(self.client_if, self.net.machine_ns)
        self.api_proc = None
        self.api = None

    def start_api(self, **bootconfig: str) -> None:
        from metalcore.lab.metal_api import spawn
        args = ["--single-switch", "--threads", "16"]
        for k, v in bootconfig.items():
            args += [f"--{k}", v]
        self.api_proc, self.api = spawn(*args, keys=KEYS)
        self.api.wait_ready()

    def stop_api(self) -> None:
        if self.api_proc is not None:
            self.api_proc.terminate()
            self.api_proc.wait(10)
            self.api_proc = None

    def stage(self, name: str, **env: str) -> PxeStageProc:
        st = PxeStageProc(self.work / name, rack_ns=self.net.rack_ns, rack_if=self.net.rack_if,
                          cidr=f"{self.net.rack_ip}/24", metal_api_url=self.api.url, hmac_key=KEYS["Metal-Edit"],
                          extra_env={"METAL_CORE_BOOT_DECISION_CACHE": "600s", **env})
        return st.start()

    def client_ip(self, ip: str = "10.250.0.250") -> str:
        subprocess.run(["ip", "-n", self.net.machine_ns, "addr", "replace", f"{ip}/24", "dev", self.client_if],
                       check=True)
        return ip

    def close(self) -> None:
        self.client.close()
        self.stop_api()
        self.net.down()


# --- offers ------------------------------------------------------------------------------------------

def warm(client: PxeClient, macs: int) -> int:
    """One DISCOVER per MAC until each got an answer (the first ones wait for the Metal API)."""
    missing = set(range(macs))
    for _round in range(20):
        for i in list(missing):
            client.sock.send(discover_frame(bench_mac(i), 0x7000 + i))
        for _t, _u, p in client.replies(1.0):
            i = int.from_bytes(p.chaddr[2:6], "big")
            if p.xid == 0x7000 + i:
                missing.discard(i)
        if not missing:
            break
    return macs - len(missing)


def _dnsmasq_proxy(lab: Lab):
    conf = lab.work / "dnsmasq-proxy.conf"
    conf.write_text("\n".join([
        "port=0", f"interface={lab.net.rack_if}", "bind-interfaces",
        f"dhcp-range={lab.net.network.network_address},proxy",
        "dhcp-userclass=set:ipxe,iPXE", f"pxe-service=tag:ipxe,x86PC,\"metalcore\",http://{lab.net.rack_ip}:4280/ipxe",
        "pxe-service=tag:!ipxe,x86PC,\"iPXE\",undionly.kpxe", f"dhcp-leasefile={lab.work / 'proxy.leases'}",
    ]) + "\n")
    return procs.spawn("bench-dnsmasq-proxy", lab.net.exec_prefix() + ["dnsmasq", "--no-daemon", f"--conf-file={conf}"],
                       cwd=lab.work, log=lab.work / "dnsmasq-proxy.out")


def run_offers(lab: Lab, seconds: float, count: int, reps: int) -> dict:
    """``reps`` rounds, each: metalcore at 1/8/32 in flight, then dnsmasq at 1/8/32 (interleaved, so
    that the noise of this shared 2-core machine hits both alike)."""
    results: dict = {}
    macs = 1024
    lab.start_api(kernelurl="http://127.0.0.1:1/k", imageurl="http://127.0.0.1:1/i", commandline="console=ttyS0")
    try:
        for rep in range(reps):
            st = lab.stage(f"offers{rep}")
            try:
                t0 = time.monotonic()
                ok = warm(lab.client, macs)
                if rep == 0:
                    say(f"- metalcore warm-up: {ok}/{macs} MACs decided in {time.monotonic() - t0:.1f} s "
                        "(the Metal API stand-in asked once per MAC)")
                for n in (1, 8, 32):
                    cpu0 = _cpu_s(st.proc.pid)[0]
                    s = lab.client.closed_loop(n, count=count, seconds=seconds, macs=macs).summary()
                    s["cpu_us"] = _cpu_us_per(st.proc.pid, cpu0, s["answered"])
                    results.setdefault(("metalcore", n), []).append(s)
                    if not s["answered"]:
                        say(f"- round {rep}, {n} in flight: no answer; stage log tail: "
                            f"{procs.log_tail(st.log, 8)!r}")
                results["metalcore_rss_mb"] = _rss(st.proc.pid)
            finally:
                st.stop()
            dns = _dnsmasq_proxy(lab)
            try:
                time.sleep(0.5)
                ok = warm(lab.client, 16)
                if rep == 0:
                    say(f"- dnsmasq proxy mode answers: {ok}/16 warm-up MACs")
                for n in (1, 8, 32):
                    cpu0 = _cpu_s(dns.pid)[0]
                    s = lab.client.closed_loop(n, count=count, seconds=seconds, macs=macs).summary()
                    s["cpu_us"] = _cpu_us_per(dns.pid, cpu0, s["answered"])
                    results.setdefault(("dnsmasq", n), []).append(s)
                results["dnsmasq_rss_mb"] = _rss(dns.pid)
            finally:
                procs.stop(dns)
    finally:
        lab.stop_api()
    return results


def _cpu_us_per(pid: int, cpu0: float, answered: int) -> float:
    return round((_cpu_s(pid)[0] - cpu0) / answered * 1e6, 1) if answered else float("nan")


def _rss(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return float("nan")


# --- codec -------------------------------------------------------------------------------------------

def run_codec(seconds: float) -> list[tuple[str, float]]:
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "pxe"))
    from test_responder import make  # the unit tests' fakes: socket, decider, Metal API
    from metalcore.protocol import dhcp, frames
    from metalcore.lab.pxe_client import discover_frame
    from metalcore.pxe.rawsock import Received

    frs = [discover_frame(bench_mac(i), i + 1) for i in range(256)]
    out = []

    def rate(label, fn):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for f in frs:
                fn(f)
            n += len(frs)
        out.append((label, n / (time.perf_counter() - t0)))

    rate("frame + DHCP decode (frames.decode_udp_frame + dhcp.decode)",
         lambda f: dhcp.decode(frames.decode_udp_frame(f).payload))
    r, w, *_ = make()
    for f in frs:
        w.handle(Received(f, 1, False), time.perf_counter())
    time.sleep(0.3)
    w.fast = None
    rate("slow path: decode + decide (cached) + build + encode + send", lambda f: w.handle(Received(f, 1, False), time.perf_counter()))
    w.fast = r.fast_answer
    rate("reply-cache path (a repeat: new xid, same client)", lambda f: w.handle(Received(f, 1, False), time.perf_counter()))
    return out


# --- drops -------------------------------------------------------------------------------------------

def run_drops(lab: Lab) -> list[dict]:
    lab.start_api(kernelurl="http://127.0.0.1:1/k", imageurl="http://127.0.0.1:1/i", commandline="console=ttyS0")
    st = lab.stage("drops")
    rows = []
    try:
        warm(lab.client, 1024)
        for pps in (20_000, 40_000):
            d0, p0 = st.metric("metalcore_pxe_socket_drops_total"), st.metric("metalcore_pxe_dhcp_packets_total", direction="in")
            o0 = st.metric("metalcore_pxe_proxy_replies_total")
            t0 = time.monotonic()
            sent = lab.client.paced(pps, 5.0)
            dt = time.monotonic() - t0
            time.sleep(2.5)  # the stage polls PACKET_STATISTICS every second
            rows.append({"target_pps": pps, "sent": sent, "send_pps": round(sent / dt),
                         "kernel_drops": st.metric("metalcore_pxe_socket_drops_total") - d0,
                         "seen": st.metric("metalcore_pxe_dhcp_packets_total", direction="in") - p0,
                         "offers": st.metric("metalcore_pxe_proxy_replies_total") - o0})
    finally:
        st.stop()
        lab.stop_api()
    return rows


# --- boot --------------------------------------------------------------------------------------------

def run_boot(lab: Lab, runs: int = 1, firmware: str = "bios") -> dict:
    from metalcore.lab.images import ensure_images
    from metalcore.lab.machines import MachineFactory
    from metalcore.lab.site_dhcp import ReferenceBootServer

    imgs = ensure_images()
    up_dir = lab.work / "upstream-boot"
    up_dir.mkdir(exist_ok=True)
    shutil.copy(imgs.kernel, up_dir / "vmlinuz")
    shutil.copy(imgs.initrd, up_dir / "initrd.img")
    up = UpstreamFiles(up_dir).start()
    factory = MachineFactory(lab.net, lab.work / f"machines-{firmware}")
    idx0 = 10 if firmware == "bios" else 40  # taps live until the lab closes: one index range per firmware
    res: dict[str, list[float]] = {"metalcore": [], "reference": []}
    first = "METALCORE-MARKER initrd-started"
    try:
        lab.start_api(kernelurl=up.url("vmlinuz"), imageurl=up.url("initrd.img"),
                      commandline="console=ttyS0 panic=-1 quiet")
        dhcp = SiteDhcp(lab.net, lab.work / "site-dhcp").start()
        st = lab.stage("boot")
        try:
            for i in range(runs):
                m = factory.create(firmware=firmware, index=idx0 + i)
                t0 = m.start()
                res["metalcore"].append(round(m.console.wait_for(first, 180).time - t0, 2))
                m.stop()
        finally:
            st.stop()
            dhcp.stop()
            lab.stop_api()
        ref = ReferenceBootServer(lab.net, lab.work / "ref-http", imgs.kernel, imgs.initrd).start()
        rdhcp = SiteDhcp(lab.net, lab.work / "ref-dhcp", boot_url=ref.boot_url).start()
        try:
            for i in range(runs):
                m = factory.create(firmware=firmware, index=idx0 + 10 + i)
                t0 = m.start()
                res["reference"].append(round(m.console.wait_for(first, 180).time - t0, 2))
                m.stop()
        finally:
            rdhcp.stop()
            ref.stop()
    finally:
        factory.close()
        up.stop()
    return res


# --- http --------------------------------------------------------------------------------------------

def curl_many(lab: Lab, url: str, n: int) -> dict:
    """n curl processes at once in the machines' namespace; aggregate throughput over the wall time."""
    t0 = time.monotonic()
    ps = [subprocess.Popen(lab.net.exec_prefix(lab.net.machine_ns) + [
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}\n", url],
        stdout=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate()[0].split() for p in ps]
    wall = time.monotonic() - t0
    ok = [o for o in outs if o and o[0] == "200"]
    total = sum(int(o[1]) for o in ok)
    return {"clients": n, "ok": len(ok), "bytes": total, "wall_s": round(wall, 2),
            "MB_per_s": round(total / wall / 1e6), "slowest_s": round(max(float(o[2]) for o in ok), 2) if ok else None}


def _cpu_s(pid: int) -> tuple[float, float]:
    """(user+system, user) CPU seconds of ``pid`` (all its threads) and of its live children (nginx workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = user = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            st = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(d) == pid or int(st[1]) == pid:
            user += int(st[11])
            total += int(st[11]) + int(st[12])
    return total / tick, user / tick


def _busy_loops(n: int) -> list[subprocess.Popen]:
    """n CPU-bound processes at nice 0, each in its own session: with autogroup scheduling each one is a
    separate group, like another session's job on this shared machine, so they compete with the servers
    (their own sessions) and with the curl clients alike."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
            for _ in range(n)]


def _nginx(lab: Lab, files: Path, workers: str, port: int):
    ngdir = lab.work / f"nginx-{workers}"
    (ngdir / "logs").mkdir(parents=True, exist_ok=True)
    (ngdir / "nginx.conf").write_text(f"""
user root;
worker_processes {workers};
pid {ngdir}/nginx.pid;
error_log {ngdir}/logs/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; tcp_nopush on; keepalive_timeout 5;
  client_body_temp_path {ngdir}/tmp; proxy_temp_path {ngdir}/tmp; fastcgi_temp_path {ngdir}/tmp;
  uwsgi_temp_path {ngdir}/tmp; scgi_temp_path {ngdir}/tmp;
  server {{ listen {lab.net.rack_ip}:{port}; root {files}; }}
}}
""")
    return procs.spawn(f"bench-nginx-{workers}", lab.net.exec_prefix() + [
        "nginx", "-c", str(ngdir / "nginx.conf"), "-p", str(ngdir), "-g", "daemon off;"], cwd=ngdir,
        log=ngdir / "nginx.out")


def run_http(lab: Lab, clients: int = 48, size_mb: int = 100, rounds: int = 3, busy: int = 0) -> dict:
    """The stage and two nginx-light (worker_processes auto = 2, and 1) all listen at once; the first
    fetch goes through the stage's cold cache, then rounds alternate stage / nginx auto / nginx 1.
    With ``busy`` > 0 the interleaved rounds are repeated with that many busy-loop processes running
    (deliberate CPU contention, the same for every server). Each round also records the server's CPU
    seconds (all threads / workers)."""
    files = lab.work / "www"
    files.mkdir(exist_ok=True)
    big = files / "initrd-100m.img"
    if not big.exists():
        with open(big, "wb") as f:
            for _ in range(size_mb):
                f.write(os.urandom(1 << 20))
    up = UpstreamFiles(files).start()
    lab.client_ip()
    res: dict = {}
    ngs = []
    try:
        lab.start_api(kernelurl=up.url("initrd-100m.img"), imageurl=up.url("initrd-100m.img"),
                      commandline="console=ttyS0")
        st = lab.stage("http")
        ngs = [_nginx(lab, files, "auto", 8081), _nginx(lab, files, "1", 8082)]
        try:
            time.sleep(0.5)
            script = subprocess.run(lab.net.exec_prefix(lab.net.machine_ns) + [
                "curl", "-s", f"http://{lab.net.rack_ip}:4280/ipxe/02:be:00:00:ff:01"],
                capture_output=True, text=True, check=True).stdout
            url = next(w for ln in script.splitlines() if ln.startswith("initrd") for w in ln.split()
                       if w.startswith("http://"))
            res[("metalcore", "cold cache")] = [curl_many(lab, url, clients)]
            targets = [("metalcore", url), ("nginx workers=auto(2)", f"http://{lab.net.rack_ip}:8081/{big.name}"),
                       ("nginx workers=1", f"http://{lab.net.rack_ip}:8082/{big.name}")]
            pids = {"metalcore": st.proc.pid, "nginx workers=auto(2)": ngs[0].pid, "nginx workers=1": ngs[1].pid}
            for kind, n_busy in [("warm", 0)] + ([(f"warm, {busy} busy loops", busy)] if busy else []):
                hogs = _busy_loops(n_busy)
                try:
                    for i in range(rounds):
                        # The order rotates from round to round: on this shared machine the load drifts
                        # within a minute, and a fixed order (metalcore always first) turned a falling
                        # load into an apparent 0.2-0.4x for whoever ran first (run 05:00).
                        for name, u in targets[i % len(targets):] + targets[:i % len(targets)]:
                            cpu0, user0 = _cpu_s(pids[name])
                            r = curl_many(lab, u, clients)
                            cpu1, user1 = _cpu_s(pids[name])
                            r["cpu_s"] = f"{cpu1 - cpu0:.2f} ({user1 - user0:.2f})"
                            res.setdefault((name, kind), []).append(r)
                finally:
                    for h in hogs:
                        h.kill()
                        h.wait()
            res["metalcore_rss_mb"] = _rss(st.proc.pid)
        finally:
            st.stop()
            lab.stop_api()
    finally:
        for ng in ngs:
            procs.stop(ng)
        up.stop()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="codec,offers,drops,boot,http")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="http: also run the rounds with N busy-loop processes")
    ap.add_argument("--md", default="")
    ap.add_argument("--firmware", default="bios,uefi", help="boot: bios, uefi or both")
    ap.add_argument("--boot-runs", type=int, default=1, help="boot: machines per firmware and server")
    a = ap.parse_args()
    only = set(a.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-pxe-"))
    say(f"## Run {time.strftime('%Y-%m-%d %H:%M:%S')}: `{' '.join(sys.argv)}`")
    say(f"{os.cpu_count()} cores; Python {sys.version.split()[0]}; {version(['dnsmasq', '--version'])}; "
        f"{version(['nginx', '-v'])}; {version(['curl', '--version'])[:40]}; {load()} at the start")
    say()
    if "codec" in only:
        say("### codec (in-process, per packet)")
        say("| path | packets/s | µs/packet |")
        say("|---|---:|---:|")
        for label, r in run_codec(min(a.seconds, 2.0)):
            say(f"| {label} | {r:,.0f} | {1e6 / r:.1f} |")
        say()
    lab = Lab(work)
    try:
        if "offers" in only:
            say("### ProxyDHCP offers (closed loop, 1024 MACs, new xid per request)")
            r = run_offers(lab, a.seconds, a.count, a.reps)
            say("| server | in flight | offers/s per round | median offers/s | p50 ms (median) | p99 ms per round "
                "| p99 ms (median) | server CPU µs/offer (median) | lost |")
            say("|---|---:|---|---:|---:|---|---:|---:|---:|")
            for (srv, n), runs in [(k, v) for k, v in r.items() if isinstance(k, tuple)]:
                med = sorted(x["per_s"] for x in runs)[len(runs) // 2]
                p50 = sorted(x["p50_ms"] for x in runs)[len(runs) // 2]
                p99 = sorted(x["p99_ms"] for x in runs)[len(runs) // 2]
                cpu = sorted(x["cpu_us"] for x in runs)[len(runs) // 2]
                say(f"| {srv} | {n} | {', '.join(format(x['per_s'], ',') for x in runs)} | "
                    f"{med:,} | {p50} | {', '.join(str(x['p99_ms']) for x in runs)} | {p99} | {cpu} | "
                    f"{sum(x['lost'] for x in runs)} |")
            for n in (1, 8, 32):
                mc, dm = r.get(("metalcore", n)), r.get(("dnsmasq", n))
                if mc and dm:
                    rate = sorted(x["per_s"] for x in mc)[len(mc) // 2] / max(1, sorted(x["per_s"] for x in dm)[len(dm) // 2])
                    p99 = sorted(x["p99_ms"] for x in mc)[len(mc) // 2] / sorted(x["p99_ms"] for x in dm)[len(dm) // 2]
                    say(f"- {n} in flight: metalcore/dnsmasq offers/s {rate:.2f}x (goal >= 0.5x), "
                        f"p99 {p99:.2f}x (goal <= 2x)")
            say(f"RSS after the run: metalcore {r['metalcore_rss_mb']} MB, dnsmasq {r['dnsmasq_rss_mb']} MB")
            say()
        if "drops" in only:
            say("### raw socket under a paced flood (5 s each, metalcore answering)")
            say("| target pps | sent | send pps | seen by stage | kernel drops | offers |")
            say("|---:|---:|---:|---:|---:|---:|")
            for row in run_drops(lab):
                say(f"| {row['target_pps']:,} | {row['sent']:,} | {row['send_pps']:,} | {row['seen']:,.0f} | "
                    f"{row['kernel_drops']:,.0f} | {row['offers']:,.0f} |")
            say()
        if "boot" in only:
            for fw in a.firmware.split(","):
                say(f"### QEMU {fw.upper()} PXE boot to the initrd's first marker (s after QEMU start)")
                r = run_boot(lab, runs=a.boot_runs, firmware=fw)
                say(f"- through metalcore (site dnsmasq: IP only): {r['metalcore']}")
                say(f"- reference (dnsmasq full PXE + Python http.server): {r['reference']}")
                say()
        if "http" in only:
            say("### 48 clients fetching a 100 MB initrd at once")
            r = run_http(lab, rounds=a.reps, busy=a.busy)
            say("| server | cache | MB/s per round | median MB/s | vs best nginx | slowest client s (median) "
                "| server CPU s per round (user) | ok |")
            say("|---|---|---|---:|---:|---:|---|---:|")
            meds = {k: sorted(x["MB_per_s"] for x in v)[len(v) // 2] for k, v in r.items() if isinstance(k, tuple)}
            for (name, kind), runs in [(k, v) for k, v in r.items() if isinstance(k, tuple)]:
                slow = sorted(x["slowest_s"] or 0 for x in runs)[len(runs) // 2]
                best = max((m for (n2, k2), m in meds.items() if n2.startswith("nginx") and k2 == kind), default=0)
                ratio = f"{meds[(name, kind)] / best:.2f}x" if best and name == "metalcore" else ""
                say(f"| {name} | {kind} | {', '.join(format(x['MB_per_s'], ',') for x in runs)} | "
                    f"{meds[(name, kind)]:,} | {ratio} | {slow} | {', '.join(str(x.get('cpu_s', '')) for x in runs)} | "
                    f"{sum(x['ok'] for x in runs)}/{sum(x['clients'] for x in runs)} |")
            if a.busy:
                say(f"(rows \"warm, {a.busy} busy loops\": {a.busy} `while True: pass` processes at nice 0, each in its "
                    "own session, ran during those rounds, for every server alike)")
            say(f"stage RSS after the HTTP runs: {r.get('metalcore_rss_mb')} MB")
            say()
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    say(f"{load()} at the end (the machine is shared: other sessions' jobs run at the same time)")
    if a.md:
        with open(a.md, "a") as f:
            f.write("\n".join(OUT) + "\n\n")


if __name__ == "__main__":
    main()
