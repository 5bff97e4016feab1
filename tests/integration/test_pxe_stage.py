"""The PXE stage as a real process in the rack lab: dnsmasq gives only addresses, metalcore says what to boot.

* a QEMU BIOS (SeaBIOS + iPXE ROM) and a UEFI (OVMF + iPXE EFI) machine PXE boot through the stage to
  the lab initrd's first marker (kernel and initrd proxied and cached by the stage from the partition's
  boot config URLs);
* an allocated machine gets no offer; a port-4011 ProxyDHCPREQUEST is answered to its source port;
* hostile packets from a raw socket in the machines' namespace: no crash, no answer, counted by reason.

Peers: root, ip netns, dnsmasq, qemu-system-x86, ipxe-qemu, ovmf, the Metal API stand-in. About 60 s.
"""
from __future__ import annotations

import shutil
import socket
import time
import uuid
from ipaddress import IPv4Address

import pytest

from metalcore.lab import procs
from metalcore.protocol import dhcp, frames
from metalcore.protocol.dhcp import MessageType, Option
from metalcore.lab.pxe_stage import PxeStageProc, UpstreamFiles, add_client_veth
from metalcore.lab.pxe_client import PxeClient, discover_frame, discover_packet

pytestmark = pytest.mark.timeout(300)

FIRST = "METALCORE-MARKER initrd-started"
HMAC = "test-edit-key"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, lab_images):
    d = tmp_path_factory.mktemp("upstream")
    shutil.copy(lab_images.kernel, d / "vmlinuz")
    shutil.copy(lab_images.initrd, d / "initrd.img")
    srv = UpstreamFiles(d).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(upstream):
    from metalcore.lab.metal_api import LabConfig, LabServer, MetalAPILab
    cfg = LabConfig(keys={"Metal-View": "test-view-key", "Metal-Edit": HMAC, "Metal-Admin": "test-admin-key"}, partition_id="lab", wait_timeout=2.0, twin_switches=False,
                    bootconfig={"kernelurl": upstream.url("vmlinuz"), "imageurl": upstream.url("initrd.img"),
                                "commandline": "console=ttyS0 panic=-1 quiet"})
    srv = LabServer(cfg).start()
    lab = MetalAPILab(f"http://{srv.host}:{srv.port}", cfg.keys)
    lab.server = srv
    lab.wait_ready()
    yield lab
    violations = srv.state.recorder.violations()
    lab.close()
    srv.stop()
    assert not violations, f"metal-api stand-in saw swagger violations: {violations[:3]}"


@pytest.fixture(scope="module")
def stage(pxe_net, api, tmp_path_factory):
    net = pxe_net.net
    st = PxeStageProc(tmp_path_factory.mktemp("pxe-stage"), rack_ns=net.rack_ns, rack_if=net.rack_if,
                      cidr=f"{net.rack_ip}/{net.network.prefixlen}", metal_api_url=api.url, hmac_key=HMAC)
    st.start()
    yield st
    running = procs.is_running(st.proc)
    st.stop()
    assert running, f"the pxe stage died during the tests:\n{procs.log_tail(st.log, 40)}"


@pytest.fixture(scope="module")
def client(pxe_net, stage):
    net = pxe_net.net
    name = add_client_veth(net.machine_ns, net.bridge, f"c{net.tag}")
    c = PxeClient(name, net.machine_ns)
    # the first frames on a new veth can be lost while the link settles: probe until the stage sees one
    seen0 = stage.metric("metalcore_pxe_dhcp_packets_total", direction="in")
    for i in range(50):
        c.send_raw(discover_frame(b"\x02\xa1\x00\x00\xff\xff", 0xF00 + i, vendor_class=b"probe"))
        time.sleep(0.1)
        if stage.metric("metalcore_pxe_dhcp_packets_total", direction="in") > seen0:
            break
    else:
        pytest.fail("frames from the client veth never reached the stage")
    yield c
    c.close()


def test_bios_and_uefi_machines_pxe_boot_through_metalcore(stage, api, pxe_net, machine_factory):
    bios = machine_factory.create(firmware="bios")
    uefi = machine_factory.create(firmware="uefi")
    t0 = {m.name: m.start() for m in (bios, uefi)}
    took = {}
    for m in (bios, uefi):
        line = m.console.wait_for(FIRST, 120)
        took[m.firmware] = round(line.time - t0[m.name], 2)
        mac = m.mac.replace(":", "%3A")  # iPXE prints the URL encoded
        assert m.console.find(rf":4280/ipxe/({m.mac}|{mac})\.\.\. ok"), "iPXE did not fetch its script from metalcore"
    print(f"first marker after QEMU start (two at once): {took}")
    for m in (bios, uefi):
        m.stop()
    leases = pxe_net.dhcp.leases()
    assert bios.mac in leases and uefi.mac in leases  # the site DHCP gave the addresses
    # one PXE Booting event per machine (GUID = SMBIOS uuid = machine id), not one per packet
    for m in (bios, uefi):
        events = [e for e in api.machine(m.uuid)["events"]["log"] if e["event"] == "PXE Booting"]
        assert len(events) == 1, events
    assert stage.metric("metalcore_pxe_proxy_replies_total") >= 2
    assert stage.metric("metalcore_pxe_http_requests_total", route="boot", status="200") >= 4
    assert stage.metric("metalcore_pxe_boot_file_fetch_seconds_count", outcome="fetched") == 2  # cached once


def _register_allocated(api, machine_id: str, mac: str) -> None:
    store = api.server.state.store
    store.register_machine({"uuid": machine_id, "partitionid": "lab", "rackid": "rack01",
                            "hardware": {"cpu_cores": 1, "memory": 1 << 28, "disks": [],
                                         "nics": [{"mac": mac, "name": "eth0", "neighbors": []}]}})
    store.allocate({"uuid": machine_id, "imageid": "ubuntu-19.10", "projectid": "p1"})
    store.finalize_allocation(machine_id, {})


def test_allocated_machine_gets_no_offer(stage, api, client):
    allocated, free = b"\x02\xa1\x00\x00\x00\x01", b"\x02\xa1\x00\x00\x00\x02"
    _register_allocated(api, str(uuid.uuid4()), allocated.hex(":"))
    ignored_before = stage.metric("metalcore_pxe_dhcp_ignored_total", reason="verdict_disk")
    # iPXE retransmits; the first DISCOVER of an unknown MAC is answered once the Metal API answered
    got_free = client.ask(free, 0x1001, timeout=1.5) or client.ask(free, 0x1001, timeout=1.5)
    got_alloc = client.ask(allocated, 0x1002, timeout=1.5) + client.ask(allocated, 0x1002, timeout=1.5)
    assert [p for p in got_free if p.options.get(Option.VENDOR_CLASS) == b"PXEClient"], "free machine: no offer"
    offer = next(p for p in got_free if p.options.get(Option.VENDOR_CLASS) == b"PXEClient")
    assert int(offer.yiaddr) == 0 and offer.message_type() == MessageType.OFFER  # never a lease
    assert offer.file_name.endswith(f"/ipxe/{free.hex(':')}")
    assert not [p for p in got_alloc if p.options.get(Option.VENDOR_CLASS) == b"PXEClient"]
    assert stage.metric("metalcore_pxe_dhcp_ignored_total", reason="verdict_disk") > ignored_before
    assert stage.metric("metalcore_pxe_boot_decisions_total", verdict="disk") >= 1


def test_port_4011_request_is_answered_to_its_source_port(stage, pxe_net, client):
    mac = b"\x02\xa1\x00\x00\x00\x03"
    req = discover_packet(mac, 0x4011, arch=7, ipxe=False, vendor_class=b"PXEClient:Arch:00007:UNDI:003016",
                          message_type=MessageType.REQUEST)
    req.options[Option.SERVER_ID] = IPv4Address(pxe_net.net.rack_ip).packed
    from metalcore.net.netns import in_netns
    # EDK2 sends its ProxyDHCPREQUEST from port 4011 (research note §8); a client socket in the machines'
    # namespace needs an address: give the client veth one for this test
    import subprocess
    net = pxe_net.net
    subprocess.run(["ip", "-n", net.machine_ns, "addr", "add", "10.250.0.250/24", "dev", f"c{net.tag}"], check=True)
    try:
        with in_netns(net.machine_ns):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("10.250.0.250", 4011))
        s.settimeout(3)
        ack = None
        for _ in range(3):  # the first request may wait for the Metal API; the stage answers when it knows
            s.sendto(dhcp.encode(req), (net.rack_ip, 4011))
            try:
                data, peer = s.recvfrom(4096)
                ack = dhcp.decode(data)
                break
            except TimeoutError:
                continue
        s.close()
    finally:
        subprocess.run(["ip", "-n", net.machine_ns, "addr", "del", "10.250.0.250/24", "dev", f"c{net.tag}"])
    assert ack is not None, "no answer on port 4011"
    assert peer == (net.rack_ip, 4011)
    assert ack.message_type() == MessageType.ACK and ack.xid == 0x4011 and int(ack.yiaddr) == 0
    assert ack.file_name == "ipxe.efi" and str(ack.siaddr) == net.rack_ip


def _frame(payload: bytes, mac: bytes, sport: int = 68, dport: int = 67) -> bytes:
    return frames.encode_udp_frame(src_mac=mac, dst_mac=frames.BROADCAST_MAC, src_ip=IPv4Address(0),
                                   dst_ip=IPv4Address("255.255.255.255"), src_port=sport, dst_port=dport,
                                   payload=payload)


def hostile_frames(mac: bytes) -> dict[str, list[bytes]]:
    """reason it must be counted under -> frames"""
    good = dhcp.encode(discover_packet(mac, 0xBAD))
    cookie = good[236:240]
    assert cookie == dhcp.MAGIC_COOKIE
    bad_cookie = good[:236] + b"\x63\x82\x53\x00" + good[240:]
    overrun = good[:240] + bytes((Option.VENDOR_CLASS, 200)) + b"PXEClient"
    overload_loop = good[:240] + bytes((52, 1, 1, 52, 1, 1)) + good[240:]  # option 52 twice
    htype = bytearray(good)
    htype[1] = 6  # IEEE 802 (not Ethernet)
    hlen = bytearray(good)
    hlen[2] = 17
    reply = bytearray(good)
    reply[0] = 2  # a BOOTREPLY sent to the server's port
    non_utf8 = discover_packet(mac, 0xBAD2, arch=0x7777)
    non_utf8.options[Option.VENDOR_CLASS] = b"PXEClient:\xff\xfe\xc3(\x80"
    non_utf8.options[Option.USER_CLASS] = b"\xff\xfe"
    return {
        "truncated": [_frame(good[:100], mac), _frame(good[:239], mac)],
        "bad_cookie": [_frame(bad_cookie, mac)],
        "option_overrun": [_frame(overrun, mac)],
        "overload_loop": [_frame(overload_loop, mac)],
        "bad_hlen": [_frame(bytes(hlen), mac)],
        "ignored:bad_htype": [_frame(bytes(htype), mac)],
        "ignored:not_request": [_frame(bytes(reply), mac)],
        "ignored:unknown_arch": [_frame(dhcp.encode(non_utf8), mac)],
    }


def test_hostile_packets_are_survived_and_counted(stage, client):
    mac = client.mac
    before = {}
    cases = hostile_frames(mac)
    for reason in cases:
        kind, _, r = reason.rpartition(":")
        metric = "metalcore_pxe_dhcp_ignored_total" if kind == "ignored" else "metalcore_pxe_dhcp_malformed_total"
        before[reason] = stage.metric(metric, reason=r)
    for fs in cases.values():
        for f in fs:
            client.send_raw(f)
    # a frame the kernel would drop anyway (IP header lies about its length) and a runt
    client.send_raw(b"\xff" * 6 + mac + b"\x08\x00" + b"\x45\x00\xff\xff" + bytes(30))
    client.send_raw(b"\xff" * 6 + mac + b"\x08\x00")
    # (the site dnsmasq may well lease an address to some of them: only ProxyDHCP answers count here)
    answers = [p for _t, _u, p in client.replies(1.5)
               if p.xid in (0xBAD, 0xBAD2) and p.options.get(Option.VENDOR_CLASS) == b"PXEClient"]
    assert not answers, f"answered a hostile packet: {answers}"
    time.sleep(0.3)
    for reason in cases:
        kind, _, r = reason.rpartition(":")
        metric = "metalcore_pxe_dhcp_ignored_total" if kind == "ignored" else "metalcore_pxe_dhcp_malformed_total"
        assert stage.metric(metric, reason=r) >= before[reason] + len(cases[reason]), (
            reason, [ln for ln in stage.metrics().splitlines() if "malformed" in ln or "ignored" in ln or "packets" in ln])
    assert stage.metric("metalcore_pxe_unknown_arch_total") >= 1
    # still alive and answering
    good = client.ask(b"\x02\xa1\x00\x00\x00\x09", 0x600D, timeout=1.5) or client.ask(
        b"\x02\xa1\x00\x00\x00\x09", 0x600D, timeout=1.5)
    assert good and procs.is_running(stage.proc)


def test_every_dhcp_packet_becomes_a_bus_event(stage, client):
    from metalcore.bus import EventSubscriber
    sub = EventSubscriber(str(stage.workdir / "run"), streams=("dhcp",), stages=("pxe",))
    time.sleep(0.3)  # SUB joins late (ZeroMQ slow joiner)
    mac = b"\x02\xa1\x00\x00\x00\x0b"
    guid = uuid.uuid4()
    client.send_raw(discover_frame(mac, 0xE7E7, guid=guid.bytes_le))
    seen = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and seen is None:
        env = sub.recv(timeout=0.5)
        if env is not None and env.body.get("xid") == "0x0000e7e7":
            seen = env
    assert seen is not None, "no dhcp event for the DISCOVER"
    b = seen.body
    assert (seen.name, b["mac"], b["type"], b["arch"], b["guid"]) == ("discover", mac.hex(":"), "DISCOVER", 0, str(guid))
    assert b["vendor_class"].startswith("PXEClient") and b["user_class"] == ["iPXE"]


def test_tftp_serves_debian_ipxe_binaries_read_only(stage, pxe_net, client):
    import io
    import subprocess

    import tftpy

    from metalcore.net.netns import in_netns
    net = pxe_net.net
    subprocess.run(["ip", "-n", net.machine_ns, "addr", "add", "10.250.0.251/24", "dev", f"c{net.tag}"], check=True)
    try:
        with in_netns(net.machine_ns):  # tftpy opens its socket inside download()
            out = io.BytesIO()
            tftpy.TftpClient(net.rack_ip, 69).download("undionly.kpxe", out, timeout=3)
            with pytest.raises(tftpy.TftpException):
                tftpy.TftpClient(net.rack_ip, 69).download("../../etc/passwd", io.BytesIO(), timeout=3)
    finally:
        subprocess.run(["ip", "-n", net.machine_ns, "addr", "del", "10.250.0.251/24", "dev", f"c{net.tag}"])
    assert out.getvalue() == open("/usr/lib/ipxe/undionly.kpxe", "rb").read()
    assert stage.metric("metalcore_pxe_tftp_transfers_total", outcome="served") >= 1
