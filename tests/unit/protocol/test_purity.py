"""metalcore/protocol is sans-IO (its README.md): importing any module there must not pull in a
socket, bus, web or logging module, and no module there may import the clock itself (``now`` is
passed in). Checked in a fresh interpreter so that modules other tests imported cannot hide a
violation."""

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import metalcore.protocol

# anywhere in the import graph of a protocol module
FORBIDDEN_TRANSITIVE = [
    "socket", "select", "selectors", "ssl", "asyncio", "subprocess", "threading", "multiprocessing", "zmq",
    "flask", "werkzeug", "loguru", "logging", "httpx", "requests", "urllib3", "tornado", "nsq", "pyghmi",
    "ncclient", "prometheus_client", "supervisor", "gevent",
]
# imported by the protocol module's own code (stdlib datetime may import time; that is fine)
FORBIDDEN_DIRECT = FORBIDDEN_TRANSITIVE + ["time", "os", "io", "random", "shutil", "pathlib", "tempfile"]
PACKAGE_DIR = Path(metalcore.protocol.__file__).resolve().parent
ROOT = PACKAGE_DIR.parents[1]


def _modules() -> list[str]:
    return sorted(f"metalcore.protocol.{m.name}" for m in pkgutil.walk_packages(metalcore.protocol.__path__))


def test_there_are_modules_to_check():
    mods = _modules()
    for name in ("buffer", "frames", "dhcp", "pxe", "ipxe", "bootloop"):
        assert f"metalcore.protocol.{name}" in mods


def test_no_io_module_in_the_import_graph():
    probe = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "bad = {}\n"
        f"for name in {_modules()!r}:\n"
        "    __import__(name)\n"
        f"    hit = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in {FORBIDDEN_TRANSITIVE!r})\n"
        "    if hit: bad[name] = hit\n"
        "print(json.dumps(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {}, "protocol modules import I/O modules (see metalcore/protocol/README.md)"


def test_no_direct_clock_or_filesystem_imports():
    bad = {}
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        hit = sorted(names & set(FORBIDDEN_DIRECT))
        if hit:
            bad[path.name] = hit
    assert bad == {}, "protocol modules import the clock, files or I/O directly (pass them in instead)"
