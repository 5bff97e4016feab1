#!/usr/bin/env python3
"""Coverage-guided fuzzing of the DHCP codec (libFuzzer via atheris).

Invariant (h11 fuzz/afl-server.py style): any byte string either decodes or raises MalformedPacket;
a successful decode re-encodes, and decoding that again gives the same packet. The PXE decision
layer must then return an outcome (Reply or Ignore) without raising.

    nice -n 10 .venv/bin/python tests/fuzz/atheris_dhcp.py -atheris_runs=1000000 [corpus_dir]

Seeds: the captured packets in tests/data/dhcp (UDP payloads) are used when no corpus is given.
"""

import os
import sys
from ipaddress import IPv4Address
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from metalcore.protocol import dhcp, frames, pxe
    from metalcore.protocol.errors import MalformedPacket

SETTINGS = pxe.ProxySettings(server_ip=IPv4Address("10.0.0.1"), ipxe_script_url="http://10.0.0.1/ipxe/{mac}",
                             http_boot_base_url="http://10.0.0.1/boot")


def TestOneInput(data: bytes) -> None:
    try:
        p = dhcp.decode(data)
    except MalformedPacket:
        return
    again = dhcp.decode(dhcp.encode(p))
    if again != p:
        raise AssertionError(f"re-encode not stable:\n{p}\n{again}")
    for view in (p.message_type, p.client_archs, p.client_guid, p.client_ndi, p.ipxe_options, p.pxe_options,
                 p.server_id):
        try:
            view()
        except MalformedPacket:
            pass
    for port in (67, 4011):
        out = pxe.handle_request(p, SETTINGS, local_port=port, source=(IPv4Address("10.0.0.9"), 68))
        if isinstance(out, pxe.Reply):
            assert dhcp.decode(out.payload) == out.packet


def seed_corpus(dirname: str) -> None:
    os.makedirs(dirname, exist_ok=True)
    for f in sorted((ROOT / "tests" / "data" / "dhcp").glob("*.bin")):
        Path(dirname, f.name).write_bytes(frames.decode_udp_frame(f.read_bytes()).payload)


def main() -> None:
    args = list(sys.argv)
    dirs = [a for a in args[1:] if not a.startswith("-")]
    if not dirs:
        dirs = [os.environ.get("DHCP_FUZZ_CORPUS", "/tmp/metalcore-dhcp-fuzz-corpus")]
        args.append(dirs[0])
    if not os.path.isdir(dirs[0]) or not os.listdir(dirs[0]):
        seed_corpus(dirs[0])
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
