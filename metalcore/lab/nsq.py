"""nsqd + nsqlookupd v1.3.0 on loopback, for the lab.

The binaries come from scripts/build-nsq (into <repo>/.lab-bin, or $METALCORE_LAB_BIN); when
missing we run that script once.  Both listen on free loopback ports, nsqd registers with
nsqlookupd, and "ready" means both answer GET /ping and nsqlookupd lists our nsqd.
``restart()`` stops and starts on the same ports, for fault tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.ports import HOST, free_tcp_ports, tcp_port_free
from metalcore.lab.procs import LabError, MissingPeerBinary, ProcRecord

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-nsq"


def lab_bin_dir() -> Path:
    return Path(os.environ.get("METALCORE_LAB_BIN", REPO / ".lab-bin"))


def ensure_nsq_binaries(bin_dir: Path | None = None) -> tuple[str, str]:
    """Paths of nsqd and nsqlookupd, building them with scripts/build-nsq if missing."""
    bin_dir = Path(bin_dir or lab_bin_dir())
    nsqd, lookupd = bin_dir / "nsqd", bin_dir / "nsqlookupd"
    if not (os.access(nsqd, os.X_OK) and os.access(lookupd, os.X_OK)):
        if BUILD_SCRIPT.exists():
            r = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=900,
                               env={**os.environ, "METALCORE_LAB_BIN": str(bin_dir)})
            if r.returncode != 0:
                raise MissingPeerBinary(
                    f"nsqd/nsqlookupd missing in {bin_dir} and scripts/build-nsq failed "
                    f"(rc={r.returncode}): {r.stderr.strip()[-500:]}; install Go and run scripts/build-nsq")
        if not (os.access(nsqd, os.X_OK) and os.access(lookupd, os.X_OK)):
            raise MissingPeerBinary(f"nsqd/nsqlookupd not found in {bin_dir}; run scripts/build-nsq")
    return str(nsqd), str(lookupd)


def http_get(host: str, port: int, path: str, timeout: float = 0.5) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as r:
            return r.read()
    except OSError:
        return None


class NsqPeer:
    """One nsqlookupd and one nsqd under ``root`` (logs, data dir)."""

    def __init__(self, root: str | Path, bin_dir: str | Path | None = None, host: str = HOST):
        self.root = Path(root)
        self.bin_dir = Path(bin_dir) if bin_dir else lab_bin_dir()
        self.host = host
        self.nsqd_tcp_port = self.nsqd_http_port = 0
        self.lookupd_tcp_port = self.lookupd_http_port = 0
        self.procs: dict[str, ProcRecord] = {}

    # -- addresses -------------------------------------------------------------------------
    @property
    def nsqd_tcp_address(self) -> str:
        return f"{self.host}:{self.nsqd_tcp_port}"

    @property
    def nsqd_http_address(self) -> str:
        return f"{self.host}:{self.nsqd_http_port}"

    @property
    def lookupd_tcp_address(self) -> str:
        return f"{self.host}:{self.lookupd_tcp_port}"

    @property
    def lookupd_http_address(self) -> str:
        return f"{self.host}:{self.lookupd_http_port}"

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        nsqd, lookupd = ensure_nsq_binaries(self.bin_dir)
        if not self.nsqd_tcp_port:
            (self.nsqd_tcp_port, self.nsqd_http_port,
             self.lookupd_tcp_port, self.lookupd_http_port) = free_tcp_ports(4, self.host)
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        if "nsqlookupd" not in self.procs or not procs.is_running(self.procs["nsqlookupd"]):
            self._wait_port_free(self.lookupd_tcp_port, self.lookupd_http_port)
            self.procs["nsqlookupd"] = procs.spawn("nsqlookupd", [
                lookupd, f"--tcp-address={self.lookupd_tcp_address}",
                f"--http-address={self.lookupd_http_address}", f"--broadcast-address={self.host}",
            ], self.root, self.root / "nsqlookupd.log")
        if "nsqd" not in self.procs or not procs.is_running(self.procs["nsqd"]):
            self._wait_port_free(self.nsqd_tcp_port, self.nsqd_http_port)
            self.procs["nsqd"] = procs.spawn("nsqd", [
                nsqd, f"--tcp-address={self.nsqd_tcp_address}",
                f"--http-address={self.nsqd_http_address}", f"--broadcast-address={self.host}",
                f"--lookupd-tcp-address={self.lookupd_tcp_address}", f"--data-path={data}",
                "--https-address=",
            ], self.root, self.root / "nsqd.log")
        try:
            procs.wait_for(self.ready, timeout, interval=0.01, what="nsqd/nsqlookupd /ping and registration")
        except LabError as e:
            tails = "\n".join(f"--- {n} log:\n{procs.log_tail(r.log)}" for n, r in self.procs.items())
            raise LabError(f"{e}\n{tails}") from None

    def _wait_port_free(self, *ports: int) -> None:
        # After a restart the old listener may linger for a moment.
        procs.wait_for(lambda: all(tcp_port_free(p, self.host) for p in ports), 5.0,
                       what=f"ports {ports} to be free")

    def ready(self) -> bool:
        if http_get(self.host, self.lookupd_http_port, "/ping") != b"OK":
            return False
        if http_get(self.host, self.nsqd_http_port, "/ping") != b"OK":
            return False
        return self.registered()

    def registered(self) -> bool:
        """True when nsqlookupd lists our nsqd as a producer."""
        raw = http_get(self.host, self.lookupd_http_port, "/nodes")
        if not raw:
            return False
        nodes = json.loads(raw)
        nodes = nodes.get("data", nodes)  # pre-1.0 wrapped answers in {"data": ...}
        return any(p.get("tcp_port") == self.nsqd_tcp_port for p in nodes.get("producers", []))

    def stop(self, which: tuple[str, ...] = ("nsqd", "nsqlookupd")) -> None:
        procs.stop_many([self.procs[n] for n in which if n in self.procs])

    def restart(self, which: tuple[str, ...] = ("nsqd",), timeout: float = 10.0) -> None:
        """Stop ``which`` and start them again on the same ports (data dir kept)."""
        self.stop(which)
        self.start(timeout)

    def running(self) -> dict[str, bool]:
        return {n: procs.is_running(r) for n, r in self.procs.items()}

    # -- state -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "root": str(self.root), "bin_dir": str(self.bin_dir), "host": self.host,
            "nsqd_tcp_port": self.nsqd_tcp_port, "nsqd_http_port": self.nsqd_http_port,
            "lookupd_tcp_port": self.lookupd_tcp_port, "lookupd_http_port": self.lookupd_http_port,
            "nsqd_tcp_address": self.nsqd_tcp_address, "nsqd_http_address": self.nsqd_http_address,
            "lookupd_tcp_address": self.lookupd_tcp_address,
            "lookupd_http_address": self.lookupd_http_address,
            "procs": {n: r.to_dict() for n, r in self.procs.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "NsqPeer":
        n = cls(d["root"], d["bin_dir"], d["host"])
        for k in ("nsqd_tcp_port", "nsqd_http_port", "lookupd_tcp_port", "lookupd_http_port"):
            setattr(n, k, d[k])
        n.procs = {k: ProcRecord.from_dict(v) for k, v in d["procs"].items()}
        return n
