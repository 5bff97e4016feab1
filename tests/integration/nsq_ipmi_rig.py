"""A rig for the nsq_consumer and ipmi stages as real processes: real nsqd + nsqlookupd, real ipmi_sim BMCs,
the Metal API stand-in over real HTTP. Used by tests/integration/test_nsq_ipmi.py and bench/bench_nsq_ipmi.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from metalcore.bus import EventSubscriber
from metalcore.lab import procs
from metalcore.lab.bmcs import BmcFarm
from metalcore.lab.nsq import NsqPeer
from metalcore.lab.metal_api import LabConfig, LabServer

REPO = Path(__file__).resolve().parents[2]
EDIT_KEY = "test-edit-key"
KEYS = {"Metal-View": "test-view-key", "Metal-Edit": EDIT_KEY, "Metal-Admin": "test-admin-key"}
PARTITION = "lab"
TOPIC = f"{PARTITION}-machine"


def machine_id(i: int) -> str:
    return f"00000000-0000-0000-0000-{i:012d}"


class Rig:
    """Peers + the two stages. ``root`` must be short: ipc socket paths are limited to 107 bytes."""

    def __init__(self, root: str | Path, bmcs: int = 2, **settings) -> None:
        self.root = Path(root)
        self.run_dir = str(self.root / "run")
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        self.nsq = NsqPeer(self.root / "nsq")
        self.farm = BmcFarm(self.root / "bmcs", count=bmcs)
        self.api: LabServer | None = None
        self.settings = settings
        self.procs: dict[str, subprocess.Popen] = {}
        self.sub: EventSubscriber | None = None
        self.heartbeats: set[str] = set()
        self.seen: list = []

    # --- peers ----------------------------------------------------------------------------------

    def up(self, register: bool = True) -> "Rig":
        try:
            return self._up(register)
        except BaseException:
            self.down()  # peers started before the failure must not outlive the test
            raise

    def _up(self, register: bool) -> "Rig":
        self.nsq.start()
        self.farm.start(timeout=60)
        self.api = LabServer(LabConfig(keys=dict(KEYS), partition_id=PARTITION, twin_switches=False,
                                       nsqd_http=self.nsq.nsqd_http_address,
                                       bootconfig={"imageurl": "http://x/i", "kernelurl": "http://x/k",
                                                   "commandline": ""})).start()
        if register:
            for b in self.farm.bmcs:
                self.register(b.index)
        self._create_topic()
        # heartbeats too: seeing a stage's heartbeat proves this subscription reached its socket (ZeroMQ drops
        # what a PUB sends before a SUB's subscription arrived, so a test must not publish before that)
        self.sub = EventSubscriber(self.run_dir, ["nsq", "ipmi", "heartbeat"], hwm=200000)
        return self

    def _create_topic(self) -> None:
        req = urllib.request.Request(f"http://{self.nsq.nsqd_http_address}/topic/create?topic={TOPIC}",
                                     method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        req = urllib.request.Request(
            f"http://{self.nsq.nsqd_http_address}/channel/create?topic={TOPIC}&channel=core", method="POST")
        urllib.request.urlopen(req, timeout=5).read()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            raw = urllib.request.urlopen(f"http://{self.nsq.lookupd_http_address}/lookup?topic={TOPIC}",
                                         timeout=2).read()
            if json.loads(raw).get("producers"):
                return
            time.sleep(0.05)
        raise RuntimeError("topic never reached nsqlookupd")

    def register(self, index: int, with_ipmi: bool = True) -> str:
        b = self.farm.bmc(index)
        mid = machine_id(index)
        body = {"uuid": mid, "partitionid": PARTITION, "rackid": "rack01",
                "hardware": {"cpu_cores": 1, "memory": 1024, "nics": [], "disks": []},
                "bios": {"version": "1", "vendor": "lab", "date": "2020"}, "tags": []}
        if with_ipmi:
            body["ipmi"] = {"address": b.address, "mac": "", "user": b.user, "password": b.password,
                            "interface": "lanplus", "bmcversion": "", "fru": {}}
        self.api.state.store.register_machine(body)
        return mid

    def down(self) -> None:
        for name in list(self.procs):
            self.stop_stage(name)
        if self.sub:
            self.sub.close()
        if self.api:
            self.api.stop()
        self.farm.stop()
        self.nsq.stop()

    # --- stages ---------------------------------------------------------------------------------

    def config_path(self, name: str) -> str:
        values = {
            "partition_id": PARTITION, "rack_id": "rack01", "hmac_key": EDIT_KEY, "run_dir": self.run_dir,
            "metrics_server_port": 0, "metal_api_ip": "127.0.0.1",
            "metal_api_port": self.api.port if self.api else 1,
            "mq_address": self.nsq.lookupd_http_address, "mq_lookupd_poll_interval": 1,
            "mq_requeue_delay": "200ms", "mq_max_attempts": 20, "ipmi_timeout": "10s", "ipmi_attempts": 2,
            "log_level": "info", "job_timeout": "30s",
            # the rig's machines are BMCs only and never PXE boot: the watchdog's own test turns it on
            "pxe_boot_watchdog": 0,
        }
        values.update(self.settings)
        path = os.path.join(self.root, f"{name}.toml")
        with open(path, "w") as f:
            for k, v in values.items():
                f.write(f"{k} = {json.dumps(v)}\n")
        return path

    def _recv(self, timeout: float):
        env = self.sub.recv(timeout)
        if env is not None and env.stream == "heartbeat":
            self.heartbeats.add(env.source)
            return None
        return env

    def wait_joined(self, *stages: str, timeout: float = 20.0) -> None:
        """Block until this rig's subscriber hears each stage (see up())."""
        self.heartbeats -= set(stages)
        deadline = time.monotonic() + timeout
        while not set(stages) <= self.heartbeats:
            if time.monotonic() > deadline:
                raise AssertionError(f"no heartbeat from {set(stages) - self.heartbeats} within {timeout} s")
            env = self._recv(0.2)
            if env is not None:
                self.seen.append(env)

    def start_stage(self, name: str) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("METAL_CORE_")}
        env.update(METAL_CORE_CONFIG=self.config_path(name), PYTHONUNBUFFERED="1")
        log = open(self.root / f"{name}.log", "a")
        p = subprocess.Popen([sys.executable, "-m", f"stages.{name}"], cwd=REPO, env=env, stdout=log,
                             stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = p
        if self.sub is not None:
            self.wait_joined(name)
        return p

    def kill_stage(self, name: str) -> None:
        p = self.procs.pop(name)
        os.kill(p.pid, signal.SIGKILL)
        p.wait(10)

    def stop_stage(self, name: str) -> None:
        p = self.procs.pop(name)
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    # --- events ---------------------------------------------------------------------------------

    def publish(self, body: dict | bytes, defer_ms: int = 0) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        q = f"topic={TOPIC}" + (f"&defer={defer_ms}" if defer_ms else "")
        req = urllib.request.Request(f"http://{self.nsq.nsqd_http_address}/pub?{q}", data=data, method="POST")
        urllib.request.urlopen(req, timeout=5).read()

    def mpublish(self, bodies: list[dict]) -> None:
        data = b"\n".join(json.dumps(b).encode() for b in bodies)
        req = urllib.request.Request(f"http://{self.nsq.nsqd_http_address}/mpub?topic={TOPIC}", data=data,
                                     method="POST")
        urllib.request.urlopen(req, timeout=10).read()

    def wait_event(self, name: str, pred=lambda env: True, timeout: float = 20.0):
        """The first bus event ``nsq.<name>``/``ipmi.<name>`` (already seen or coming) matching pred."""
        for env in self.seen:
            if env.name == name and pred(env):
                self.seen.remove(env)
                return env
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            env = self._recv(0.2)
            if env is None:
                continue
            if env.name == name and pred(env):
                return env
            self.seen.append(env)
        raise AssertionError(f"no bus event {name} within {timeout} s; seen: "
                             f"{[(e.name, e.body) for e in self.seen[-10:]]}")

    def collect(self, name: str, count: int, timeout: float) -> list:
        got = [e for e in self.seen if e.name == name]
        self.seen = [e for e in self.seen if e.name != name]
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            env = self._recv(0.2)
            if env is None:
                continue
            (got if env.name == name else self.seen).append(env)
        return got

    def channel_stats(self) -> dict:
        raw = urllib.request.urlopen(f"http://{self.nsq.nsqd_http_address}/stats?format=json&topic={TOPIC}",
                                     timeout=5).read()
        stats = json.loads(raw)
        for t in stats.get("topics", []):
            for c in t.get("channels", []):
                if c["channel_name"] == "core":
                    return c
        return {}


def wait_for(pred, timeout: float, what: str, interval: float = 0.02):
    return procs.wait_for(pred, timeout, interval, what)
