"""TFTP (tftpy, real sockets on 127.0.0.1) and the HTTP server (aiohttp, real sockets), no namespace."""
from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tftpy

from metalcore.boot import BootResponse, Decision, Verdict
from metalcore.pxe.http import BootHttpServer
from metalcore.lab.pxe_stage import UpstreamFiles
from metalcore.pxe.metrics import PxeMetrics
from metalcore.pxe.tftp import TftpServer, resolve_inside


def test_resolve_inside_refuses_escapes(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "undionly.kpxe").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "secret")
    root = tmp_path / "root"
    assert resolve_inside(root, "undionly.kpxe") == (root / "undionly.kpxe").resolve()
    assert resolve_inside(root, "/undionly.kpxe") is not None
    for bad in ("../secret", "link", "/etc/passwd", "a/../../secret", "x\0y", ""):
        assert resolve_inside(root, bad) is None, bad


@pytest.fixture
def tftp(tmp_path):
    root = tmp_path / "ipxe"
    root.mkdir()
    (root / "undionly.kpxe").write_bytes(bytes(range(256)) * 300)
    (tmp_path / "outside").write_bytes(b"no")
    srv = TftpServer(str(root), "", "127.0.0.1", 0, PxeMetrics(), timeout=1).start()
    yield srv
    srv.stop()


def test_tftp_serves_inside_and_refuses_outside_and_uploads(tftp, tmp_path):
    c = tftpy.TftpClient("127.0.0.1", tftp.port)
    out = io.BytesIO()
    c.download("undionly.kpxe", out, timeout=2)
    assert out.getvalue() == bytes(range(256)) * 300
    with pytest.raises(Exception):
        c.download("../outside", io.BytesIO(), timeout=2)
    with pytest.raises(Exception):
        tftpy.TftpClient("127.0.0.1", tftp.port).upload("new.bin", io.BytesIO(b"evil"), timeout=2)
    assert not (Path(tftp.root) / "new.bin").exists()
    assert tftp.served == 1


class Gate:
    def __init__(self, decision):
        self.decision = decision

    def wait(self, mac, timeout):
        return self.decision


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_http_script_and_cached_boot_files(tmp_path):
    up_dir = tmp_path / "up"
    up_dir.mkdir()
    (up_dir / "vmlinuz").write_bytes(b"K" * 100_000)
    (up_dir / "initrd.img").write_bytes(b"I" * 300_000)
    up = UpstreamFiles(up_dir).start()
    resp = BootResponse(up.url("vmlinuz"), (up.url("initrd.img"),), "console=ttyS0 METAL_CORE_ADDRESS=127.0.0.1:4242")
    gate = Gate(Decision(Verdict.DISCOVERY, "unknown machine", resp))
    srv = BootHttpServer(gate=gate, netns="", bind_ip="127.0.0.1", port=0, public_base="http://127.0.0.1:0",
                         cache_dir=tmp_path / "cache", tftp_root=str(up_dir), metrics=PxeMetrics())
    srv.start()
    srv.public_base = f"http://127.0.0.1:{srv.port}"
    try:
        status, script = _get(f"http://127.0.0.1:{srv.port}/ipxe/AA-BB-CC-DD-EE-FF")
        text = script.decode()
        assert status == 200 and text.startswith("#!ipxe\n")
        kernel_line = next(ln for ln in text.splitlines() if ln.startswith("kernel "))
        assert "initrd=initrd0" in kernel_line and "METAL_CORE_ADDRESS=127.0.0.1:4242" in kernel_line
        urls = [w for ln in text.splitlines() for w in ln.split() if w.startswith("http://")]
        assert all(u.startswith(srv.public_base + "/boot/") for u in urls)
        for u, size in zip(urls, (100_000, 300_000)):
            for _ in range(2):
                status, body = _get(u)
                assert status == 200 and len(body) == size
        assert srv.cache.fetches == 2  # fetched once each, then served from the cache
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"http://127.0.0.1:{srv.port}/boot/0123456789abcdef/x")
        assert e.value.code == 404  # no open proxy
        with pytest.raises(urllib.error.HTTPError):
            _get(f"http://127.0.0.1:{srv.port}/ipxe/not-a-mac")
        gate.decision = Decision(Verdict.DISK, "installed")
        _, script = _get(f"http://127.0.0.1:{srv.port}/ipxe/aa:bb:cc:dd:ee:ff")
        assert script.decode().rstrip().endswith("exit")
    finally:
        srv.stop()
        up.stop()
