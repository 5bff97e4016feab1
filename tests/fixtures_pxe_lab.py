"""Fixtures for the rack lab's PXE network and QEMU machines (listed in tests/conftest.py).

lab_images      session: Debian kernel + busybox initrd (built once, cached in .lab-cache).
pxe_net         module: namespaces + bridge + site dnsmasq giving only IP addresses (+RA),
                what metal-core's PXE tests run against.
reference_pxe   module: namespaces + dnsmasq's own PXE answer + plain HTTP serving boot.ipxe,
                kernel and initrd: the reference boot path (set_cmdline() per test).
machine_factory function: makes machines on the module's network (reference_pxe's if the
                test uses it, else pxe_net's); stops every QEMU it started.
qemu_bmcs       function: ``make([machine, ...]) -> BmcFarm``: one ipmi_sim per machine whose
                chassis_control hook (qemu-chassis.sh) drives the machine's QEMU.

Teardown removes exactly what each fixture made: QEMUs by pid, dnsmasq/httpd by pid, then the
namespaces (which takes the veths, taps and bridge with them).  A missing peer (qemu, OVMF, the
iPXE ROM, dnsmasq, ipmi_sim, busybox, cpio) fails the test with how to install it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from metalcore.lab import procs
from metalcore.lab.bmcs import BmcFarm
from metalcore.lab.images import BootImages, ensure_images
from metalcore.lab.machines import HOOK, Machine, MachineFactory, reap_qemu_orphans
from metalcore.lab.netns import RackNet
from metalcore.lab.site_dhcp import ReferenceBootServer, SiteDhcp


@dataclass
class PxeNet:
    net: RackNet
    dhcp: SiteDhcp
    http: ReferenceBootServer | None = None
    next_index: int = 0  # taps are named by machine index: unique per network across tests

    def stop(self) -> None:
        for p in (self.dhcp, self.http):
            if p is not None:
                p.stop()
        self.net.down()


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the PXE lab needs root (network namespaces, taps, QEMU on taps)")


@pytest.fixture(scope="session")
def lab_images() -> BootImages:
    return ensure_images()


def _pxe_net(workdir: Path, images: BootImages | None) -> PxeNet:
    _require_root()
    procs.enable_subreaper()  # QEMUs daemonized by the chassis hook come back to us
    net = RackNet(state_file=workdir / "netns.json").up()
    pn = PxeNet(net=net, dhcp=SiteDhcp(net, workdir / "dhcp"))
    try:
        if images is not None:
            pn.http = ReferenceBootServer(net, workdir / "http", images.kernel, images.initrd).start()
            pn.dhcp.boot_url = pn.http.boot_url
        pn.dhcp.start()
    except BaseException:
        pn.stop()
        raise
    return pn


@pytest.fixture(scope="module")
def pxe_net(tmp_path_factory) -> PxeNet:
    pn = _pxe_net(tmp_path_factory.mktemp("pxe"), None)
    yield pn
    pn.stop()


@pytest.fixture(scope="module")
def reference_pxe(tmp_path_factory, lab_images) -> PxeNet:
    pn = _pxe_net(tmp_path_factory.mktemp("pxe-ref"), lab_images)
    yield pn
    pn.stop()


@pytest.fixture
def machine_factory(request, tmp_path) -> MachineFactory:
    pn = (request.getfixturevalue("reference_pxe") if "reference_pxe" in request.fixturenames
          else request.getfixturevalue("pxe_net"))
    factory = MachineFactory(pn.net, tmp_path / "machines")
    orig = factory.create

    def create(*args, **kwargs):
        if "index" not in kwargs:
            kwargs["index"] = pn.next_index
        pn.next_index = max(pn.next_index, kwargs["index"]) + 1
        return orig(*args, **kwargs)

    factory.create = create
    yield factory
    factory.close()
    reap_qemu_orphans()


@pytest.fixture
def qemu_bmcs(tmp_path):
    farms: list[BmcFarm] = []

    def make(machines: list[Machine], boot: str = "pxe") -> BmcFarm:
        by_index = {i: m for i, m in enumerate(machines, start=1)}

        def init(bmc) -> None:
            m = by_index[bmc.index]
            m.bmc_address, m.bmc_user, m.bmc_password = bmc.address, bmc.user, bmc.password
            m.write_hook_files(Path(bmc.state_dir), boot=boot)

        farm = BmcFarm(tmp_path / f"bmcs{len(farms)}", count=len(machines),
                       chassis_hook=f"/bin/sh {HOOK}", state_init=init)
        farms.append(farm)
        farm.start()
        return farm

    yield make
    for farm in farms:
        farm.stop()
    reap_qemu_orphans()
