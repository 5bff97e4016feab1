"""The per-MAC iPXE script and the kernel command line that metal-hammer reads.

The command line is the contract of the original metal-core's ``GET /v1/boot/{mac}``
(research metal-contracts.md §1.3/§1.4, ``internal/endpoint/boot.go@d4a35e7``)::

    <partition bootconfig commandline> METAL_CORE_ADDRESS=<ip>:<port> METAL_API_URL=<url>[ DEBUG=1]

Script syntax: https://ipxe.org/scripting, https://ipxe.org/cmd/kernel, https://ipxe.org/cmd/initrd.
Under UEFI the EFI-stub kernel finds its initrd only through ``initrd=<image name>`` on the command
line (research pxe-on-this-machine.md gotcha 6), so every initrd gets a fixed ``--name`` and the
kernel line names them; under BIOS the extra word is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["build_cmdline", "render_boot_script", "render_exit_script"]


def _check_line(value: str, what: str) -> str:
    # A newline would start a new iPXE command: refuse instead of letting data become script.
    if "\n" in value or "\r" in value:
        raise ValueError(f"{what} contains a line break: {value!r}")
    return value


def build_cmdline(
    partition_cmdline: str, *, metal_core_ip: str, metal_core_port: int, metal_api_url: str,
    debug: bool = False,
) -> str:
    """Exactly what the Go metal-core appended (metal-contracts.md §1.3 step 4)."""
    cmdline = f"{partition_cmdline} METAL_CORE_ADDRESS={metal_core_ip}:{metal_core_port} METAL_API_URL={metal_api_url}"
    if debug:
        cmdline += " DEBUG=1"
    return _check_line(cmdline, "cmdline")


def render_boot_script(kernel_url: str, initrd_urls: Sequence[str], cmdline: str) -> str:
    """``#!ipxe`` script: kernel with its command line, the initrds, boot."""
    _check_line(kernel_url, "kernel URL")
    names = [f"initrd{i}" for i in range(len(initrd_urls))]
    kernel_args = " ".join([f"initrd={n}" for n in names] + ([_check_line(cmdline, "cmdline")] if cmdline else []))
    lines = ["#!ipxe", f"kernel {kernel_url} {kernel_args}".rstrip()]
    for name, url in zip(names, initrd_urls):
        lines.append(f"initrd --name {name} {_check_line(url, 'initrd URL')}")
    lines.append("boot")
    return "\n".join(lines) + "\n"


def render_exit_script(message: str = "") -> str:
    """Script for a machine that must not be (re)installed: leave iPXE so the firmware boots the
    next device (disk). ``exit`` is iPXE's way back to the BIOS/UEFI boot order."""
    lines = ["#!ipxe"]
    if message:
        lines.append(f"echo {_check_line(message, 'message')}")
    lines.append("exit")
    return "\n".join(lines) + "\n"
