"""Machine events from metal-api's NSQ topic ``<partition>-machine``: decode, age check, and the plan of
BMC actions each event asks for. Pure: bytes and ``now`` in, dataclasses out (see README.md here).

Three generations of the wire schema are accepted (research note metal-contracts.md §3.1):

* 2019-03 → 2020-03 (``pkg/domain/model.go@d4a35e7``): full objects,
  ``{"type": "delete", "old": {<V1MachineResponse>}}``,
  ``{"type": "command", "cmd": {"target": {<V1MachineResponse>}, "cmd": "ON", "params": [...]}}``;
* 2020-03-24 → (``bf1ab7c``): ids only, ``"old": "<id>"``, ``"cmd": {"target": "<id>", ...}``;
* 2022-06 → (metal-api ``3ec315cc``): ``cmd`` also carries ``"ipmi": {address, user, password, ...}`` and
  ``"firmwareupdate"``.

Outcomes, never exceptions for the peer's bytes:

* :class:`Poison` (``reason`` is a metrics label): the body can never be handled; finish it and count it.
* :class:`Ignored`: a valid event that is not ours (``create``/``update``, handled by nobody upstream).
* :class:`MachineEvent`: a valid ``delete`` or ``command``; :func:`plan` turns it into :class:`Plan` (ordered
  :class:`Action` s) or :class:`Unsupported` (``UPDATE-FIRMWARE``: logged, counted, finished).

The plan states target states ("boot device PXE", "power cycle"), never toggles, so a repeat after a crash
is harmless except for cycle/reset, which the consumer de-duplicates by job id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Union

__all__ = [
    "Action", "COMMANDS", "Ignored", "IpmiCredentials", "MachineEvent", "PlanOptions", "Plan", "Poison",
    "PoisonReason", "Unsupported", "age_seconds", "decode", "is_expired", "plan", "pxe_cycle_plan",
]

# nsqd's default --max-msg-size is 1 MiB; a machine event is a few hundred bytes (a 2019 full object a few KiB).
MAX_BODY_BYTES = 1 << 20
EVENT_TYPES = ("create", "update", "delete", "command")
COMMANDS = ("ON", "OFF", "RESET", "CYCLE", "BIOS", "DISK", "PXE", "REINSTALL", "LED-ON", "LED-OFF",
            "UPDATE-FIRMWARE")


class PoisonReason(str, Enum):
    """Why a body can never be handled. The value is a Prometheus label: never rename one."""

    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_TYPE = "bad_type"            # "type" missing or not one of create|update|delete|command
    NO_MACHINE = "no_machine"        # delete without "old", command without "cmd.target" (or an empty id)
    BAD_COMMAND = "bad_command"      # cmd.cmd missing or unknown
    BAD_PARAMS = "bad_params"        # params not a list of strings
    BAD_IPMI = "bad_ipmi"            # cmd.ipmi present but not an object with a string address

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Poison:
    reason: PoisonReason
    detail: str = ""


@dataclass(frozen=True)
class Ignored:
    type: str
    machine_id: str = ""


@dataclass(frozen=True)
class IpmiCredentials:
    """``cmd.ipmi`` of a 2022 event (or ``ipmi`` of a 2019 target object). ``password`` never printed."""

    address: str
    user: str = ""
    password: str = field(default="", repr=False)
    interface: str = "lanplus"
    mac: str = ""

    def to_body(self) -> dict[str, str]:
        return {"address": self.address, "user": self.user, "password": self.password,
                "interface": self.interface, "mac": self.mac}


@dataclass(frozen=True)
class MachineEvent:
    type: str                          # "delete" | "command"
    machine_id: str
    schema: str                        # "2019" | "2020" | "2022": which generation the body looked like
    command: str | None = None         # for "command"
    params: tuple[str, ...] = ()
    ipmi: IpmiCredentials | None = None
    firmware: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """One word for logs and metric labels: "delete" or the command."""
        return self.command if self.type == "command" and self.command else self.type


Decoded = Union[Poison, Ignored, MachineEvent]


def _machine_id(value: Any) -> tuple[str, IpmiCredentials | None, bool] | None:
    """An id string (2020+) or a V1MachineResponse object (2019) -> (id, ipmi of the object, full?)."""
    if isinstance(value, str):
        return (value, None, False) if value.strip() else None
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"].strip():
        ipmi = value.get("ipmi")
        creds = _credentials(ipmi) if isinstance(ipmi, dict) else None
        return value["id"], (creds if isinstance(creds, IpmiCredentials) else None), True
    return None


def _credentials(obj: Any) -> IpmiCredentials | Poison | None:
    if obj is None:
        return None
    if not isinstance(obj, dict):
        return Poison(PoisonReason.BAD_IPMI, "cmd.ipmi is not an object")
    address = obj.get("address")
    if not isinstance(address, str) or not address.strip():
        return Poison(PoisonReason.BAD_IPMI, "cmd.ipmi.address is missing or not a string")
    strs = {}
    for key in ("user", "password", "interface", "mac"):
        v = obj.get(key)
        if v is not None and not isinstance(v, str):
            return Poison(PoisonReason.BAD_IPMI, f"cmd.ipmi.{key} is not a string")
        strs[key] = v or ""
    return IpmiCredentials(address=address.strip(), user=strs["user"], password=strs["password"],
                           interface=strs["interface"] or "lanplus", mac=strs["mac"])


def decode(body: bytes) -> Decoded:
    """One NSQ message body -> MachineEvent, Ignored or Poison."""
    if len(body) > MAX_BODY_BYTES:
        return Poison(PoisonReason.TOO_LARGE, f"{len(body)} bytes")
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return Poison(PoisonReason.NOT_JSON, str(e)[:120])
    if not isinstance(obj, dict):
        return Poison(PoisonReason.NOT_OBJECT, type(obj).__name__)
    typ = obj.get("type")
    if typ not in EVENT_TYPES:
        return Poison(PoisonReason.BAD_TYPE, repr(typ)[:60])
    if typ in ("create", "update"):
        got = _machine_id(obj.get("new")) or _machine_id(obj.get("old"))
        return Ignored(typ, got[0] if got else "")
    if typ == "delete":
        got = _machine_id(obj.get("old"))
        if got is None:
            return Poison(PoisonReason.NO_MACHINE, "delete without old machine id")
        mid, creds, full = got
        return MachineEvent("delete", mid, "2019" if full else "2020", ipmi=creds)
    cmd = obj.get("cmd")
    if not isinstance(cmd, dict):
        return Poison(PoisonReason.NO_MACHINE, "command without cmd object")
    got = _machine_id(cmd.get("target"))
    if got is None:
        return Poison(PoisonReason.NO_MACHINE, "command without cmd.target")
    mid, creds, full = got
    name = cmd.get("cmd")
    if not isinstance(name, str) or name not in COMMANDS:
        return Poison(PoisonReason.BAD_COMMAND, repr(name)[:60])
    params = cmd.get("params")
    if params is None:
        params = []
    if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
        return Poison(PoisonReason.BAD_PARAMS, "params is not a list of strings")
    schema = "2019" if full else "2020"
    if "ipmi" in cmd and cmd["ipmi"] is not None:
        c = _credentials(cmd["ipmi"])
        if isinstance(c, Poison):
            return c
        creds, schema = c, "2022"
    firmware = cmd.get("firmwareupdate")
    if firmware is not None and not isinstance(firmware, dict):
        firmware = None
    return MachineEvent("command", mid, schema, command=name, params=tuple(params), ipmi=creds,
                        firmware=firmware)


# --- age ---------------------------------------------------------------------------------------------

def age_seconds(nsq_timestamp_ns: int, now: float) -> float:
    """Seconds since nsqd took the message (NSQ timestamps are Unix nanoseconds); never negative."""
    return max(0.0, now - nsq_timestamp_ns / 1e9)


def is_expired(nsq_timestamp_ns: int, now: float, ttl: float, attempts: int = 1) -> bool:
    """metal-core's TTL (``bus.TTL``, 30 s): a stale power command must not run late.

    Only a first delivery can expire: an event we accepted and requeued because its BMC failed is bounded by
    ``mq_max_attempts`` instead, otherwise a BMC down for longer than the TTL would lose its event.
    ``ttl`` 0 disables the check.
    """
    return ttl > 0 and attempts <= 1 and age_seconds(nsq_timestamp_ns, now) > ttl


# --- plan --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Action:
    """One step. ``kind`` "power" | "boot-device" | "identify" are jobs of the ipmi stage (``body`` is the
    job body without machine_id/ipmi); "led-state" is the Metal API bookkeeping call the consumer makes."""

    kind: str
    body: dict[str, Any]

    def describe(self) -> str:
        b = self.body
        if self.kind == "power":
            return f"power {b['state']}"
        if self.kind == "boot-device":
            return f"boot {b['device']}{' persistent' if b['persistent'] else ' once'}"
        if self.kind == "identify":
            return f"identify {'on' if b['on'] else 'off'}"
        return f"led-state {b['value']}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]


@dataclass(frozen=True)
class Unsupported:
    command: str
    reason: str


@dataclass(frozen=True)
class PlanOptions:
    # metal-core reset after DISK/PXE until 2022-05 (PR #64 removed it); off by default as upstream now.
    reset_after_boot_device: bool = False


def _power(state: str) -> Action:
    return Action("power", {"state": state})


def _boot(device: str, persistent: bool) -> Action:
    # UEFI on: go-hal set q1 = 0xE0 (valid|persistent|EFI) for PXE/disk and 0xA0 (valid|EFI) for BIOS (§5)
    return Action("boot-device", {"device": device, "persistent": persistent, "efi": True})


def pxe_cycle_plan() -> Plan:
    """Boot device PXE (persistent), then a power cycle: a free, and the PXE boot watchdog's retry."""
    return Plan((_boot("pxe", True), _power("cycle")))


def plan(event: MachineEvent, options: PlanOptions = PlanOptions()) -> Plan | Unsupported:
    """The ordered BMC actions of one event (table in metal-contracts.md §3.1)."""
    if event.type == "delete":
        # "free machine": next boot is PXE (into metal-hammer), then power cycle
        return pxe_cycle_plan()
    cmd = event.command
    simple = {"ON": "on", "OFF": "off", "RESET": "reset", "CYCLE": "cycle"}
    if cmd in simple:
        return Plan((_power(simple[cmd]),))
    if cmd == "BIOS":
        return Plan((_boot("bios", False), _power("reset")))
    if cmd in ("DISK", "PXE"):
        steps = (_boot(cmd.lower(), True),)
        return Plan(steps + ((_power("reset"),) if options.reset_after_boot_device else ()))
    if cmd == "REINSTALL":
        return Plan((_boot("pxe", True), _power("reset")))
    if cmd in ("LED-ON", "LED-OFF"):
        on = cmd == "LED-ON"
        # description: joined params, "unknown" without (initConsumer.go@eb9c089)
        description = " ".join(event.params) if event.params else "unknown"
        return Plan((Action("identify", {"on": on}),
                     Action("led-state", {"value": cmd, "description": description})))
    if cmd == "UPDATE-FIRMWARE":
        kind = (event.firmware or {}).get("kind", "?")
        return Unsupported(cmd, f"firmware update ({kind}) is not supported by metalcore")
    raise ValueError(f"no plan for {event!r}")  # decode() never yields such an event
