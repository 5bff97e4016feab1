"""machine_events: the three schema generations, poison outcomes, TTL, and the event -> action plans."""

import json

import pytest
from hypothesis import given, strategies as st

from metalcore.protocol.backoff import Backoff
from metalcore.protocol.machine_events import (Ignored, MachineEvent, Plan, PlanOptions, Poison, PoisonReason,
                                               Unsupported, age_seconds, decode, is_expired, plan)


def j(obj) -> bytes:
    return json.dumps(obj).encode()


def test_2020_ids():
    e = decode(j({"type": "command", "cmd": {"target": "m1", "cmd": "LED-ON", "params": ["rack", "3"]}}))
    assert e == MachineEvent("command", "m1", "2020", command="LED-ON", params=("rack", "3"))
    assert decode(j({"type": "delete", "old": "m1"})) == MachineEvent("delete", "m1", "2020")


def test_2019_full_objects_with_ipmi():
    e = decode(j({"type": "command", "old": None, "new": None,
                  "cmd": {"target": {"id": "m1", "ipmi": {"address": "10.0.0.1", "user": "u", "password": "p"}},
                          "cmd": "ON", "params": []}}))
    assert (e.machine_id, e.schema, e.command, e.ipmi.address) == ("m1", "2019", "ON", "10.0.0.1")
    assert decode(j({"type": "delete", "old": {"id": "m2"}, "new": {"id": "m2"}})).schema == "2019"


def test_2022_ipmi_and_firmware():
    e = decode(j({"type": "command", "cmd": {"target": "m1", "cmd": "UPDATE-FIRMWARE",
                                             "ipmi": {"address": "1.2.3.4:624", "user": "root", "password": "s3"},
                                             "firmwareupdate": {"kind": "bios", "url": "http://f"}}}))
    assert e.schema == "2022" and e.ipmi.user == "root" and "s3" not in repr(e.ipmi)
    assert isinstance(plan(e), Unsupported)


@pytest.mark.parametrize("body,reason", [
    (b"{", PoisonReason.NOT_JSON), (b"\xff", PoisonReason.NOT_JSON), (b"[]", PoisonReason.NOT_OBJECT),
    (j({}), PoisonReason.BAD_TYPE), (j({"type": "boom"}), PoisonReason.BAD_TYPE),
    (j({"type": "delete"}), PoisonReason.NO_MACHINE), (j({"type": "delete", "old": ""}), PoisonReason.NO_MACHINE),
    (j({"type": "command"}), PoisonReason.NO_MACHINE),
    (j({"type": "command", "cmd": {"target": "m"}}), PoisonReason.BAD_COMMAND),
    (j({"type": "command", "cmd": {"target": "m", "cmd": "on"}}), PoisonReason.BAD_COMMAND),
    (j({"type": "command", "cmd": {"target": "m", "cmd": "ON", "params": "x"}}), PoisonReason.BAD_PARAMS),
    (j({"type": "command", "cmd": {"target": "m", "cmd": "ON", "ipmi": {"user": "u"}}}), PoisonReason.BAD_IPMI),
    (b" " * (2 << 20), PoisonReason.TOO_LARGE),
])
def test_poison(body, reason):
    out = decode(body)
    assert isinstance(out, Poison) and out.reason is reason


def test_create_update_ignored():
    assert decode(j({"type": "update", "old": "m", "new": "m"})) == Ignored("update", "m")


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_an_outcome(data):
    assert isinstance(decode(data), (Poison, Ignored, MachineEvent))


def test_ttl_first_delivery_only():
    ts = int(1000.0 * 1e9)
    assert age_seconds(ts, 1031.0) == pytest.approx(31.0)
    assert is_expired(ts, 1031.0, 30.0)
    assert not is_expired(ts, 1029.0, 30.0)
    assert not is_expired(ts, 1031.0, 30.0, attempts=2)  # requeued by us: bounded by max attempts
    assert not is_expired(ts, 1031.0, 0)  # disabled
    assert age_seconds(ts, 999.0) == 0.0  # clock skew: never negative


def _kinds(cmd, **opts):
    e = MachineEvent("command", "m", "2020", command=cmd, params=("d",)) if cmd != "delete" else \
        MachineEvent("delete", "m", "2020")
    p = plan(e, PlanOptions(**opts))
    assert isinstance(p, Plan)
    return [a.describe() for a in p.actions]


def test_plans():
    assert _kinds("delete") == ["boot pxe persistent", "power cycle"]
    assert _kinds("ON") == ["power on"] and _kinds("OFF") == ["power off"]
    assert _kinds("RESET") == ["power reset"] and _kinds("CYCLE") == ["power cycle"]
    assert _kinds("BIOS") == ["boot bios once", "power reset"]
    assert _kinds("DISK") == ["boot disk persistent"] and _kinds("PXE") == ["boot pxe persistent"]
    assert _kinds("PXE", reset_after_boot_device=True) == ["boot pxe persistent", "power reset"]
    assert _kinds("REINSTALL") == ["boot pxe persistent", "power reset"]
    assert _kinds("LED-ON") == ["identify on", "led-state LED-ON"]
    assert _kinds("LED-OFF") == ["identify off", "led-state LED-OFF"]
    led = plan(MachineEvent("command", "m", "2020", command="LED-OFF")).actions[1]
    assert led.body == {"value": "LED-OFF", "description": "unknown"}


class _Rng:
    def __init__(self, x):
        self.x = x

    def uniform(self, a, b):
        return a + (b - a) * self.x


def test_backoff_equal_jitter_capped():
    b = Backoff(base=1.0, cap=60.0)
    assert b.delay(1, _Rng(0)) == 0.5 and b.delay(1, _Rng(1)) == 1.0
    assert b.delay(3, _Rng(0)) == 2.0
    assert b.delay(50, _Rng(1)) == 60.0
    assert b.ceiling(0) == 0.0
