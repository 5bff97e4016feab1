#!/usr/bin/env python3
"""extract_pcap.py PCAP -- list the DHCP frames in a classic pcap (as tcpdump -w writes it);
with --save INDEX NAME.bin write frame INDEX (0-based) to NAME.bin. No scapy: the pcap format is
a 24-byte file header and a 16-byte header per record (https://wiki.wireshark.org/Development/LibpcapFileFormat)."""
import struct
import sys


def frames(path):
    data = open(path, "rb").read()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    while off + 16 <= len(data):
        ts, tsu, incl, orig = struct.unpack_from(endian + "IIII", data, off)
        yield ts + tsu / 1e6, data[off + 16 : off + 16 + incl]
        off += 16 + incl


def main():
    sys.path.insert(0, __file__.rsplit("/tests/", 1)[0])
    from metalcore.protocol import dhcp, frames as fr
    items = list(frames(sys.argv[1]))
    if len(sys.argv) > 2 and sys.argv[2] == "--save":
        open(sys.argv[4], "wb").write(items[int(sys.argv[3])][1])
        return
    t0 = items[0][0] if items else 0
    for i, (ts, f) in enumerate(items):
        try:
            u = fr.decode_udp_frame(f)
            p = dhcp.decode(u.payload)
            print(f"{i:3d} {ts - t0:7.3f}s {len(f)}B {u.ip.src}:{u.udp.src_port}->{u.ip.dst}:{u.udp.dst_port} "
                  f"csum={u.udp.checksum_state.name} op={p.op} mt={p.message_type()!s} mac={p.mac} "
                  f"xid={p.xid:08x} 60={p.vendor_class()} 77={p.user_classes()} 93={p.client_archs()} "
                  f"175={sorted(p.ipxe_options())} file={p.file_name!r}")
        except Exception as exc:  # a listing tool: show what failed and go on
            print(f"{i:3d} {ts - t0:7.3f}s {len(f)}B error {exc!r}")


if __name__ == "__main__":
    main()
