"""The lab disk image, read back the way the firmwares read it: MBR -> partition -> FAT12 -> PE32+.

The boots themselves (SeaBIOS runs the MBR code, OVMF the EFI loader) are in
tests/integration/test_lab_pxe.py; this reads the bytes with an independent little parser.
"""
from __future__ import annotations

import struct

from metalcore.lab import bootdisk


def _fat12_next(fat: bytes, n: int) -> int:
    v = struct.unpack_from("<H", fat, n * 3 // 2)[0]
    return v >> 4 if n % 2 else v & 0xFFF


def _read_file(part: bytes, path: str) -> bytes:
    (bps, spc, reserved, nfats, root_entries, _total, _media, spf) = struct.unpack_from("<HBHBHHBH", part, 11)
    assert (bps, spc) == (512, 1) and part[510:512] == b"\x55\xaa" and part[54:62] == b"FAT12   "
    fat = part[reserved * bps:(reserved + spf) * bps]
    assert fat[:3] == b"\xf8\xff\xff"
    root_off = (reserved + nfats * spf) * bps
    data_off = root_off + root_entries * 32

    def chain(first: int) -> bytes:
        out, n = b"", first
        while n < 0xFF8:
            out += part[data_off + (n - 2) * bps:data_off + (n - 1) * bps]
            n = _fat12_next(fat, n)
        return out

    entries = part[root_off:data_off]
    *dirs, name = path.split("/")
    for want in dirs + [name]:
        base, _, ext = want.partition(".")
        key = base.ljust(8).encode() + ext.ljust(3).encode()
        for k in range(0, len(entries), 32):
            e = entries[k:k + 32]
            if e[:11] == key:
                cluster, size = struct.unpack_from("<HI", e, 26)
                if e[11] & 0x10:
                    entries = chain(cluster)
                    break
                return chain(cluster)[:size]
        else:
            raise AssertionError(f"{want} not found")
    raise AssertionError(f"{path} is a directory")


def test_mbr_keeps_the_bios_code_and_has_one_efi_system_partition():
    disk = bootdisk.build()
    assert len(disk) == bootdisk.DISK_SIZE
    assert disk[:len(bootdisk.BIOS_CODE)] == bootdisk.BIOS_CODE and disk[510:512] == b"\x55\xaa"
    ptype, start, count = struct.unpack_from("<xxxxBxxxII", disk, 446)
    assert (ptype, start) == (0xEF, bootdisk.PART_START)
    assert (start + count) * 512 == len(disk)
    assert disk[462:510] == bytes(48)  # the other three entries are empty


def test_esp_holds_the_removable_media_loader():
    disk = bootdisk.build()
    part = disk[bootdisk.PART_START * 512:]
    assert struct.unpack_from("<I", part, 28)[0] == bootdisk.PART_START  # hidden sectors
    efi = _read_file(part, "EFI/BOOT/BOOTX64.EFI")
    assert efi == bootdisk.efi_application(bootdisk.EFI_CODE)


def test_efi_loader_is_a_pe32plus_efi_application():
    pe = bootdisk.efi_application(bootdisk.EFI_CODE)
    lfanew = struct.unpack_from("<I", pe, 0x3C)[0]
    assert pe[:2] == b"MZ" and pe[lfanew:lfanew + 4] == b"PE\0\0"
    machine, nsect, _, _, _, optsize, chars = struct.unpack_from("<HHIIIHH", pe, lfanew + 4)
    assert (machine, nsect, optsize) == (0x8664, 1, 240)
    assert not chars & 0x0001  # relocations not stripped: EDK2 may load it anywhere
    opt = lfanew + 24
    magic, entry = struct.unpack_from("<H", pe, opt)[0], struct.unpack_from("<I", pe, opt + 16)[0]
    subsystem = struct.unpack_from("<H", pe, opt + 68)[0]
    assert (magic, subsystem) == (0x20B, 10)
    sect = opt + optsize
    vsize, rva, _rawsize, rawptr = struct.unpack_from("<IIII", pe, sect + 8)
    assert entry == rva and pe[rawptr:rawptr + vsize] == bootdisk.EFI_CODE
    assert bootdisk.DISK_MARKER.encode() in bootdisk.EFI_CODE


def test_image_is_reproducible():
    assert bootdisk.build() == bootdisk.build()
