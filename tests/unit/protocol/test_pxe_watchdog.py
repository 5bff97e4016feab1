"""The PXE boot watchdog's policy: which plans it watches, what counts as "booted into discovery", when
it cycles again and when it gives up."""

from __future__ import annotations

from metalcore.protocol.machine_events import decode, plan
from metalcore.protocol.pxe_watchdog import Step, Watchdog, booted_since, event_time, wants_pxe_boot


def _plan(body: str):
    return plan(decode(body.encode()))


def test_watched_plans_are_the_ones_that_reboot_into_pxe():
    assert wants_pxe_boot(_plan('{"type": "delete", "old": "m1"}'))
    assert wants_pxe_boot(_plan('{"type": "command", "cmd": {"target": "m1", "cmd": "REINSTALL"}}'))
    for cmd in ("ON", "OFF", "RESET", "CYCLE", "BIOS", "DISK", "PXE", "LED-ON"):
        # PXE without a reset only sets the next boot device: nobody asked for a boot now
        assert not wants_pxe_boot(_plan('{"type": "command", "cmd": {"target": "m1", "cmd": "%s"}}' % cmd)), cmd


def test_event_time_reads_metal_api_times():
    assert event_time("1970-01-01T00:00:10Z") == 10.0
    assert event_time("1970-01-01T00:00:10.5+00:00") == 10.5
    assert event_time("1970-01-01T00:00:10") == 10.0  # no zone: UTC, as metal-api writes
    for bad in ("", None, 12, "yesterday", "2026-13-01T00:00:00Z"):
        assert event_time(bad) is None


def _machine(*events: tuple[str, str]) -> dict:
    return {"id": "m1", "events": {"log": [{"event": e, "time": t, "message": ""} for e, t in events],
                                   "last_event_time": None, "incomplete_provisioning_cycles": "0"}}


def test_booted_since_needs_a_discovery_event_after_the_free():
    since = event_time("2026-11-25T08:00:00Z")
    old_life = _machine(("Phoned Home", "2026-11-25T07:59:00Z"), ("Waiting", "2026-11-25T07:00:00Z"))
    assert not booted_since(old_life, since)
    # the tenant OS still phoning home after the free is no discovery
    assert not booted_since(_machine(("Phoned Home", "2026-11-25T08:01:00Z")), since)
    for e in ("PXE Booting", "Preparing", "Registering", "Waiting"):
        assert booted_since(_machine((e, "2026-11-25T08:00:30Z")), since), e
    assert booted_since(_machine(("PXE Booting", "2026-11-25T08:00:00Z")), since)  # at, not only after


def test_booted_since_survives_odd_answers():
    since = 0.0
    for m in ({}, {"events": None}, {"events": {"log": None}}, {"events": {"log": ["x", 3, None]}},
              _machine(("Waiting", "not a time")), None):
        assert booted_since(m, since) is False


def test_watchdog_waits_then_cycles_then_gives_up():
    wd = Watchdog(window=60, cycles=2, started=1000.0)
    assert wd.step(1010, False) is Step.WAIT
    assert wd.step(1059.9, False) is Step.WAIT
    assert wd.step(1060, False) is Step.CYCLE
    wd.cycled_at(1065)
    assert wd.step(1100, False) is Step.WAIT       # a fresh window after each cycle
    assert wd.step(1125, False) is Step.CYCLE
    wd.cycled_at(1126)
    assert wd.step(1186, False) is Step.GIVE_UP    # both extra cycles spent
    assert wd.step(1186, True) is Step.DONE        # a late boot still counts


def test_watchdog_never_cycles_on_an_unknown_answer_but_does_not_wait_forever():
    wd = Watchdog(window=10, cycles=1, started=0.0)
    assert wd.step(15, None) is Step.WAIT          # Metal API down: no blind cycle
    assert wd.step(29.9, None) is Step.WAIT
    assert wd.step(30, None) is Step.GIVE_UP       # window * (cycles + 2)
    assert Watchdog(window=10, cycles=0, started=0.0).step(10, False) is Step.GIVE_UP


def test_watchdog_done_at_once():
    assert Watchdog(window=10, cycles=1, started=0.0).step(0.1, True) is Step.DONE
