"""Test-side handle on a running stand-in, over HTTP only, so it works for a thread or another process.

Operator calls (allocate, free, reinstall, power) go through the real signed /v1 endpoints, as an
operator's metalctl would; inspection and faults go through /_lab.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import httpx

from metalcore.clients.metal_api import HMACAuth
from metalcore.errors import MetalAPIError
from metalcore.protocol.hmac import HMACSigner, HMACUser

__all__ = ["MetalAPILab", "spawn"]


class MetalAPILab:
    """``root``: http://host:port (where /_lab lives); ``basepath``: prefix of /v1 ("" = none)."""

    def __init__(self, root: str, keys: dict[str, str], basepath: str = "", timeout: float = 10.0) -> None:
        self.root = root.rstrip("/")
        self.keys = dict(keys)
        self.basepath = "/" + basepath.strip("/") if basepath.strip("/") else ""
        self._lab = httpx.Client(base_url=self.root, timeout=timeout)
        self._op = httpx.Client(
            base_url=self.root, timeout=timeout,
            auth=HMACAuth(HMACSigner(HMACUser.EDIT, self.keys[HMACUser.EDIT.value]),
                          lambda: datetime.now(timezone.utc), secrets.SystemRandom()))

    def __repr__(self) -> str:
        return f"MetalAPILab({self.url!r})"

    @property
    def url(self) -> str:
        """Base URL of the API (what MetalAPIClient wants)."""
        return self.root + self.basepath

    @property
    def port(self) -> int:
        return httpx.URL(self.root).port

    def close(self) -> None:
        self._lab.close()
        self._op.close()

    # --- /_lab ----------------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> Any:
        r = self._lab.get(path, params=params)
        r.raise_for_status()
        return r.json()

    def health(self) -> dict:
        return self._get("/_lab/health")

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.health()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def calls(self, since: int = 0, *, path_contains: str = "", method: str = "") -> list[dict]:
        """Recorded /v1 calls: method, path, operation, query, body, status, response, user, time, duration."""
        return [c for c in self._get("/_lab/calls", since=since)
                if path_contains in c["path"] and (not method or c["method"] == method)]

    def clear_calls(self) -> None:
        self._lab.delete("/_lab/calls").raise_for_status()

    def violations(self) -> list[dict]:
        return self._get("/_lab/violations")

    def take_violations(self) -> list[dict]:
        """Return and forget the violations (for tests that provoke them on purpose)."""
        r = self._lab.delete("/_lab/violations")
        r.raise_for_status()
        return r.json()

    def faults(self) -> dict:
        return self._get("/_lab/faults")

    def set_faults(self, **knobs: Any) -> dict:
        """latency, error_rate, error_status, down (None|"503"|"refused"), down_seconds, wrong_key, match, seed."""
        r = self._lab.post("/_lab/faults", json=knobs)
        if r.status_code != 200:
            raise ValueError(r.json().get("message", r.text))
        return r.json()

    def reset_faults(self) -> dict:
        r = self._lab.delete("/_lab/faults")
        r.raise_for_status()
        return r.json()

    def machines(self) -> list[dict]:
        return self._get("/_lab/machines")

    def machine(self, machine_id: str) -> dict:
        for m in self.machines():
            if m["id"] == machine_id:
                return m
        raise KeyError(machine_id)

    def switches(self) -> list[dict]:
        return self._get("/_lab/switches")

    def switch(self, switch_id: str) -> dict:
        for s in self.switches():
            if s["id"] == switch_id:
                return s
        raise KeyError(switch_id)

    def port_vrfs(self, switch_id: str) -> dict[str, str]:
        """{switch nic name: vrf} of one switch."""
        return {n["name"]: n["vrf"] for n in self.switch(switch_id)["nics"]}

    def events(self) -> list[dict]:
        """Machine events published (topic, message, time, delivered_to_nsqd)."""
        return self._get("/_lab/events")

    def set_partition(self, partition_id: str, **fields: Any) -> dict:
        """Upsert a partition; bootconfig keys (imageurl, kernelurl, commandline) may be given flat."""
        boot = {k: fields.pop(k) for k in ("imageurl", "kernelurl", "commandline") if k in fields}
        r = self._lab.post("/_lab/partitions", json={"id": partition_id, "bootconfig": boot, **fields})
        r.raise_for_status()
        return r.json()

    # --- operator side, over the signed API -----------------------------------------------------

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        r = self._op.request(method, self.basepath + path, json=body)
        if r.status_code >= 300:
            try:
                msg = r.json().get("message", r.text)
            except ValueError:
                msg = r.text
            raise MetalAPIError(r.status_code, msg, method=method, path=path)
        return r.json()

    def allocate(self, machine_id: str, *, image: str = "ubuntu-19.10", project: str = "lab-project",
                 networks: list[str] | None = None, firewall: bool = False, **extra: Any) -> dict:
        """POST /v1/machine/allocate for this machine. ``firewall=True`` picks the firewall image, whose
        switch ports get vrf "default"; otherwise they get "vrf<N>" of the private network (vrf3981)."""
        if firewall and image == "ubuntu-19.10":
            image = "firewall-2.0"
        body = {"uuid": machine_id, "imageid": image, "projectid": project, "ssh_pub_keys": [],
                "networks": [{"networkid": n, "autoacquire": True} for n in networks or []], **extra}
        return self._api("POST", "/v1/machine/allocate", body)

    def free(self, machine_id: str) -> dict:
        return self._api("DELETE", f"/v1/machine/{quote(machine_id, safe='')}/free")

    def reinstall(self, machine_id: str, image: str = "ubuntu-19.10") -> dict:
        return self._api("POST", f"/v1/machine/{quote(machine_id, safe='')}/reinstall",
                         {"id": machine_id, "imageid": image})

    def power(self, machine_id: str, verb: str, description: str | None = None) -> dict:
        """verb: on off reset cycle bios disk pxe chassis-identify-led-on chassis-identify-led-off."""
        path = f"/v1/machine/{quote(machine_id, safe='')}/power/{verb}"
        if description is not None:
            path += "/" + quote(description, safe="")
        return self._api("POST", path, {})


def spawn(*args: str, keys: dict[str, str] | None = None, python: str = sys.executable, timeout: float = 20.0,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, MetalAPILab]:
    """Start ``python -m metalcore.lab.metal_api <args>`` (port 0) and return (process, handle).

    The caller stops it with ``proc.terminate(); proc.wait()`` (by pid, never by name)."""
    from metalcore.lab.metal_api.app import DEFAULT_KEYS

    keys = dict(keys or DEFAULT_KEYS)
    full_env = {**os.environ, **(env or {}), "METAL_API_LAB_VIEW_KEY": keys["Metal-View"],
                "METAL_API_LAB_EDIT_KEY": keys["Metal-Edit"], "METAL_API_LAB_ADMIN_KEY": keys["Metal-Admin"]}
    host = "127.0.0.1"
    if "--host" in args:
        host = args[list(args).index("--host") + 1]
    proc = subprocess.Popen([python, "-m", "metalcore.lab.metal_api", *args], stdout=subprocess.PIPE,
                            env=full_env, text=True)
    deadline = time.monotonic() + timeout
    port = None
    assert proc.stdout is not None
    while port is None:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"metal-api stand-in exited (rc={proc.poll()}) before it listened")
        if line.startswith("METAL_API_LAB_PORT="):
            port = int(line.split("=", 1)[1])
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise RuntimeError("metal-api stand-in did not listen in time")
    basepath = args[list(args).index("--basepath") + 1] if "--basepath" in args else ""
    return proc, MetalAPILab(f"http://{host}:{port}", keys, basepath)
