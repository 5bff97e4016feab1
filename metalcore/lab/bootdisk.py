"""The lab machines' disk: boots on SeaBIOS and on OVMF and prints DISK-BOOT-OK on COM1.

A machine the Metal API allocated boots "from its disk"; the lab only has to show that it did and
that it did not PXE boot instead.  One raw image serves both firmwares (pure Python, no mtools or
dosfstools, so a fresh clone builds it without another Debian package)::

    LBA 0        MBR: BIOS boot code (prints, halts) + one partition entry, type 0xEF (EFI System)
    LBA 64..end  FAT12 file system: \\EFI\\BOOT\\BOOTX64.EFI

* SeaBIOS runs the MBR code.  It writes straight to COM1, not through int 10h: SeaBIOS's sercon
  holds back the last characters until later output, which never comes after hlt.
* OVMF finds no BootXXXX entry for the disk, so its boot manager makes one for the whole disk and
  expands it to the removable-media path \\EFI\\BOOT\\BOOTX64.EFI on a FAT partition (UEFI 2.10
  3.5.1.1).  An MBR partition of type 0xEF is enough for EDK2's PartitionDxe; a GPT is not needed.
  BOOTX64.EFI is a hand-made PE32+ EFI application of 1 KiB: the same loop as the MBR code in
  64-bit mode (the UEFI boot services run in ring 0, so ``out`` to 0x3f8 works), then ``cli; hlt``.
  Interrupts off should also keep the boot manager's 5-minute watchdog (armed before a boot option
  starts; EDK2 runs it off the timer interrupt) from resetting the machine; not measured over 5 min.

The image depends only on this file: ``images.ensure_boot_disk`` caches it keyed on its bytes.
"""
from __future__ import annotations

import struct

DISK_MARKER = "DISK-BOOT-OK"
DISK_SIZE = 1 << 20
SECTOR = 512
PART_START = 64                      # LBA of the EFI System Partition
ESP_TYPE = 0xEF
_MSG = b"\r\n" + DISK_MARKER.encode() + b"\r\n\0"

# 16-bit MBR code: cli; xor ax,ax; mov ds,ax; mov si,7c17h(msg); cld; mov dx,3f8h;
# l: lodsb; test al,al; jz d; out dx,al; jmp l; d: hlt; jmp d; msg
BIOS_CODE = bytes.fromhex("fa31c08ed8be177cfcbaf803ac84c07403eeebf8f4ebfd") + _MSG
# 64-bit EFI code (as --64, intel syntax): cli; lea rsi,[rip+msg]; mov dx,0x3f8; cld;
# l: lodsb; test al,al; je d; out dx,al; jmp l; d: hlt; jmp d; msg
EFI_CODE = bytes.fromhex("fa488d351000000066baf803fcac84c07403eeebf8f4ebfd") + _MSG

# FAT directory entry attributes and a fixed time stamp (2024-01-01 00:00), so the image is reproducible
_ATTR_DIR, _ATTR_ARCHIVE, _ATTR_LABEL = 0x10, 0x20, 0x08
_FAT_DATE = ((2024 - 1980) << 9) | (1 << 5) | 1


def efi_application(code: bytes) -> bytes:
    """A PE32+ EFI application (subsystem 10) whose one section, at RVA 0x1000, is ``code``.

    No base relocations: ``code`` must be position independent (RIP-relative).  EDK2 loads such an
    image anywhere as long as IMAGE_FILE_RELOCS_STRIPPED is not set.
    """
    falign, salign, text_rva = 0x200, 0x1000, 0x1000
    raw = code + bytes(-len(code) % falign)
    dos = b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40)          # e_lfanew at 0x3c -> 0x40
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 240, 0x0022)  # x86-64, 1 section, exec + large addr
    opt = struct.pack("<HBBIIIII", 0x20B, 0, 0, len(raw), 0, 0, text_rva, text_rva)
    opt += struct.pack("<QIIHHHHHHIIIIHHQQQQII", 0, salign, falign, 0, 0, 0, 0, 0, 0, 0,
                       text_rva + salign, falign, 0, 10, 0, 0x10000, 0x1000, 0, 0, 0, 16)
    opt += bytes(16 * 8)                                          # data directories: none
    section = struct.pack("<8sIIIIIIHHI", b".text", len(code), text_rva, len(raw), falign, 0, 0, 0, 0,
                          0x60000020)                             # code, execute, read
    headers = dos + b"PE\0\0" + coff + opt + section
    assert len(opt) == 240 and len(headers) <= falign
    return headers + bytes(falign - len(headers)) + raw


def _dirent(name: str, attr: int, cluster: int = 0, size: int = 0) -> bytes:
    """A 32-byte directory entry; ``name`` is 8.3 ("BOOTX64.EFI"), "." / "..", or a raw label."""
    if name in (".", "..") or attr == _ATTR_LABEL:
        short = name.ljust(11).encode()[:11]
    else:
        base, _, ext = name.partition(".")
        short = base.ljust(8).encode() + ext.ljust(3).encode()
    return struct.pack("<11sBBBHHHHHHHI", short, attr, 0, 0, 0, _FAT_DATE, _FAT_DATE, 0, 0, _FAT_DATE,
                       cluster, size)


def fat12(files: dict[str, bytes], sectors: int, hidden: int, label: str = "METALCORE") -> bytes:
    """A FAT12 volume of ``sectors`` sectors holding ``files`` ("DIR/SUB/NAME.EXT" -> bytes, 8.3 names).

    One sector per cluster, 2 FATs, 16 root entries; ``hidden`` is the partition's first LBA.
    """
    reserved, nfats, root_entries = 1, 2, 16
    root_sectors = root_entries * 32 // SECTOR
    fat_sectors = 1
    while True:  # the FAT must cover the clusters left after the FATs themselves
        clusters = sectors - reserved - nfats * fat_sectors - root_sectors
        if (clusters + 2) * 3 // 2 + 1 <= fat_sectors * SECTOR:
            break
        fat_sectors += 1
    if clusters >= 4085:
        raise ValueError(f"{sectors} sectors is too big for FAT12")

    chains: list[int] = [0xFF8, 0xFFF]            # FAT[0] = media byte, FAT[1] = end of chain
    data: list[bytes] = []                        # cluster 2, 3, ... contents

    def alloc(content: bytes) -> int:
        n = max(1, -(-len(content) // SECTOR))
        first = len(chains)
        for k in range(n):
            chains.append(first + k + 1 if k < n - 1 else 0xFFF)
            data.append(content[k * SECTOR:(k + 1) * SECTOR].ljust(SECTOR, b"\0"))
        return first

    # directories as a tree; a directory's entries are written once its children have clusters
    tree: dict = {}
    for path, blob in files.items():
        *dirs, name = path.upper().split("/")
        node = tree
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = blob

    def write_dir(node: dict, parent: int) -> int:
        me = alloc(bytes(SECTOR))   # one cluster holds 16 entries: plenty for the lab disk
        entries = [_dirent(".", _ATTR_DIR, me), _dirent("..", _ATTR_DIR, parent)]
        entries += children(node, me)
        data[me - 2] = b"".join(entries).ljust(SECTOR, b"\0")
        return me

    def children(node: dict, me: int) -> list[bytes]:
        out = []
        for name, val in node.items():
            if isinstance(val, dict):
                out.append(_dirent(name, _ATTR_DIR, write_dir(val, me)))
            else:
                out.append(_dirent(name, _ATTR_ARCHIVE, alloc(val) if val else 0, len(val)))
        if len(out) > 14:
            raise ValueError("the lab FAT writer keeps each directory in one cluster")
        return out

    root = [_dirent(label, _ATTR_LABEL)]
    root += children(tree, 0)   # ".." of a root child is cluster 0
    if len(root) > root_entries:
        raise ValueError("too many root entries")

    fat = bytearray(fat_sectors * SECTOR)
    for n, v in enumerate(chains):
        off = n * 3 // 2
        if n % 2 == 0:
            fat[off] = v & 0xFF
            fat[off + 1] = (fat[off + 1] & 0xF0) | (v >> 8)
        else:
            fat[off] = (fat[off] & 0x0F) | ((v & 0x0F) << 4)
            fat[off + 1] = v >> 4

    boot = bytearray(SECTOR)
    boot[0:3] = b"\xEB\x3C\x90"                      # EDK2's FAT driver wants a jump here
    boot[3:62] = struct.pack("<8sHBHBHHBHHHIIBBBI11s8s", b"METALCOR", SECTOR, 1, reserved, nfats,
                             root_entries, sectors, 0xF8, fat_sectors, 32, 2, hidden, 0, 0x80, 0, 0x29,
                             0x4D4C4142, label.ljust(11).encode()[:11], b"FAT12   ")
    boot[510:512] = b"\x55\xAA"
    image = bytes(boot) + bytes(fat) * nfats + b"".join(root).ljust(root_sectors * SECTOR, b"\0")
    image += b"".join(data)
    return image.ljust(sectors * SECTOR, b"\0")


def build(size: int = DISK_SIZE) -> bytes:
    """The whole raw disk image (``size`` bytes)."""
    part_sectors = size // SECTOR - PART_START
    mbr = bytearray(SECTOR)
    mbr[:len(BIOS_CODE)] = BIOS_CODE
    mbr[440:444] = struct.pack("<I", 0x4D434C42)     # disk signature (EDK2's HD() device path uses it)
    # status, CHS start (unused: 0xFE 0xFF 0xFF = "use LBA"), type, CHS end, LBA start, sectors
    mbr[446:462] = struct.pack("<B3sB3sII", 0x00, b"\xFE\xFF\xFF", ESP_TYPE, b"\xFE\xFF\xFF",
                               PART_START, part_sectors)
    mbr[510:512] = b"\x55\xAA"
    esp = fat12({"EFI/BOOT/BOOTX64.EFI": efi_application(EFI_CODE)}, part_sectors, PART_START)
    return bytes(mbr) + bytes((PART_START - 1) * SECTOR) + esp
