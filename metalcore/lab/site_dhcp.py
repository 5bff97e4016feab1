"""The rack's site DHCP (dnsmasq) and the reference PXE boot path, inside the rack namespace.

Two modes (pxe-on-this-machine.md §4, §5):

* ``SiteDhcp(net, workdir)``: what a rack's DHCP server does and nothing more: IPv4 addresses
  plus an IPv6 router advertisement (``enable-ra`` with an ra-only fd00:: range, else iPXE
  waits 16 s in "Configuring", gotcha 2) and ``no-ping`` (else every new lease is 3 s late,
  gotcha 1).  No boot file: answering PXE is metal-core's job.
* ``SiteDhcp(net, workdir, boot_url=...)``: the reference: dnsmasq's own PXE answer (full mode:
  the DHCP offer to iPXE carries the boot script URL and iPXE option 175.176 no-pxedhcp=1, so
  iPXE does not wait 2 s for ProxyDHCP, gotcha 3), and ``ReferenceBootServer`` serves
  boot.ipxe + the lab's kernel and initrd over plain HTTP.  The anchor for benchmarks: the
  same kernel and initrd, booted without metal-core.

dnsmasq is dnsmasq-base started with ``--conf-file`` pointing at our own file only (never
/etc/dnsmasq.conf), ``--port=0`` (no DNS) and ``bind-interfaces`` (gotcha 20).

The HTTP server is this module run as ``python -m metalcore.lab.site_dhcp serve IP PORT DIR``;
it logs "<epoch> GET-START/GET-END <client> <path>" with milliseconds.  Port 8080 is fixed on
purpose: it lives in the lab's own namespace, where nothing else binds.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.netns import RackNet
from metalcore.lab.procs import LabError, ProcRecord

REPO = Path(__file__).resolve().parents[2]
DNSMASQ_HINT = "apt-get install dnsmasq-base"
REFERENCE_HTTP_PORT = 8080


@dataclass
class SiteDhcp:
    """dnsmasq on the rack side of ``net``; ``boot_url`` set = reference (full PXE) mode."""

    net: RackNet
    workdir: Path
    boot_url: str | None = None
    lease_time: str = "1h"
    proc: ProcRecord | None = None
    extra_options: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.workdir / "dnsmasq.log"

    @property
    def leases_file(self) -> Path:
        return self.workdir / "dnsmasq.leases"

    def config(self) -> str:
        lo, hi = self.dhcp_range()
        lines = [
            "port=0",
            f"interface={self.net.rack_if}",
            "bind-interfaces",
            f"dhcp-range={lo},{hi},{self.net.network.netmask},{self.lease_time}",
            f"dhcp-leasefile={self.leases_file}",
            "no-ping",
            "log-dhcp",
            f"log-facility={self.log}",
            "enable-ra",
            f"dhcp-range={self.net.subnet6.split('/')[0]},ra-only,64",
        ]
        if self.boot_url:
            lines += [
                "dhcp-userclass=set:ipxe,iPXE",
                "dhcp-match=set:ipxe,175",
                f"dhcp-boot=tag:ipxe,{self.boot_url}",
                "dhcp-option=tag:ipxe,encap:175,176,1",
            ]
        return "\n".join(lines + self.extra_options) + "\n"

    def dhcp_range(self) -> tuple[str, str]:
        return self.net.dhcp_range

    def start(self, timeout: float = 10.0) -> "SiteDhcp":
        dnsmasq = procs.require_binary("dnsmasq", DNSMASQ_HINT)
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text(self.config())
        self.proc = procs.spawn("site-dnsmasq", self.net.exec_prefix() + [
            dnsmasq, "--no-daemon", f"--conf-file={conf}", f"--pid-file={self.workdir / 'dnsmasq.pid'}"],
            cwd=self.workdir, log=self.workdir / "dnsmasq.out")

        procs.wait_for_log(self.proc, self.log, "DHCP, IP range", timeout, "site dnsmasq")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def leases(self) -> dict[str, str]:
        """MAC -> IPv4 address of the current leases."""
        out = {}
        if self.leases_file.exists():
            for line in self.leases_file.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3 and ":" in parts[1]:
                    out[parts[1].lower()] = parts[2]
        return out

    def log_lines(self, mac: str | None = None) -> list[str]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        return [ln for ln in lines if mac is None or mac.lower() in ln.lower()]

    def discovers(self, mac: str) -> int:
        """How many DHCPDISCOVERs dnsmasq logged from ``mac`` so far."""
        return sum(1 for ln in self.log_lines(mac) if re.search(r"DHCPDISCOVER\(", ln))


def boot_script(base_url: str, cmdline: str) -> str:
    """The iPXE script of the reference path (initrd= is required under UEFI, §4 gotcha 6)."""
    return (
        "#!ipxe\n"
        "echo METALCORE-REF boot.ipxe mac ${net0/mac} ip ${net0/ip} uuid ${uuid} platform ${platform}\n"
        f"kernel {base_url}/vmlinuz initrd=initrd.img console=ttyS0 panic=-1 quiet {cmdline}\n"
        f"initrd {base_url}/initrd.img\n"
        "boot\n"
    )


@dataclass
class ReferenceBootServer:
    """Plain HTTP in the rack namespace serving boot.ipxe, vmlinuz and initrd.img."""

    net: RackNet
    workdir: Path
    kernel: Path
    initrd: Path
    cmdline: str = ""
    port: int = REFERENCE_HTTP_PORT
    proc: ProcRecord | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.net.rack_ip}:{self.port}"

    @property
    def boot_url(self) -> str:
        return f"{self.base_url}/boot.ipxe"

    @property
    def log(self) -> Path:
        return self.workdir / "httpd.log"

    def set_cmdline(self, cmdline: str) -> None:
        """Change the kernel command line for the next boots (rewrites boot.ipxe)."""
        self.cmdline = cmdline
        www = self.workdir / "www"
        tmp = www / "boot.ipxe.tmp"
        tmp.write_text(boot_script(self.base_url, cmdline))
        tmp.rename(www / "boot.ipxe")

    def start(self, timeout: float = 10.0) -> "ReferenceBootServer":
        www = self.workdir / "www"
        www.mkdir(parents=True, exist_ok=True)
        for name, src in (("vmlinuz", self.kernel), ("initrd.img", self.initrd)):
            dst = www / name
            dst.unlink(missing_ok=True)
            dst.symlink_to(Path(src).resolve())
        self.set_cmdline(self.cmdline)
        self.proc = procs.spawn("reference-httpd", self.net.exec_prefix() + [
            sys.executable, "-m", "metalcore.lab.site_dhcp", "serve", self.net.rack_ip, str(self.port), str(www)],
            cwd=REPO, log=self.log)

        procs.wait_for_log(self.proc, self.log, "READY", timeout, "reference HTTP server")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def requests(self) -> list[tuple[float, str, str, str]]:
        """(epoch, GET-START|GET-END, client, path) for every logged request."""
        out = []
        if self.log.exists():
            for line in self.log.read_text(errors="replace").splitlines():
                p = line.split()
                if len(p) == 4 and p[1].startswith("GET-"):
                    out.append((float(p[0]), p[1], p[2], p[3]))
        return out


def _serve(addr: str, port: int, directory: str) -> None:
    import functools
    import http.server

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            print(f"{time.time():.3f} GET-START {self.client_address[0]} {self.path}", flush=True)
            super().do_GET()
            print(f"{time.time():.3f} GET-END {self.client_address[0]} {self.path}", flush=True)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer((addr, port), functools.partial(Handler, directory=directory))
    print(f"{time.time():.3f} READY {addr}:{port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        _serve(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit("usage: python -m metalcore.lab.site_dhcp serve ADDR PORT DIR")
