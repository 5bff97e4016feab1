"""Speaks for the initrd of machines that exist only as a BMC and switch ports (the rack-scale scenario).

Run inside the rack's network namespace (where metalcore's hammer proxy listens), one thread per machine,
doing what metalcore/lab/initrd/init does over HTTP: events, register, the install long-poll (again on
304/504, after 1 s on anything else), report success. After the report the machine "runs its OS" until its
BMC boots it again (a power on or reset in the BMC's events.log, e.g. the free's cycle): then it comes up in
discovery once more (register, Waiting), as a machine that PXE booted into metal-hammer would.
Prints one JSON line per step on stdout:
    {"id": ..., "step": "registered"|"waiting"|"installed"|"reported"|"rebooted"|"error", "t": epoch, ...}

    ip netns exec <rack ns> python tests/e2e/virtual_hammer.py --core 10.250.0.1:4242 machines.json
machines.json: [{"id", "macs": [mac0, mac1], "neighbors": [port mac leaf01, port mac leaf02],
                 "bmc": {"address", "user", "password", "events": <the BMC's events.log>}}, ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request

_out = threading.Lock()


def emit(mid: str, step: str, **kw) -> None:
    with _out:
        sys.stdout.write(json.dumps({"id": mid, "step": step, "t": time.time(), **kw}) + "\n")
        sys.stdout.flush()


def call(base: str, method: str, path: str, body: dict | None = None, timeout: float = 120.0) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def register_body(m: dict) -> dict:
    nics = [{"name": f"eth{i}", "mac": mac, "neighbors": [{"mac": nb, "name": None, "neighbors": []}]}
            for i, (mac, nb) in enumerate(zip(m["macs"], m["neighbors"]))]
    return {"uuid": m["id"], "cpu_cores": 1, "memory": 256 << 20, "nics": nics,
            "disks": [{"name": "vda", "size": 1 << 20, "primary": False, "partitions": []}],
            "ipmi": {"address": m["bmc"]["address"], "mac": "", "user": m["bmc"]["user"],
                     "password": m["bmc"]["password"], "interface": "lanplus", "bmcversion": "openipmi-lab",
                     "fru": {"chassis_part_number": "", "chassis_part_serial": "", "board_mfg": "",
                             "board_mfg_serial": "", "board_part_number": "", "product_manufacturer": "virtual",
                             "product_part_number": "", "product_serial": ""}},
            "bios": {"version": "virtual", "vendor": "metalcore-lab", "date": ""}}


def booted_after(events_log: str, t: float) -> bool:
    """The BMC powered the machine on or reset it after ``t`` (chassis hook lines "<epoch> <param> <value>")."""
    try:
        with open(events_log) as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for ln in lines:
        parts = ln.split()
        if len(parts) >= 3 and (parts[1:3] == ["power", "1"] or parts[1] == "reset"):
            try:
                if float(parts[0]) > t:
                    return True
            except ValueError:
                continue
    return False


def life(base: str, m: dict, deadline: float) -> None:
    while discovery(base, m, deadline):
        reported = time.time()
        while not booted_after(m["bmc"].get("events", ""), reported):
            if time.time() > deadline:
                return
            time.sleep(0.2)
        emit(m["id"], "rebooted")


def discovery(base: str, m: dict, deadline: float) -> bool:
    """One boot into the initrd: register, wait, install, report. False when the deadline passed."""
    mid = m["id"]
    while True:  # the initrd retries a failed register too
        code, _ = call(base, "POST", f"/machine/register/{mid}", register_body(m))
        if code == 200:
            break
        if time.time() > deadline:
            emit(mid, "error", code=code, what="register")
            return False
        time.sleep(1)
    emit(mid, "registered", code=code)
    call(base, "POST", f"/machine/{mid}/event", {"event": "Waiting", "message": "virtual initrd"})
    emit(mid, "waiting")
    while True:
        code, body = call(base, "GET", f"/machine/install/{mid}")
        if code == 200:
            break
        if time.time() > deadline:
            emit(mid, "error", code=code, what="install")
            return False
        if code not in (304, 504):
            time.sleep(1)
    emit(mid, "installed", code=code, bytes=len(body))
    call(base, "POST", f"/machine/{mid}/event", {"event": "Installing", "message": "virtual initrd"})
    report = {"success": True, "message": "virtual initrd", "console_password": "", "primary_disk": "",
              "os_partition": "", "initrd": "", "cmdline": "", "kernel": "", "bootloaderid": ""}
    while True:  # metal-hammer reports once; a lab without a reboot has to ask again itself
        code, _ = call(base, "POST", f"/machine/report/{mid}", report)
        if code == 200 or time.time() > deadline:
            break
        time.sleep(1)
    emit(mid, "reported", code=code)
    return code == 200


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--core", required=True, help="ip:port of metalcore's hammer proxy")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("machines")
    a = p.parse_args()
    with open(a.machines) as f:
        machines = json.load(f)
    deadline = time.time() + a.timeout
    threads = [threading.Thread(target=life, args=(f"http://{a.core}", m, deadline), daemon=True) for m in machines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    emit("-", "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
