"""RackLab: inventory, state.json, idempotent up, service hook, faults, and a down that leaves nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from metalcore.lab import procs
from metalcore.lab.procs import LabError, MissingPeerBinary
from metalcore.lab.rack import RackLab, ServiceSpec
from metalcore.lab.switches import running_config
from metalcore.lab.bmcs import BmcFarm, probe

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _alive(pid: int) -> bool:
    st = procs.proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def _our_zombies() -> list[int]:
    """Unreaped (zombie) lab-peer children of this process: none after down."""
    me, out = os.getpid(), []
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            st = procs.proc_stat(int(e.name))
            if st and st[0] == "Z" and st[1] == me and procs.proc_comm(int(e.name)) in procs.PEER_COMMS:
                out.append(int(e.name))
    return out


def test_inventory_matches_the_peers(rack_lab):
    ms = rack_lab.machines
    assert len(ms) == 4 and len({m.id for m in ms}) == 4 and len({m.mac for m in ms}) == 4
    cfgs = {n: running_config(sw) for n, sw in rack_lab.switches.items()}
    for m in ms:
        assert [n.switch for n in m.nics] == ["leaf01", "leaf02"]
        assert m.nics[0].port == m.nics[1].port == f"swp{m.index}"
        for n in m.nics:
            assert cfgs[n.switch].ports[n.port]["mac"] == n.port_mac
        assert os.path.isdir(m.bmc.state_dir)
        assert rack_lab.bmc_of(m).port == m.bmc.port
    assert probe("127.0.0.1", [m.bmc.port for m in ms], timeout=2) == {m.bmc.port for m in ms}
    state = json.loads(rack_lab.state_path.read_text())
    assert {p.pid for p in rack_lab.all_procs()} == {
        *(b["proc"]["pid"] for b in state["bmcs"]["bmcs"]),
        *(s["proc"]["pid"] for s in state["switches"]["switches"].values()),
        state["switches"]["sshd"]["pid"], *(p["pid"] for p in state["nsq"]["procs"].values())}
    assert [m["id"] for m in state["machines"]] == [m.id for m in ms]
    assert rack_lab.status()["up"]


def test_up_status_down_leaves_no_process(tmp_path):
    started = []

    def start_sleeper(lab):
        rec = procs.spawn("sleeper", ["sleep", "300"], lab.lab_dir / "svc", lab.lab_dir / "svc" / "log")
        # A process started elsewhere (as metal_api.spawn does) is adopted with record_popen.
        other = procs.record_popen("sleeper2", subprocess.Popen(["sleep", "300"], start_new_session=True))
        started.extend([rec.pid, other.pid])
        return {"procs": [rec.to_dict(), other.to_dict()], "url": "http://127.0.0.1:1/"}

    t = time.monotonic()
    lab = RackLab(tmp_path, bmcs=3, services=[ServiceSpec("sleeper", start_sleeper)]).up()
    assert time.monotonic() - t < 10
    pids = [p.pid for p in lab.all_procs()]
    assert len(pids) == 3 + 2 + 1 + 2 + 2 and set(started) <= set(pids)
    assert all(_alive(p) for p in pids)

    again = RackLab(tmp_path, bmcs=3).up()  # idempotent: adopts, starts nothing
    assert sorted(p.pid for p in again.all_procs()) == sorted(pids)
    with pytest.raises(LabError, match="another shape"):
        RackLab(tmp_path, bmcs=5).up()

    # Faults record the new pids in state.json.
    lab.stop_bmc(2)
    lab.start_bmc(2)
    lab.restart_nsq()
    lab.stop_switch("leaf01")
    lab.start_switch("leaf01")
    loaded = RackLab.load(tmp_path)
    assert loaded.status()["up"]
    new_pids = [p.pid for p in loaded.all_procs()]
    assert len(set(new_pids) - set(pids)) == 3

    assert loaded.down() == []  # from the state file, as `metalcore lab down` does
    assert not any(_alive(p) for p in pids + new_pids)
    assert _our_zombies() == []
    assert not lab.state_path.exists()
    assert not os.path.exists(lab.switch_lab.sock_dir)


def test_partly_dead_lab_refuses_up(tmp_path):
    lab = RackLab(tmp_path, bmcs=1, with_switches=False).up()
    try:
        procs.stop(lab.bmc_farm.bmc(1).proc)
        with pytest.raises(LabError, match="partly up"):
            RackLab(tmp_path, bmcs=1, with_switches=False).up()
    finally:
        assert lab.down() == []


def test_cli_up_status_down(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    run = lambda *a: subprocess.run([sys.executable, "-m", "metalcore.cli.lab", "lab", *a,  # noqa: E731
                                     "--run-dir", str(tmp_path)], capture_output=True, text=True, env=env,
                                    timeout=60)
    r = run("up", "--bmcs", "2", "--json")
    assert r.returncode == 0, r.stderr
    pids = [p["pid"] for p in json.loads(r.stdout)["status"]["procs"]]
    r = run("status", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["up"]
    r = run("down")
    assert r.returncode == 0, r.stderr
    assert not any(_alive(p) for p in pids)  # detached peers: zombies until PID 1 reaps count as gone
    assert run("status").returncode == 3


def test_missing_binary_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # ipmi_sim lives in /usr/bin: not found now
    with pytest.raises(MissingPeerBinary, match="install-system-packages"):
        BmcFarm(tmp_path / "b", count=1).start()


def test_500_bmcs(tmp_path):
    t = time.monotonic()
    lab = RackLab(tmp_path, bmcs=500, with_switches=False, with_nsq=False).up()
    try:
        assert time.monotonic() - t < 20
        assert len(lab.machines) == 500 and len({m.bmc.port for m in lab.machines}) == 500
        assert lab.machines[499].nics[0].switch is None  # more machines than switch ports
    finally:
        assert lab.down() == []
