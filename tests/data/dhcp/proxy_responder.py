#!/usr/bin/env python3
"""[TWO_STEP=1] proxy_responder.py IFACE MY_IP -- capture helper: answer PXE clients with metalcore.protocol.pxe.

Used by capture.sh (step proxy-*) to record real ProxyDHCP exchanges, including the port-4011
ProxyDHCPREQUEST, with our own OFFER/ACK bytes. Not the PXE stage: just enough socket code to
put pxe.handle_request on the wire (research note §5 variant E: UDP :67 next to dnsmasq)."""
import os
import select
import socket
import sys
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from metalcore.protocol import dhcp, pxe  # noqa: E402
from metalcore.protocol.errors import MalformedPacket  # noqa: E402

iface, me = sys.argv[1], IPv4Address(sys.argv[2])
settings = pxe.ProxySettings(server_ip=me, ipxe_script_url=f"http://{me}:8080/ipxe/{{mac}}",
                             http_boot_base_url=f"http://{me}:8080/boot",
                             boot_file_in_offer=os.environ.get("TWO_STEP") != "1")


def udp(port, addr="0.0.0.0"):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
    s.bind((addr, port))
    return s


socks = {udp(67): 67, udp(4011, str(me)): 4011}
while True:
    for s in select.select(list(socks), [], [])[0]:
        data, (ip, port) = s.recvfrom(2048)
        try:
            p = dhcp.decode(data)
        except MalformedPacket as exc:
            print("malformed", exc.reason, flush=True)
            continue
        out = pxe.handle_request(p, settings, local_port=socks[s], source=(IPv4Address(ip), port))
        if isinstance(out, pxe.Ignore):
            print(f"ignore {p.mac} on {socks[s]}: {out.reason.value} {out.detail}", flush=True)
            continue
        s.sendto(out.payload, (str(out.destination.ip), out.destination.port))
        print(f"{out.packet.message_type()!r} -> {out.destination.ip}:{out.destination.port} {p.mac} "
              f"arch {out.info.arch} file {out.choice.file}", flush=True)
