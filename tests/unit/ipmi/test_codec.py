"""IPMI bytes: BMC addresses, Get Chassis Status and boot flags as ipmi_sim and real BMCs answer them."""

import pytest

from metalcore.ipmi.codec import BmcAddress, decode_boot_flags, decode_chassis_status, parse_address
from metalcore.protocol.machine_events import decode


@pytest.mark.parametrize("text,want", [
    ("10.0.0.1", BmcAddress("10.0.0.1", 623)), ("10.0.0.1:6230", BmcAddress("10.0.0.1", 6230)),
    ("bmc.example", BmcAddress("bmc.example", 623)), ("[fe80::1]:624", BmcAddress("fe80::1", 624)),
    ("[fe80::1]", BmcAddress("fe80::1", 623)), ("fe80::1", BmcAddress("fe80::1", 623)),
])
def test_address(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("bad", ["", ":623", "h:0", "h:x", "h:70000"])
def test_bad_address(bad):
    with pytest.raises(ValueError):
        parse_address(bad)


def test_chassis_status():
    assert decode_chassis_status(b"\x01\x00\x00").power_on
    s = decode_chassis_status(b"\x00\x00\x00")  # ipmi_sim: no identify state reported
    assert not s.power_on and s.identify is None
    assert decode_chassis_status(b"\x01\x00\x60").identify == "on"


def test_boot_flags_ipmi_sim_and_real():
    # bytes read from ipmi_sim after set_bootdev(network, persist=True, uefiboot=True): valid bit dropped
    f = decode_boot_flags(b"\x01\x05\x00\x04\x00\x00\x00")
    assert (f.device, f.valid) == ("pxe", False)
    assert decode_boot_flags(b"\x01\x05\x00\x08\x00\x00\x00").device == "disk"
    assert decode_boot_flags(b"\x01\x05\x00\x18\x00\x00\x00").device == "bios"
    f = decode_boot_flags(b"\x01\x05\xe0\x04\x00\x00\x00")  # a BMC that keeps the flags
    assert (f.valid, f.persistent, f.efi) == (True, True, True)
    with pytest.raises(ValueError):
        decode_boot_flags(b"\x01\x04\x00")


def test_credentials_never_in_repr():
    e = decode(b'{"type":"command","cmd":{"target":"m","cmd":"ON","ipmi":{"address":"a","password":"hunter2"}}}')
    assert "hunter2" not in repr(e)
