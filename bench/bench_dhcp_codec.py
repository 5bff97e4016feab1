#!/usr/bin/env python3
"""bench_dhcp_codec.py [SECONDS] -- decode rate of the DHCP codec over the captured fixtures.

Prints packets/s for: dhcp.decode alone; frame + dhcp decode (the raw-socket path); decode plus the
PXE decision and encoding of the reply (the whole per-packet work of the PXE stage); and encode.
Goal: >= 100k packets/s for dhcp.decode (research note §3: a raw-socket reader parses ~100k frames/s).
"""

import sys
import time
from ipaddress import IPv4Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalcore.protocol import dhcp, frames, pxe  # noqa: E402

FRAMES = [p.read_bytes() for p in sorted((ROOT / "tests" / "data" / "dhcp").glob("*.bin"))]
PAYLOADS = [frames.decode_udp_frame(f).payload for f in FRAMES]
PACKETS = [dhcp.decode(p) for p in PAYLOADS]
SETTINGS = pxe.ProxySettings(server_ip=IPv4Address("10.251.77.1"), ipxe_script_url="http://10.251.77.1/{mac}",
                             http_boot_base_url="http://10.251.77.1/")


def rate(label: str, fn, items, seconds: float) -> None:
    n = 0
    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < end:
        for _ in range(50):
            for it in items:
                fn(it)
        n += 50 * len(items)
    dt = time.perf_counter() - t0
    print(f"{label:<40} {n / dt:>10,.0f} packets/s  ({dt / n * 1e6:.2f} us/packet, {n} packets)")


def full(frame: bytes) -> None:
    p = dhcp.decode(frames.decode_udp_frame(frame).payload)
    pxe.handle_request(p, SETTINGS)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    print(f"{len(FRAMES)} captured packets, Python {sys.version.split()[0]}")
    rate("dhcp.decode", dhcp.decode, PAYLOADS, seconds)
    rate("frames.decode_udp_frame + dhcp.decode", lambda f: dhcp.decode(frames.decode_udp_frame(f).payload),
         FRAMES, seconds)
    rate("frame + decode + pxe.handle_request", full, FRAMES, seconds)
    rate("dhcp.encode", dhcp.encode, PACKETS, seconds)


if __name__ == "__main__":
    main()
