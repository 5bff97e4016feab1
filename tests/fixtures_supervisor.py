"""Real supervisord running the repo's supervisord.conf, relocated into a temporary run directory.

The programs come from the real file (only ``%(here)s/.run`` is pointed at the test's directory), so a
test of this fixture tests what `scripts/run` starts.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import xmlrpc.client
from dataclasses import dataclass, field

import pytest
from metalcore.lab.ports import free_tcp_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("pxe", "hammer_proxy", "nsq_consumer", "switch", "ipmi")




def free_port_block(n: int) -> int:
    """A base port whose next n ports are free now (metrics ports are base+stage index)."""
    for _ in range(50):
        base = free_tcp_port()
        if base + n > 65535:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("0.0.0.0", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


@dataclass
class Supervisor:
    root: str
    conf: str
    run_dir: str
    proc: subprocess.Popen
    env: dict = field(default_factory=dict)

    @property
    def sock(self) -> str:
        return os.path.join(self.run_dir, "supervisor.sock")

    def rpc(self):
        from supervisor.xmlrpc import SupervisorTransport
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{self.sock}"))

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(REPO, ".venv/bin/supervisorctl"), "-c", self.conf, *args],
                              capture_output=True, text=True, timeout=120, check=check)

    def states(self) -> dict[str, dict]:
        return {i["name"]: i for i in self.rpc().supervisor.getAllProcessInfo()}

    def wait_state(self, name: str, state: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.states().get(name, {})
            if info.get("statename") == state:
                return info
            time.sleep(0.1)
        raise AssertionError(f"{name} not {state} after {timeout} s: {info.get('statename')}")

    def log(self, name: str) -> str:
        with open(os.path.join(self.run_dir, "log", f"{name}.log"), errors="replace") as f:
            return f.read()


def write_settings(path: str, run_dir: str, **overrides) -> None:
    """A metalcore.toml that every stage accepts (peers it cannot reach are its business, not config's)."""
    values = {
        "partition_id": "lab", "rack_id": "rack01", "cidr": "127.0.0.1/8", "hmac_key": "test-hmac-key",
        "pxe_interface": "lo", "port": free_tcp_port(), "pxe_http_port": free_tcp_port(), "tftp_port": free_tcp_port(),
        "metrics_server_bind_address": "127.0.0.1", "metrics_server_port": free_port_block(5),
        "metal_api_port": free_tcp_port(), "mq_address": f"127.0.0.1:{free_tcp_port()}",
        "run_dir": run_dir, "switches": "leaf01=netconf://u:p@127.0.0.1:%d" % free_tcp_port(),
    }
    values.update(overrides)
    with open(path, "w") as f:
        for k, v in values.items():
            f.write(f"{k} = {v!r}\n".replace("'", '"') if isinstance(v, str) else f"{k} = {v}\n")


def merge_settings(path: str, text: str, overrides: dict) -> None:
    """Write ``text`` (a metalcore TOML file) to ``path`` with ``overrides`` replacing or adding keys."""
    out, seen = [], set()
    for line in text.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else None
        if key in overrides:
            seen.add(key)
            v = overrides[key]
            line = f"{key} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{key} = {str(v).lower() if isinstance(v, bool) else v}"
        out.append(line)
    for k, v in overrides.items():
        if k not in seen:
            out.append(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def start_supervisor(tmp: str, extra_programs: str = "", settings: dict | None = None,
                     settings_file: str | None = None, run_dir: str | None = None) -> Supervisor:
    """Extra programs may say %(here)s/.run for the test's run dir and %(here)s for the repo.

    ``settings_file``: use that TOML file (e.g. the rack lab's, from full_rack.write_settings) instead of the
    generated settings; ``settings`` then only overrides keys in it. Its ``run_dir`` must be the run dir
    (``run_dir``, default <tmp>/run), where supervisord's environment points the stages too.
    """
    run_dir = run_dir or os.path.join(tmp, "run")
    os.makedirs(os.path.join(run_dir, "log"), exist_ok=True)
    os.chmod(run_dir, 0o700)
    with open(os.path.join(REPO, "supervisord.conf")) as f:
        text = f.read() + "\n" + extra_programs
    text = text.replace("%(here)s/.run", run_dir).replace("%(here)s", REPO)
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(text)
    target = os.path.join(run_dir, "metalcore.toml")
    if settings_file is None:
        write_settings(target, run_dir, **(settings or {}))
    else:
        with open(settings_file) as f:
            merge_settings(target, f.read(), settings or {})
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAL_CORE_")}
    proc = subprocess.Popen([os.path.join(REPO, ".venv/bin/supervisord"), "-n", "-c", conf], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sup = Supervisor(REPO, conf, run_dir, proc, env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"supervisord exited with {proc.returncode}; see {run_dir}/log/supervisord.log")
        try:
            sup.rpc().supervisor.getState()
            return sup
        except (OSError, xmlrpc.client.Error):
            time.sleep(0.05)
    raise RuntimeError("supervisord did not answer within 20 s")


def stop_supervisor(sup: Supervisor) -> None:
    try:
        sup.rpc().supervisor.shutdown()
        sup.proc.wait(60)
    except Exception:
        sup.proc.kill()
        sup.proc.wait(10)


@pytest.fixture
def supervisor_factory(tmp_path_factory):
    started = []

    def make(extra_programs: str = "", settings: dict | None = None, settings_file: str | None = None,
             run_dir: str | None = None) -> Supervisor:
        # short paths: ipc:// socket paths are limited to 107 bytes
        tmp = tmp_path_factory.mktemp("sup", numbered=True)
        sup = start_supervisor(str(tmp), extra_programs, settings, settings_file, run_dir)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        stop_supervisor(sup)
