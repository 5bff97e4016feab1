"""The PXE stage's HTTP server (metalcore/pxe/http.py) against real curl clients and a real upstream:
16 machines fetch the same initrd at once through the empty cache (one upstream download, every copy
intact), then again from the cache, then a Range and a HEAD. Peers: curl. A few seconds."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time

import pytest

from metalcore.lab.pxe_stage import UpstreamFiles
from metalcore.pxe.http import BootHttpServer
from metalcore.pxe.metrics import PxeMetrics

pytestmark = pytest.mark.timeout(120)

SIZE = 16 << 20
CLIENTS = 16


def _curl(*args: str) -> list[str]:
    if shutil.which("curl") is None:
        pytest.fail("curl is missing: apt-get install curl")
    return ["curl", "-s", "-S", "--max-time", "60", *args]


def test_concurrent_curl_clients_through_cold_then_warm_cache(tmp_path):
    up_dir = tmp_path / "up"
    up_dir.mkdir()
    data = os.urandom(SIZE)
    (up_dir / "initrd.img").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    up = UpstreamFiles(up_dir).start()
    srv = BootHttpServer(gate=None, netns="", bind_ip="127.0.0.1", port=0, public_base="http://127.0.0.1:0",
                         cache_dir=tmp_path / "cache", tftp_root=str(up_dir), metrics=PxeMetrics()).start()
    sent = srv.metrics.http_bytes.labels("boot")._value.get  # one registry per process: compare deltas
    before = sent()
    try:
        url = f"http://127.0.0.1:{srv.port}/boot/{srv.cache.register(up.url('initrd.img'))}/initrd.img"
        for round_ in ("cold", "warm"):
            outs = [tmp_path / f"{round_}-{i}" for i in range(CLIENTS)]
            procs = [subprocess.Popen(_curl("-o", str(o), "-w", "%{http_code}", url), stdout=subprocess.PIPE,
                                      text=True) for o in outs]
            codes = [p.communicate(timeout=90)[0] for p in procs]
            assert codes == ["200"] * CLIENTS, (round_, codes)
            assert all(hashlib.sha256(o.read_bytes()).hexdigest() == want for o in outs), round_
            assert srv.cache.fetches == 1, round_  # the cold round's 16 requests shared one download
        part = subprocess.run(_curl("-r", "4096-8191", url), capture_output=True, check=True).stdout
        assert part == data[4096:8192]
        head = subprocess.run(_curl("-I", url), capture_output=True, text=True, check=True).stdout
        assert head.startswith("HTTP/1.1 200") and f"Content-Length: {SIZE}" in head
        deadline = time.monotonic() + 5  # counted when the server's send returns, maybe after curl exited
        while sent() - before != 2 * CLIENTS * SIZE + 4096 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sent() - before == 2 * CLIENTS * SIZE + 4096  # bodies sent (the Range's 4096 bytes), none for HEAD
    finally:
        srv.stop()
        up.stop()
