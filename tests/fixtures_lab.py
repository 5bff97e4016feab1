"""Pytest fixtures for the rack lab's real peers (listed by the lead in tests/conftest.py).

rack_lab      session: NSQ + leaf01/leaf02 + 4 BMCs in a tmp run dir; down at the end.
nsq_peer      module: a private nsqd + nsqlookupd.
leaf_switches module: a private SwitchLab (leaf01, leaf02, 8 ports each) behind its own sshd.
bmc_farm      function: two private ipmi_sim BMCs (fresh state files per test).

The per-peer fixtures start fresh peers so tests that change config or kill a peer do not
disturb other tests sharing ``rack_lab``.  A missing peer binary fails (never skips) with a
message saying how to install it.
"""
from __future__ import annotations

import pytest

from metalcore.lab.bmcs import BmcFarm
from metalcore.lab.nsq import NsqPeer
from metalcore.lab.rack import RackLab
from metalcore.lab.switches import SwitchLab


@pytest.fixture(scope="session")
def rack_lab(tmp_path_factory) -> RackLab:
    lab = RackLab(tmp_path_factory.mktemp("rack"), bmcs=4).up()
    yield lab
    left = lab.down()
    assert not left, f"rack lab processes survived down: {left}"


@pytest.fixture(scope="module")
def nsq_peer(tmp_path_factory) -> NsqPeer:
    peer = NsqPeer(tmp_path_factory.mktemp("nsq"))
    peer.start()
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def leaf_switches(tmp_path_factory) -> SwitchLab:
    lab = SwitchLab(tmp_path_factory.mktemp("sw"))
    try:
        lab.start()
    except BaseException:
        lab.stop()
        raise
    yield lab
    lab.stop()


@pytest.fixture
def bmc_farm(tmp_path) -> BmcFarm:
    farm = BmcFarm(tmp_path / "bmcs", count=2)
    try:
        farm.start()
    except BaseException:
        farm.stop()
        raise
    yield farm
    farm.stop()
