"""The whole embedded rack: RackLab's peers plus the Metal API stand-in, the PXE network (namespaces, site
dnsmasq) and QEMU machines whose power and boot device are in their BMCs' hands.

This is what `scripts/run` starts (`metalcore lab up --rack`) and what the end-to-end tests use. metalcore
itself runs in the host namespace and opens only the sockets that face the machines inside the rack
namespace (settings.netns), so it reaches the stand-in, nsqd and the BMCs on 127.0.0.1 while the machines
reach it at the rack address.

    lab = up_full(run_dir, machines=2)     # a RackLab; lab.service_info has "metal-api", "pxe-net", "images"
    write_settings(lab, run_dir / "metalcore.toml")
    down_full(run_dir)                     # VMs, services, peers, then the namespaces
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

from metalcore.lab import procs
from metalcore.lab.bmcs import DEFAULT_HOOK
from metalcore.lab.images import ensure_images
from metalcore.lab.machines import HOOK, MachineFactory, kill_hook_vm, reap_qemu_orphans
from metalcore.lab.metal_api.app import DEFAULT_KEYS
from metalcore.lab.netns import RackNet
from metalcore.lab.ports import free_tcp_ports
from metalcore.lab.procs import LabError
from metalcore.lab.rack import RackLab, ServiceSpec, machine_id, machine_mac
from metalcore.lab.site_dhcp import SiteDhcp
from metalcore.lab.switches import port_mac

PARTITION = "lab"
RACK = "rack01"
# what the partition's boot config puts in front of metalcore's part of the command line
COMMANDLINE = "console=ttyS0 METALCORE_LAB_AFTER=reboot"


def _metal_api_service(lab: RackLab, wait_timeout: float) -> dict:
    # every waiting machine holds one stand-in thread with its long-poll: room for all of them + the rest
    threads = max(32, len(lab.machines) + 32)
    port = free_tcp_ports(1)[0]
    images = lab.service_info["images"]
    workdir = lab.lab_dir / "metal-api"
    env = {**os.environ, "METAL_API_LAB_VIEW_KEY": DEFAULT_KEYS["Metal-View"],
           "METAL_API_LAB_EDIT_KEY": DEFAULT_KEYS["Metal-Edit"], "METAL_API_LAB_ADMIN_KEY": DEFAULT_KEYS["Metal-Admin"]}
    rec = procs.spawn("metal-api", [sys.executable, "-m", "metalcore.lab.metal_api", "--port", str(port),
                                    "--partition", PARTITION, "--nsqd-http", lab.nsq.nsqd_http_address,
                                    "--kernelurl", images["kernel_url"], "--imageurl", images["initrd_url"],
                                    "--commandline", COMMANDLINE, "--wait-timeout", str(wait_timeout),
                                    "--threads", str(threads)],
                      cwd=workdir, log=workdir / "metal-api.log", env=env)

    def healthy() -> bool:
        if not procs.is_running(rec):
            raise LabError(f"metal-api stand-in exited: {procs.log_tail(rec.log)}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_lab/health", timeout=0.5):
                return True
        except OSError:
            return False

    procs.wait_for(healthy, 20, 0.05, "the metal-api stand-in")
    return {"procs": [rec.to_dict()], "url": f"http://127.0.0.1:{port}", "port": port, "keys": DEFAULT_KEYS}


def _images_service(lab: RackLab) -> dict:
    """The partition's image server: plain HTTP on the host's loopback, as a blob store would be."""
    imgs = ensure_images()
    served = lab.lab_dir / "images"
    served.mkdir(parents=True, exist_ok=True)
    for name, src in (("vmlinuz", imgs.kernel), ("initrd.img", imgs.initrd)):
        link = served / name
        link.unlink(missing_ok=True)
        link.symlink_to(Path(src).resolve())
    port = free_tcp_ports(1)[0]
    rec = procs.spawn("image-server", [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                       "--directory", str(served), str(port)],
                      cwd=lab.lab_dir, log=lab.lab_dir / "image-server.log")
    base = f"http://127.0.0.1:{port}"
    procs.wait_for(lambda: _get_ok(f"{base}/vmlinuz"), 10, 0.05, "the image server")
    return {"procs": [rec.to_dict()], "kernel_url": f"{base}/vmlinuz", "initrd_url": f"{base}/initrd.img"}


def _get_ok(url: str) -> bool:
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=0.5):
            return True
    except OSError:
        return False


def up_full(run_dir: str | Path, machines: int = 2, ports_per_switch: int = 8, firmware: str = "bios",
            wait_timeout: float = 30.0, bmc_only: int = 0) -> RackLab:
    """Bring the whole rack up (idempotent: an existing full rack in run_dir is adopted).

    ``bmc_only`` more machine slots (indexes machines+1 ...) exist only as a BMC (the plain file hook,
    chassis_hook.sh, powered on) and switch ports: no QEMU; a test speaks for their initrd over HTTP.
    ``ports_per_switch`` must cover every slot that should be wired (machines + bmc_only).
    """
    run_dir = Path(run_dir).resolve()
    state = run_dir / "lab" / "state.json"
    total = machines + bmc_only
    if state.exists():
        lab = RackLab(run_dir, bmcs=total, ports_per_switch=ports_per_switch, chassis_hook=f"/bin/sh {HOOK}")
        lab.up()  # adopts a running lab of the same shape, refuses another one
        if "pxe-net" not in lab.service_info:
            raise LabError(f"a lab without the PXE network is up in {run_dir}; `metalcore lab down` first")
        return lab
    lab_dir = run_dir / "lab"
    lab_dir.mkdir(parents=True, exist_ok=True)
    net = RackNet(state_file=lab_dir / "netns.json").up()
    dhcp = None
    try:
        dhcp = SiteDhcp(net, lab_dir / "dhcp").start()
        factory = MachineFactory(net, lab_dir / "machines")

        def wire_machine(b) -> None:
            if b.index > machines:  # BMC-only slot: a machine that is on (its "initrd" runs elsewhere)
                (Path(b.state_dir) / "power").write_text("1\n")
                (Path(b.state_dir) / "boot").write_text("pxe\n")
                return
            m = factory.create(firmware=firmware, index=b.index, name=f"machine{b.index:03d}",
                               uuid=machine_id(b.index), macs=[machine_mac(b.index, 0), machine_mac(b.index, 1)],
                               neighbors=[port_mac(1, b.index), port_mac(2, b.index)], bmc_address=b.address,
                               bmc_user=b.user, bmc_password=b.password, disk=True)
            m.write_hook_files(Path(b.state_dir), boot="pxe")

        pxe_info = {"net": net.to_dict(), "procs": [dhcp.proc.to_dict()], "rack_ip": net.rack_ip,
                    "rack_if": net.rack_if, "rack_ns": net.rack_ns, "machine_ns": net.machine_ns,
                    "prefixlen": net.network.prefixlen}
        lab = RackLab(run_dir, bmcs=total, ports_per_switch=ports_per_switch, chassis_hook=f"/bin/sh {HOOK}",
                      chassis_hook_of=lambda i: None if i <= machines else DEFAULT_HOOK,
                      bmc_state_init=wire_machine, services=[
                          ServiceSpec("pxe-net", lambda lab: pxe_info),
                          ServiceSpec("images", _images_service),
                          ServiceSpec("metal-api", lambda lab: _metal_api_service(lab, wait_timeout)),
                      ])
        lab.up()
    except BaseException:
        if dhcp is not None and dhcp.proc is not None:
            procs.stop_many([dhcp.proc])
        net.down()
        raise
    return lab


def down_full(run_dir: str | Path) -> list[int]:
    """Stop the VMs the BMC hooks started, every recorded process, then remove the namespaces."""
    lab = RackLab.load(run_dir)
    for m in lab.machines:
        kill_hook_vm(Path(m.bmc.state_dir))
    pxe = lab.service_info.get("pxe-net")
    left = lab.down()
    reap_qemu_orphans()
    if pxe is not None:
        RackNet.from_dict(pxe["net"]).down()
    return left


def settings_toml(lab: RackLab, run_dir: str | Path) -> str:
    """metalcore's settings for this lab (the values an operator would put in an env file)."""
    pxe, api = lab.service_info["pxe-net"], lab.service_info["metal-api"]
    switches = ",".join(f"{s.name}=netconf://{s.username}:{s.password}@{s.host}:{s.port}"
                        for s in lab.switches.values())
    values = {
        "partition_id": PARTITION, "rack_id": RACK,
        "cidr": f"{pxe['rack_ip']}/{pxe['prefixlen']}",
        "hmac_key": api["keys"]["Metal-Edit"],
        "metal_api_protocol": "http", "metal_api_ip": "127.0.0.1", "metal_api_port": api["port"],
        "mq_address": lab.nsq.lookupd_http_address,
        "pxe_interface": pxe["rack_if"], "netns": pxe["rack_ns"],
        "switches": switches, "reconfigure_switch": True,
        # the leaves' uplinks move past the machine ports in a rack of more than 30 slots (switches.py)
        "spine_uplinks": ",".join(lab.switch_lab.uplinks),
        "run_dir": str(Path(run_dir).resolve()),
        "metrics_server_bind_address": "127.0.0.1",
        # a lab VM reaches its PXE ROM's DHCP within seconds of a cycle (TCG, loaded machine: < 30 s)
        "pxe_boot_watchdog": "60s",
    }
    lines = ["# written by metalcore.lab.full_rack for the embedded rack lab"]
    for k, v in values.items():
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            lines.append(f"{k} = {v}")
        else:
            lines.append(f'{k} = "{v}"')
    return "\n".join(lines) + "\n"


def write_settings(lab: RackLab, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(settings_toml(lab, path.parent))
    return path
