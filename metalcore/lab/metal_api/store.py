"""In-memory state of the Metal API stand-in: partitions, images, networks, machines, switches.

Objects are kept as plain dicts in metal-api's response shapes, rendered by the ``*_response``
methods with Go's zero values for whatever a request left out (so a response is always complete).
Side effects follow metal-api @56e4775d (research note §2):

* register: create (201) or update (200) the machine, then connect it with the switches whose nic
  MACs are its nics' neighbour MACs; metal-api insists on exactly two switches ("twin switches").
* an event for an unknown machine creates a bare machine (PXE Booting comes before register).
* finalize: ``allocation.succeeded``, boot info, then the machine's switch ports get vrf
  ``"default"`` (firewall image) or ``"vrf<N>"`` (N = the private network's vrf).
* free: allocation cleared, switch ports back to vrf "" (PXE); reinstall: ``allocation.reinstall``.
* wait: blocks on a Condition until the machine has an allocation or the server timeout passes.

Everything is guarded by one lock; ``changed`` is a Condition on it that allocate/reinstall notify.
"""

from __future__ import annotations

import copy
import ipaddress
import threading
from datetime import datetime, timezone
from typing import Any, Callable

__all__ = ["ApiError", "Store", "default_images", "default_networks"]

UNSET = object()


class ApiError(Exception):
    """An answer metal-api gives as httperrors.HTTPErrorResponse {"statuscode", "message"}."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# metal-api's ProvisioningEventType values of 2020 (internal/metal/provisioning.go)
EVENT_TYPES = ("Alive", "Crashed", "Reset Fail Count", "PXE Booting", "Planned Reboot", "Preparing",
               "Registering", "Waiting", "Installing", "Booting New Kernel", "Phoned Home", "Machine Reclaim")
LED_STATES = ("LED-ON", "LED-OFF")


def default_images() -> dict[str, dict]:
    return {
        "ubuntu-19.10": {"id": "ubuntu-19.10", "name": "Ubuntu 19.10", "description": "lab image",
                         "url": "http://images.lab/ubuntu/19.10/img.tar.lz4", "features": ["machine"]},
        "firewall-2.0": {"id": "firewall-2.0", "name": "Firewall 2.0", "description": "lab firewall image",
                         "url": "http://images.lab/firewall/2.0/img.tar.lz4", "features": ["firewall"]},
    }


def default_networks() -> dict[str, dict]:
    return {
        "tenant-3981": {"id": "tenant-3981", "prefixes": ["10.0.16.0/22"], "destinationprefixes": [],
                        "vrf": 3981, "private": True, "nat": False, "underlay": False},
        "internet": {"id": "internet", "prefixes": ["185.24.0.0/22"], "destinationprefixes": ["0.0.0.0/0"],
                     "vrf": 104009, "private": False, "nat": True, "underlay": False},
        "underlay": {"id": "underlay", "prefixes": ["10.1.0.0/24"], "destinationprefixes": [],
                     "vrf": 0, "private": False, "nat": False, "underlay": True},
    }


def _bios(b: dict | None) -> dict:
    b = b or {}
    return {"version": b.get("version") or "", "vendor": b.get("vendor") or "", "date": b.get("date") or ""}


def _partition_of_disk(p: dict) -> dict:
    return {"device": p.get("device") or "", "filesystem": p.get("filesystem") or "",
            "gptguid": p.get("gptguid") or "", "gpttyoe": p.get("gpttyoe") or "", "label": p.get("label") or "",
            "mountoptions": p.get("mountoptions"), "mountpoint": p.get("mountpoint") or "",
            "number": p.get("number") or 0, "properties": p.get("properties"), "size": p.get("size") or 0}


def _fru(f: dict | None) -> dict:
    keys = ("board_mfg", "board_mfg_serial", "board_part_number", "chassis_part_number", "chassis_part_serial",
            "product_manufacturer", "product_part_number", "product_serial")
    f = f or {}
    return {k: f.get(k) or "" for k in keys}


class Store:
    """The stand-in's whole state. ``twin_switches``: demand exactly two switches per machine."""

    def __init__(self, *, partitions: list[dict] | None = None, images: dict[str, dict] | None = None,
                 networks: dict[str, dict] | None = None, twin_switches: bool = True,
                 asn_base: int = 4200000000) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.partitions: dict[str, dict] = {}
        self.images = images if images is not None else default_images()
        self.networks = networks if networks is not None else default_networks()
        self.machines: dict[str, dict] = {}
        self.switches: dict[str, dict] = {}
        self.twin_switches = twin_switches
        self.asn_base = asn_base
        self._next_ip: dict[str, int] = {}
        self.closing = False
        for p in partitions or []:
            self.upsert_partition(p)

    # --- partitions -----------------------------------------------------------------------------

    def upsert_partition(self, p: dict) -> dict:
        with self.lock:
            old = self.partitions.get(p["id"], {})
            boot = {**old.get("bootconfig", {}), **(p.get("bootconfig") or {})}
            now = _now()
            self.partitions[p["id"]] = {
                "id": p["id"], "name": p.get("name", old.get("name", p["id"])),
                "description": p.get("description", old.get("description", "")),
                "bootconfig": {"imageurl": boot.get("imageurl", ""), "kernelurl": boot.get("kernelurl", ""),
                               "commandline": boot.get("commandline", "")},
                "mgmtserviceaddress": p.get("mgmtserviceaddress", old.get("mgmtserviceaddress", "")),
                "privatenetworkprefixlength": p.get("privatenetworkprefixlength",
                                                    old.get("privatenetworkprefixlength", 22)),
                "created": old.get("created", now), "changed": now,
            }
            return copy.deepcopy(self.partitions[p["id"]])

    def partition(self, pid: str) -> dict:
        with self.lock:
            if pid not in self.partitions:
                raise ApiError(404, f"no partition with id {pid!r} found")
            return copy.deepcopy(self.partitions[pid])

    # --- machines: rendering --------------------------------------------------------------------

    def _machine(self, mid: str) -> dict:
        m = self.machines.get(mid)
        if m is None:
            raise ApiError(404, f"no machine with id {mid!r} found")
        return m

    def machine_response(self, mid: str, *, with_ipmi: bool = False) -> dict:
        with self.lock:
            m = self._machine(mid)
            hw = m["hardware"]
            out = {
                "id": m["id"], "name": m.get("name", ""), "description": m.get("description", ""),
                "created": m["created"], "changed": m["changed"],
                "partition": copy.deepcopy(self.partitions.get(m["partitionid"])) if m["partitionid"] else None,
                "rackid": m["rackid"],
                "size": self._size() if m["registered"] else None,
                "hardware": {
                    "cpu_cores": hw.get("cpu_cores") or 0, "memory": hw.get("memory") or 0,
                    "nics": [{"mac": n.get("mac") or "", "name": n.get("name") or ""} for n in hw.get("nics") or []],
                    "disks": [{"name": d.get("name") or "", "size": d.get("size") or 0,
                               "primary": bool(d.get("primary")),
                               "partitions": [_partition_of_disk(p) for p in d.get("partitions") or []]}
                              for d in hw.get("disks") or []],
                },
                "bios": _bios(m["bios"]),
                "state": {"value": "", "description": ""},
                "ledstate": dict(m["ledstate"]),
                "liveliness": "Alive" if m["events"] else "Unknown",
                "events": self._events_response(m),
                "tags": list(m["tags"]),
                "allocation": self._allocation_response(m["allocation"]),
            }
            if with_ipmi:
                ipmi = m["ipmi"] or {}
                out["ipmi"] = {k: ipmi.get(k) or "" for k in ("address", "mac", "user", "password", "interface",
                                                              "bmcversion")}
                out["ipmi"]["fru"] = _fru(ipmi.get("fru"))
            return out

    def _size(self) -> dict:
        return {"id": "lab-size", "name": "lab-size", "description": "matches every lab machine",
                "constraints": [{"type": "cores", "min": 1, "max": 1024},
                                {"type": "memory", "min": 0, "max": 1 << 50}],
                "created": "2020-07-13T00:00:00Z", "changed": "2020-07-13T00:00:00Z"}

    @staticmethod
    def _events_response(m: dict) -> dict:
        log = [dict(e) for e in m["events"]]
        return {"log": log, "last_event_time": log[0]["time"] if log else None,
                "incomplete_provisioning_cycles": "0"}

    def _allocation_response(self, a: dict | None) -> dict | None:
        if a is None:
            return None
        img = self.images[a["imageid"]]
        return {
            "created": a["created"], "name": a["name"], "description": a["description"],
            "hostname": a["hostname"], "project": a["project"],
            "image": {"id": img["id"], "name": img["name"], "description": img["description"],
                      "url": img["url"], "features": list(img["features"]), "classification": "supported",
                      "created": "2020-07-13T00:00:00Z", "changed": "2020-07-13T00:00:00Z",
                      "expirationDate": "2099-12-31T00:00:00Z", "usedby": None},
            "networks": copy.deepcopy(a["networks"]), "ssh_pub_keys": list(a["ssh_pub_keys"]),
            "user_data": a["user_data"], "console_password": a["console_password"],
            "succeeded": a["succeeded"], "reinstall": a["reinstall"],
            "boot_info": copy.deepcopy(a["boot_info"]),
        }

    def machine_ids(self) -> list[str]:
        with self.lock:
            return list(self.machines)

    # --- machines: operations called by metal-core ---------------------------------------------

    def _new_machine(self, mid: str) -> dict:
        now = _now()
        return {"id": mid, "created": now, "changed": now, "partitionid": None, "rackid": "", "registered": False,
                "hardware": {}, "bios": None, "ipmi": None, "tags": [], "events": [],
                "ledstate": {"value": "", "description": ""}, "allocation": None}

    def find_machines(self, query: dict) -> list[dict]:
        supported = {"id", "nics_mac_addresses", "partition_id", "rackid", "allocation_project",
                     "allocation_succeeded", "nics_neighbor_mac_addresses"}
        used = {k for k, v in query.items() if v is not None}
        unsupported = used - supported
        if unsupported:
            # fail loudly: silently ignoring a criterion would return wrong machines
            raise ApiError(500, f"lab: find criteria not implemented by the stand-in: {sorted(unsupported)}")
        with self.lock:
            out = []
            for m in self.machines.values():
                nics = m["hardware"].get("nics") or []
                macs = {(n.get("mac") or "").lower() for n in nics}
                neigh = {(x.get("mac") or "").lower() for n in nics for x in n.get("neighbors") or []}
                a = m["allocation"]
                if query.get("id") is not None and m["id"] != query["id"]:
                    continue
                if any(mac.lower() not in macs for mac in query.get("nics_mac_addresses") or []):
                    continue
                if any(mac.lower() not in neigh for mac in query.get("nics_neighbor_mac_addresses") or []):
                    continue
                if query.get("partition_id") is not None and m["partitionid"] != query["partition_id"]:
                    continue
                if query.get("rackid") is not None and m["rackid"] != query["rackid"]:
                    continue
                if query.get("allocation_project") is not None and (not a or a["project"] != query["allocation_project"]):
                    continue
                if query.get("allocation_succeeded") is not None and (
                        not a or a["succeeded"] != query["allocation_succeeded"]):
                    continue
                out.append(m["id"])
            return [self.machine_response(mid) for mid in out]

    def register_machine(self, body: dict) -> tuple[int, dict]:
        mid = body.get("uuid") or ""
        if not mid:
            raise ApiError(422, "No UUID given")
        with self.lock:
            self.partition(body.get("partitionid") or "")
            created = mid not in self.machines or not self.machines[mid]["registered"]
            m = self.machines.get(mid) or self._new_machine(mid)
            hw = body.get("hardware") or {}
            connections = self._switch_connections(body["partitionid"], hw.get("nics") or [], mid)
            m.update(partitionid=body["partitionid"], rackid=body.get("rackid") or "", registered=True,
                     hardware=copy.deepcopy(hw), bios=copy.deepcopy(body.get("bios")),
                     ipmi=copy.deepcopy(body.get("ipmi")), tags=list(body.get("tags") or []), changed=_now())
            self.machines[mid] = m
            self._connect(mid, connections)
            return (201 if created else 200), self.machine_response(mid)

    def _switch_connections(self, partition_id: str, nics: list[dict], mid: str) -> list[tuple[str, str]]:
        """(switch id, switch nic name) for every neighbour MAC that is a switch port of the partition."""
        by_mac = {}
        for sw in self.switches.values():
            if sw["partition_id"] == partition_id:
                for n in sw["nics"]:
                    by_mac[n["mac"].lower()] = (sw["id"], n["name"])
        conns = []
        for nic in nics:
            for neigh in nic.get("neighbors") or []:
                hit = by_mac.get((neigh.get("mac") or "").lower())
                if hit:
                    conns.append(hit)
        if self.twin_switches:
            found = {sw for sw, _ in conns}
            if len(found) != 2:
                raise ApiError(422, f"machine {mid} is not connected to exactly two switches, "
                                    f"found connections to {len(found)} switches")
        return conns

    def _connect(self, mid: str, conns: list[tuple[str, str]]) -> None:
        for sw in self.switches.values():
            sw["connections"] = [c for c in sw["connections"] if c["machine_id"] != mid]
        for sid, nic in conns:
            self.switches[sid]["connections"].append({"machine_id": mid, "nic": nic})
        self._set_vrf(mid)

    def add_event(self, mid: str, event: dict) -> dict:
        if event.get("event") not in EVENT_TYPES:
            raise ApiError(422, f"unknown provisioning event {event.get('event')!r}")
        with self.lock:
            m = self.machines.get(mid)
            if m is None:  # metal-api creates the machine: PXE Booting arrives before register
                m = self.machines[mid] = self._new_machine(mid)
            m["events"].insert(0, {"event": event["event"], "message": event.get("message") or "",
                                   "time": event.get("time") or _now()})
            del m["events"][100:]
            return self._events_response(m)

    def wait_for_allocation(self, mid: str, timeout: float) -> dict | None:
        """The machine once it has an allocation; None after ``timeout`` seconds."""
        with self.changed:
            self._machine(mid)
            ok = self.changed.wait_for(
                lambda: self.closing or self.machines[mid]["allocation"] is not None, timeout=timeout)
            if not ok or self.machines[mid]["allocation"] is None:
                return None
            return self.machine_response(mid)

    def finalize_allocation(self, mid: str, body: dict) -> dict:
        with self.lock:
            m = self._machine(mid)
            a = m["allocation"]
            if a is None:
                raise ApiError(422, f"the machine {mid!r} is not allocated")
            a.update(succeeded=True, reinstall=False, console_password=body.get("console_password") or "")
            a["boot_info"] = {"image_id": a["imageid"], "primary_disk": body.get("primarydisk") or "",
                              "os_partition": body.get("ospartition") or "", "initrd": body.get("initrd") or "",
                              "cmdline": body.get("cmdline") or "", "kernel": body.get("kernel") or "",
                              "bootloaderid": body.get("bootloaderid") or ""}
            m["changed"] = _now()
            self._set_vrf(mid)
            return self.machine_response(mid)

    def abort_reinstall(self, mid: str, body: dict) -> dict | None:
        with self.lock:
            m = self._machine(mid)
            a = m["allocation"]
            if a is None or not a["reinstall"]:
                return None
            a["reinstall"] = False
            if body.get("primary_disk_wiped"):
                return None  # the old OS is gone: nothing to boot, the machine must be reinstalled
            return copy.deepcopy(a["boot_info"])

    def set_led_state(self, mid: str, body: dict) -> dict:
        value = body.get("value") or ""
        if value not in LED_STATES:
            raise ApiError(422, f"unknown chassis identify LED state {value!r}")
        with self.lock:
            m = self._machine(mid)
            m["ledstate"] = {"value": value, "description": body.get("description") or ""}
            return self.machine_response(mid)

    # --- machines: operator side ----------------------------------------------------------------

    def allocate(self, body: dict) -> dict:
        image_id = body.get("imageid") or ""
        if image_id not in self.images:
            raise ApiError(404, f"no image with id {image_id!r} found")
        if not body.get("projectid"):
            raise ApiError(422, "no project given")
        firewall = "firewall" in self.images[image_id]["features"]
        with self.lock:
            mid = body.get("uuid") or self._free_machine(body.get("partitionid"))
            m = self._machine(mid)
            if m["allocation"] is not None:
                raise ApiError(422, f"machine {mid!r} is already allocated")
            wanted = [n.get("networkid") for n in body.get("networks") or []]
            if not any(self.networks.get(n, {}).get("private") for n in wanted):
                wanted.insert(0, "tenant-3981")  # metal-api gives the project's private network
            if firewall and "internet" not in wanted:
                wanted.append("internet")
            nets = []
            for nid in wanted:
                if nid not in self.networks:
                    raise ApiError(404, f"no network with id {nid!r} found")
                n = self.networks[nid]
                nets.append({"networkid": nid, "prefixes": list(n["prefixes"]), "ips": [self._next_free_ip(nid)],
                             "destinationprefixes": list(n["destinationprefixes"]), "vrf": n["vrf"],
                             "private": n["private"], "asn": self.asn_base + len(self.machines),
                             "nat": n["nat"], "underlay": n["underlay"]})
            name = body.get("name") or mid
            m["allocation"] = {
                "created": _now(), "name": name, "description": body.get("description") or "",
                "hostname": body.get("hostname") or name, "project": body["projectid"], "imageid": image_id,
                "networks": nets, "ssh_pub_keys": list(body.get("ssh_pub_keys") or []),
                "user_data": body.get("user_data") or "", "console_password": "", "succeeded": False,
                "reinstall": False, "boot_info": None, "firewall": firewall,
            }
            m["changed"] = _now()
            self.changed.notify_all()
            return self.machine_response(mid)

    def _free_machine(self, partition_id: str | None) -> str:
        for m in self.machines.values():
            if m["registered"] and m["allocation"] is None and (not partition_id or m["partitionid"] == partition_id):
                return m["id"]
        raise ApiError(404, "no free machine for allocation found")

    def _next_free_ip(self, nid: str) -> str:
        net = ipaddress.ip_network(self.networks[nid]["prefixes"][0])
        n = self._next_ip.get(nid, 1)
        self._next_ip[nid] = n + 1
        return str(net.network_address + n)

    def free(self, mid: str) -> dict:
        with self.lock:
            m = self._machine(mid)
            m["allocation"] = None
            m["changed"] = _now()
            self._set_vrf(mid)  # metal-api does this in any case, so free may be called again
            return self.machine_response(mid)

    def reinstall(self, mid: str, body: dict) -> dict:
        image_id = body.get("imageid") or ""
        if image_id not in self.images:
            raise ApiError(404, f"no image with id {image_id!r} found")
        with self.lock:
            m = self._machine(mid)
            a = m["allocation"]
            if a is None:
                raise ApiError(400, f"machine {mid!r} is not allocated")
            a.update(reinstall=True, succeeded=False, imageid=image_id)
            self.changed.notify_all()
            return self.machine_response(mid)

    def add_planned_reboot(self, mid: str) -> None:
        self.add_event(mid, {"event": "Planned Reboot", "message": "metal-api power command"})

    # --- switches -------------------------------------------------------------------------------

    def _vrf_for(self, mid: str) -> tuple[str, dict | None]:
        a = self.machines[mid]["allocation"] if mid in self.machines else None
        if a is None or not a["succeeded"]:
            return "", None
        prefixes = [p for n in a["networks"] if not n["underlay"] for p in n["prefixes"]]
        if a["firewall"]:
            vnis = [str(n["vrf"]) for n in a["networks"] if n["private"]]
            return "default", {"cidrs": prefixes, "vnis": vnis}
        private = next(n for n in a["networks"] if n["private"])
        return f"vrf{private['vrf']}", {"cidrs": list(private["prefixes"]), "vnis": None}

    def _set_vrf(self, mid: str) -> None:
        vrf, flt = self._vrf_for(mid)
        now = _now()
        for sw in self.switches.values():
            ports = {c["nic"] for c in sw["connections"] if c["machine_id"] == mid}
            for nic in sw["nics"]:
                if nic["name"] in ports and (nic["vrf"], nic["filter"]) != (vrf, flt):
                    nic["vrf"], nic["filter"] = vrf, copy.deepcopy(flt)
                    sw["changed"] = now

    def register_switch(self, body: dict) -> tuple[int, dict]:
        sid = body.get("id") or ""
        if not sid:
            raise ApiError(422, "switch id must not be empty")
        with self.lock:
            self.partition(body.get("partition_id") or "")
            old = self.switches.get(sid)
            keep = {n["name"]: n for n in (old or {}).get("nics", [])}
            now = _now()
            nics = []
            for n in body.get("nics") or []:
                prev = keep.get(n.get("name") or "", {})
                nics.append({"name": n.get("name") or "", "mac": n.get("mac") or "",
                             "vrf": prev.get("vrf", n.get("vrf") or ""), "filter": prev.get("filter")})
            self.switches[sid] = {
                "id": sid, "name": body.get("name") or sid, "description": body.get("description") or "",
                "rack_id": body.get("rack_id") or "", "mode": body.get("mode") or "operational",
                "partition_id": body["partition_id"], "nics": nics,
                "connections": (old or {}).get("connections", []),
                "last_sync": (old or {}).get("last_sync"), "last_sync_error": (old or {}).get("last_sync_error"),
                "created": (old or {}).get("created", now), "changed": now,
            }
            return (200 if old else 201), self.switch_response(sid)

    def switch_response(self, sid: str) -> dict:
        with self.lock:
            sw = self.switches.get(sid)
            if sw is None:
                raise ApiError(404, f"no switch with id {sid!r} found")
            nics = {n["name"]: n for n in sw["nics"]}

            def nic(n: dict) -> dict:
                return {"name": n["name"], "mac": n["mac"], "vrf": n["vrf"], "filter": copy.deepcopy(n["filter"])}

            return {
                "id": sw["id"], "name": sw["name"], "description": sw["description"], "rack_id": sw["rack_id"],
                "mode": sw["mode"], "nics": [nic(n) for n in sw["nics"]],
                "connections": [{"machine_id": c["machine_id"], "nic": nic(nics[c["nic"]])}
                                for c in sw["connections"] if c["nic"] in nics],
                "partition": copy.deepcopy(self.partitions.get(sw["partition_id"])),
                "last_sync": copy.deepcopy(sw["last_sync"]), "last_sync_error": copy.deepcopy(sw["last_sync_error"]),
                "created": sw["created"], "changed": sw["changed"],
            }

    def switch_ids(self) -> list[str]:
        with self.lock:
            return list(self.switches)

    def notify_switch(self, sid: str, body: dict) -> dict:
        with self.lock:
            sw = self.switches.get(sid)
            if sw is None:
                raise ApiError(404, f"no switch with id {sid!r} found")
            sync = {"time": _now(), "duration": int(body.get("sync_duration") or 0), "error": body.get("error")}
            if body.get("error"):
                sw["last_sync_error"] = sync
            else:
                sw["last_sync"] = sync
            return self.switch_response(sid)

    # --- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Wake every waiting long-poll (they answer 504) so the server can stop."""
        with self.changed:
            self.closing = True
            self.changed.notify_all()

    def snapshot(self, fn: Callable[[], Any]) -> Any:
        with self.lock:
            return fn()
