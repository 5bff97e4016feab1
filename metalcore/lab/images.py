"""Kernel and initrd for the lab machines, built from Debian packages and cached.

The kernel is Debian's own (the package ``linux-image-amd64`` depends on), fetched with
``apt-get download`` and unpacked with ``dpkg -x``: never installed, /boot is not touched.
The initrd is busybox-static plus ``metalcore/lab/initrd/init`` plus the NIC/disk modules the
kernel builds as modules (Debian 6.1: virtio, virtio_pci, virtio_net, failover, net_failover,
virtio_blk are all ``=m``), packed with ``cpio -H newc`` and gzip.

Cache layout (``cache_dir``, default ``<repo>/.lab-cache``, or ``$METALCORE_LAB_CACHE``)::

    kernel/<package>/vmlinuz            the unpacked kernel
    kernel/<package>/modules/<name>.ko  only the modules the initrd needs (and their deps)
    kernel/<package>/release            the kernel release (uname -r)
    initrd-<sha256[:16]>.img            keyed on busybox, init, module files and module list
    bootdisk-<sha256[:16]>.raw          the lab machines' disk (bootdisk.py), keyed on its source

Only what changed is rebuilt: a new kernel package (after ``apt-get update``) downloads again,
an edited ``init`` repacks the initrd (about a second).  Nothing is downloaded but Debian
packages.
"""
from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from metalcore.lab.procs import LabError, MissingPeerBinary

REPO = Path(__file__).resolve().parents[2]
INIT_SCRIPT = Path(__file__).resolve().parent / "initrd" / "init"
BOOTDISK_SOURCE = Path(__file__).resolve().parent / "bootdisk.py"
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX = "/bin/busybox"
# What /init needs.  Their dependencies are found from each module's .modinfo "depends=".
WANTED_MODULES = ("virtio_pci", "virtio_net", "virtio_blk")


@dataclass(frozen=True)
class BootImages:
    """The two files a lab machine boots, plus where they came from."""

    kernel: Path
    initrd: Path
    package: str          # e.g. linux-image-6.1.0-56-amd64
    release: str          # e.g. 6.1.0-56-amd64
    modules: tuple[str, ...]  # insmod order baked into the initrd


def default_cache_dir() -> Path:
    return Path(os.environ.get("METALCORE_LAB_CACHE", REPO / ".lab-cache"))


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as e:
        raise MissingPeerBinary(f"{argv[0]} not found: {e}") from e
    if r.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return r.stdout


def kernel_package() -> str:
    """The versioned kernel package ``linux-image-amd64`` depends on, from the local apt lists."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE])
    m = re.search(r"Depends:\s*(linux-image-\S+)", out)
    if not m:
        raise LabError(f"apt-cache depends {KERNEL_META_PACKAGE} names no kernel; run apt-get update")
    return m.group(1)


def _modinfo_depends(ko: bytes) -> list[str]:
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", ko)
    return [d for d in (m.group(1).decode().split(",") if m else []) if d]


def _read_ko(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        raise LabError(f"{path}: zstd-compressed modules are not supported (no zstd in the stdlib)")
    return data


def _module_closure(modroot: Path, wanted: tuple[str, ...]) -> tuple[list[str], dict[str, bytes]]:
    """Load order (dependencies first) and contents of ``wanted`` and all they depend on."""
    index: dict[str, Path] = {}
    for p in modroot.rglob("*.ko*"):
        index[re.sub(r"\.ko(\.xz|\.zst)?$", "", p.name).replace("-", "_")] = p
    order: list[str] = []
    blobs: dict[str, bytes] = {}

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in blobs:
            return
        if name not in index:
            return  # built into the kernel
        blobs[name] = _read_ko(index[name])
        for dep in _modinfo_depends(blobs[name]):
            visit(dep)
        order.append(name)

    for w in wanted:
        visit(w)
    return order, blobs


def ensure_kernel(cache_dir: Path, package: str | None = None) -> Path:
    """``cache_dir/kernel/<package>`` holding vmlinuz, release and modules/; downloads if missing."""
    package = package or kernel_package()
    kdir = cache_dir / "kernel" / package
    if (kdir / "vmlinuz").is_file() and (kdir / "modules" / "order").is_file():
        return kdir
    for tool, pkg in (("apt-get", "apt"), ("dpkg", "dpkg")):
        if not shutil.which(tool):
            raise MissingPeerBinary(f"{tool} not found; this lab needs Debian's {pkg}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="kbuild-") as tmp:
        t = Path(tmp)
        _run(["apt-get", "download", package], cwd=t)
        debs = list(t.glob(f"{package}_*.deb"))
        if len(debs) != 1:
            raise LabError(f"apt-get download {package} left {debs}")
        _run(["dpkg", "-x", str(debs[0]), str(t / "x")])
        vmlinuz = next((t / "x" / "boot").glob("vmlinuz-*"))
        release = vmlinuz.name[len("vmlinuz-"):]
        order, blobs = _module_closure(t / "x" / "lib" / "modules" / release, WANTED_MODULES)
        stage = t / "out"
        (stage / "modules").mkdir(parents=True)
        shutil.copy2(vmlinuz, stage / "vmlinuz")
        (stage / "release").write_text(release + "\n")
        for name, blob in blobs.items():
            (stage / "modules" / f"{name}.ko").write_bytes(blob)
        (stage / "modules" / "order").write_text("".join(f"{n}\n" for n in order))
        if kdir.exists():
            shutil.rmtree(kdir)
        kdir.parent.mkdir(parents=True, exist_ok=True)
        stage.rename(kdir)
    return kdir


def _initrd_key(kdir: Path, order: list[str]) -> str:
    h = hashlib.sha256()
    for p in [Path(BUSYBOX), INIT_SCRIPT] + [kdir / "modules" / f"{n}.ko" for n in order]:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update("\n".join(order).encode())
    return h.hexdigest()[:16]


def build_initrd(kdir: Path, out: Path, order: list[str]) -> None:
    if not Path(BUSYBOX).is_file():
        raise MissingPeerBinary(f"{BUSYBOX} not found; install it with apt-get install busybox-static")
    if not shutil.which("cpio"):
        raise MissingPeerBinary("cpio not found; install it with apt-get install cpio")
    with tempfile.TemporaryDirectory(dir=out.parent, prefix="initrd-") as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "proc", "sys", "dev", "tmp", "lib/modules"):
            (root / d).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        shutil.copy2(INIT_SCRIPT, root / "init")
        os.chmod(root / "init", 0o755)
        for n in order:
            shutil.copy2(kdir / "modules" / f"{n}.ko", root / "lib" / "modules" / f"{n}.ko")
        (root / "modules.order").write_text("".join(f"{n}\n" for n in order))
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                              input=("\n".join(["."] + names) + "\n").encode(), capture_output=True)
        if cpio.returncode != 0:
            raise LabError(f"cpio failed: {cpio.stderr.decode()[-500:]}")
        part = Path(tmp) / "initrd.img"
        part.write_bytes(gzip.compress(cpio.stdout, compresslevel=6, mtime=0))
        part.rename(out)


def ensure_images(cache_dir: Path | None = None) -> BootImages:
    """The kernel and initrd, from the cache when their inputs are unchanged."""
    cache_dir = Path(cache_dir or default_cache_dir())
    package = kernel_package()
    kdir = ensure_kernel(cache_dir, package)
    order = (kdir / "modules" / "order").read_text().split()
    initrd = cache_dir / f"initrd-{_initrd_key(kdir, order)}.img"
    if not initrd.is_file():
        build_initrd(kdir, initrd, order)
    return BootImages(kernel=kdir / "vmlinuz", initrd=initrd, package=package,
                      release=(kdir / "release").read_text().strip(), modules=tuple(order))


def ensure_boot_disk(cache_dir: Path | None = None) -> Path:
    """The lab disk image (BIOS MBR code + an EFI System Partition), built once per bootdisk.py version.

    Pure Python (a few ms), cached anyway so every machine of every run attaches the same bytes.
    """
    from metalcore.lab import bootdisk

    cache_dir = Path(cache_dir or default_cache_dir())
    key = hashlib.sha256(BOOTDISK_SOURCE.read_bytes()).hexdigest()[:16]
    path = cache_dir / f"bootdisk-{key}.raw"
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix="bootdisk-", suffix=".part", delete=False) as f:
            f.write(bootdisk.build())
        os.replace(f.name, path)   # atomic: parallel runs may build it at the same time
    return path


if __name__ == "__main__":  # python -m metalcore.lab.images: build (or find) and print
    import time

    t0 = time.monotonic()
    imgs = ensure_images()
    print(f"{imgs.package} {imgs.release} kernel={imgs.kernel} initrd={imgs.initrd} "
          f"modules={','.join(imgs.modules)} disk={ensure_boot_disk()} in {time.monotonic() - t0:.2f}s")
