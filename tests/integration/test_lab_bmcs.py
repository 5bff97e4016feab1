"""ipmi_sim BMCs from the lab, driven with pyghmi; state read back from the hook's files."""
from __future__ import annotations

import pytest
from pyghmi.exceptions import IpmiException
from pyghmi.ipmi import command

from metalcore.lab.bmcs import probe


def _cmd(b, password=None):
    return command.Command(bmc=b.host, userid=b.user, password=password or b.password, port=b.port)


def test_power_on_off_read_back_from_state_files(bmc_farm):
    b = bmc_farm.bmc(1)
    c = _cmd(b)
    assert c.get_power() == {"powerstate": "off"}
    assert b.power() == "off"
    c.set_power("on", wait=False)
    assert b.power() == "on"
    assert c.get_power() == {"powerstate": "on"}
    c.set_power("off", wait=False)
    assert b.power() == "off"
    assert b.events() == ["power 1", "power 0"]
    assert bmc_farm.bmc(2).power() == "off"  # the other BMC is untouched
    assert bmc_farm.bmc(2).events() == []


def test_boot_device_read_back_from_state_files(bmc_farm):
    b = bmc_farm.bmc(2)
    c = _cmd(b)
    # pyghmi get_bootdev() always says 'default' against ipmi_sim (gotcha 1): read the file.
    for dev, sim_name in (("network", "pxe"), ("hd", "default"), ("setup", "bios")):
        c.set_bootdev(dev)
        assert b.boot_device() == sim_name
    assert b.events() == ["boot pxe", "boot default", "boot bios"]
    c.set_identify(on=True)
    assert b.identify() == "0 1"


def test_injected_failure_and_wrong_password(bmc_farm):
    b = bmc_farm.bmc(1)
    c = _cmd(b)
    b.inject_failure()
    with pytest.raises(IpmiException):
        c.set_power("on", wait=False)
    b.inject_failure(False)
    c.set_power("on", wait=False)
    assert b.power() == "on"
    with pytest.raises(IpmiException, match="password"):
        _cmd(b, password="wrong-password")


def test_stop_and_restart_on_same_port(bmc_farm):
    b = bmc_farm.bmc(2)
    port, pid = b.port, b.proc.pid
    bmc_farm.stop_bmc(2)
    assert probe(b.host, [port], timeout=0.3) == set()
    assert probe(b.host, [bmc_farm.bmc(1).port], timeout=1) == {bmc_farm.bmc(1).port}
    bmc_farm.start_bmc(2)
    assert b.port == port and b.proc.pid != pid
    assert probe(b.host, [port], timeout=1) == {port}
