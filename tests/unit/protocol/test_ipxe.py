"""Golden texts of the iPXE script and the metal-hammer command line (metal-contracts.md §1.3/§1.4)."""

import pytest

from metalcore.protocol import ipxe


def test_cmdline_exactly_as_the_go_metal_core():
    assert ipxe.build_cmdline("console=tty0 console=ttyS0 ip=dhcp", metal_core_ip="10.1.0.1",
                              metal_core_port=4242, metal_api_url="http://metal-api:8080/metal") == (
        "console=tty0 console=ttyS0 ip=dhcp METAL_CORE_ADDRESS=10.1.0.1:4242 METAL_API_URL=http://metal-api:8080/metal")
    assert ipxe.build_cmdline("console=ttyS0", metal_core_ip="10.1.0.1", metal_core_port=4242,
                              metal_api_url="http://a/b", debug=True) == (
        "console=ttyS0 METAL_CORE_ADDRESS=10.1.0.1:4242 METAL_API_URL=http://a/b DEBUG=1")


def test_boot_script_golden():
    cmdline = ipxe.build_cmdline("console=ttyS0 ip=dhcp", metal_core_ip="10.251.77.1", metal_core_port=4242,
                                 metal_api_url="http://10.251.77.1:8080/metal")
    assert ipxe.render_boot_script("http://10.251.77.1:8081/metal-hammer-kernel",
                                   ["http://10.251.77.1:8081/metal-hammer-initrd.img.lz4"], cmdline) == (
        "#!ipxe\n"
        "kernel http://10.251.77.1:8081/metal-hammer-kernel initrd=initrd0 console=ttyS0 ip=dhcp"
        " METAL_CORE_ADDRESS=10.251.77.1:4242 METAL_API_URL=http://10.251.77.1:8080/metal\n"
        "initrd --name initrd0 http://10.251.77.1:8081/metal-hammer-initrd.img.lz4\n"
        "boot\n")


def test_boot_script_two_initrds_and_no_cmdline():
    assert ipxe.render_boot_script("http://k", ["http://i0", "http://i1"], "") == (
        "#!ipxe\nkernel http://k initrd=initrd0 initrd=initrd1\n"
        "initrd --name initrd0 http://i0\ninitrd --name initrd1 http://i1\nboot\n")
    assert ipxe.render_boot_script("http://k", [], "quiet") == "#!ipxe\nkernel http://k quiet\nboot\n"


def test_exit_script_golden():
    assert ipxe.render_exit_script() == "#!ipxe\nexit\n"
    assert ipxe.render_exit_script("allocated, booting from disk") == "#!ipxe\necho allocated, booting from disk\nexit\n"


@pytest.mark.parametrize("call", [
    lambda: ipxe.render_boot_script("http://k\nshell", [], ""),
    lambda: ipxe.render_boot_script("http://k", ["http://i\r"], ""),
    lambda: ipxe.build_cmdline("a\nb", metal_core_ip="1", metal_core_port=1, metal_api_url="u"),
])
def test_line_breaks_cannot_inject_commands(call):
    with pytest.raises(ValueError):
        call()
