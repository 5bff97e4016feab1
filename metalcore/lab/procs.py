"""Start, stop and reap the lab's peer processes.

Rules of this file:
1. Every peer is started here, as a child of the calling process, in its own session (a
   Ctrl-C at the terminal does not reach it) with stdout+stderr in a log file.
2. A peer is identified by (pid, start_time): start_time is field 22 of /proc/<pid>/stat, so
   a recycled pid is never mistaken for our peer and never signalled.
3. Processes are only ever killed by the recorded pid (never by name: other people's peers
   run on this machine).
4. A zombie counts as stopped.  PID 1 on this machine reaps late (peers-on-this-machine.md
   ipmi_sim gotcha 8), so we hold the Popen objects of our children and wait() them.  Opt-in,
   ``enable_subreaper()`` makes orphaned grandchildren (e.g. sshd session processes left when
   the listener is stopped) come back to us, where ``reap_orphans()`` collects the lab's ones.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36

# Process names (comm) of what the lab starts, directly or through a peer.  Used only to pick
# which orphaned zombies reap_orphans() may collect, never to kill.
PEER_COMMS = frozenset({"sshd", "netconf-subsys", "netconfd", "ipmi_sim", "nsqd", "nsqlookupd", "sh"})


class LabError(RuntimeError):
    """The lab cannot do what was asked; the message says why and what to do."""


class MissingPeerBinary(LabError):
    """A peer program is not installed; the message says how to install it."""


@dataclass
class ProcRecord:
    """One started peer process, as saved in state.json."""

    name: str
    pid: int
    start_time: int
    argv: list[str]
    cwd: str
    log: str
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProcRecord":
        return cls(**d)


_children: dict[int, subprocess.Popen] = {}
_children_lock = threading.Lock()


def require_binary(name: str, install_hint: str) -> str:
    """Absolute path of ``name`` (a path or a program on PATH/sbin) or MissingPeerBinary."""
    if os.path.sep in name:
        if os.access(name, os.X_OK):
            return name
        found = None
    else:
        path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/local/sbin"
        found = shutil.which(name, path=path)
    if not found:
        raise MissingPeerBinary(f"peer binary {name!r} not found; install it with {install_hint}")
    return found


def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start_time) of ``pid`` from /proc, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19])


def proc_comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def spawn(name: str, argv: list[str], cwd: str | Path, log: str | Path,
          env: dict | None = None, extra: dict | None = None) -> ProcRecord:
    """Start ``argv`` in ``cwd`` with output appended to ``log``; returns its record."""
    cwd, log = Path(cwd), Path(log)
    cwd.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        p = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
    with _children_lock:
        _children[p.pid] = p
    st = proc_stat(p.pid)
    start_time = st[2] if st else 0
    return ProcRecord(name=name, pid=p.pid, start_time=start_time, argv=list(argv),
                      cwd=str(cwd), log=str(log), extra=dict(extra or {}))


def record_popen(name: str, popen: subprocess.Popen, log: str | Path = "", cwd: str | Path = "",
                 extra: dict | None = None) -> ProcRecord:
    """Adopt a process started elsewhere (e.g. metal_api.spawn) so the lab records, stops and reaps it."""
    with _children_lock:
        _children[popen.pid] = popen
    st = proc_stat(popen.pid)
    argv = popen.args if isinstance(popen.args, (list, tuple)) else [str(popen.args)]
    return ProcRecord(name=name, pid=popen.pid, start_time=st[2] if st else 0,
                      argv=[str(a) for a in argv], cwd=str(cwd), log=str(log), extra=dict(extra or {}))


def _reap(pid: int) -> None:
    with _children_lock:
        p = _children.get(pid)
    if p is not None:
        if p.poll() is not None:
            with _children_lock:
                _children.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def is_running(rec: ProcRecord) -> bool:
    """True while the recorded process exists, is the same process, and is not a zombie."""
    _reap(rec.pid)
    st = proc_stat(rec.pid)
    if st is None:
        return False
    state, _ppid, start_time = st
    if rec.start_time and start_time != rec.start_time:
        return False  # pid was recycled: not ours
    return state not in ("Z", "X")


def signal_proc(rec: ProcRecord, sig: int) -> bool:
    """Send ``sig`` to the recorded process if it is still ours; True if sent."""
    if not is_running(rec):
        return False
    try:
        os.kill(rec.pid, sig)
        return True
    except ProcessLookupError:
        return False


def stop_many(recs: list[ProcRecord], timeout: float = 5.0) -> list[ProcRecord]:
    """SIGTERM all, wait up to ``timeout``, SIGKILL the rest; returns those still alive (none, normally)."""
    live = [r for r in recs if signal_proc(r, signal.SIGTERM)]
    # A stopped (SIGSTOP) peer cannot act on SIGTERM until continued.
    for r in live:
        signal_proc(r, signal.SIGCONT)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = [r for r in live if is_running(r)]
        if live:
            time.sleep(0.01)
    for r in live:
        signal_proc(r, signal.SIGKILL)
    deadline = time.monotonic() + 2.0
    while live and time.monotonic() < deadline:
        live = [r for r in live if is_running(r)]
        if live:
            time.sleep(0.01)
    reap_orphans()
    return live


def stop(rec: ProcRecord, timeout: float = 5.0) -> bool:
    """Stop one recorded process; True when it is gone."""
    return not stop_many([rec], timeout)


def pause(rec: ProcRecord) -> bool:
    """SIGSTOP: the peer keeps its sockets but answers nothing (a hung peer)."""
    return signal_proc(rec, signal.SIGSTOP)


def resume(rec: ProcRecord) -> bool:
    return signal_proc(rec, signal.SIGCONT)


def enable_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux prctl); True if set."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans() -> int:
    """Collect zombie children that are lab peers we hold no Popen for; returns how many."""
    me = os.getpid()
    with _children_lock:
        held = set(_children)
    n = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in held:
            continue
        st = proc_stat(pid)
        if st is None or st[0] != "Z" or st[1] != me or proc_comm(pid) not in PEER_COMMS:
            continue
        try:
            os.waitpid(pid, os.WNOHANG)
            n += 1
        except ChildProcessError:
            pass
    # Our own finished children: poll() reaps them.
    with _children_lock:
        for pid, p in list(_children.items()):
            if p.poll() is not None:
                del _children[pid]
    return n


def wait_for(predicate, timeout: float, interval: float = 0.01, what: str = "condition"):
    """Poll ``predicate`` until it returns a true value (returned) or raise LabError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def wait_for_log(rec: ProcRecord, log: str | Path, marker: str, timeout: float, what: str,
                 interval: float = 0.02, tail: int = 15) -> None:
    """Wait until ``marker`` appears in the log of a peer we started; its exit ends the wait at once with
    the last lines of its output (a peer that died on start-up must not cost the whole timeout)."""
    log = Path(log)

    def ready() -> bool:
        if not is_running(rec):
            raise LabError(f"{what} exited: {log_tail(rec.log or log, tail)}")
        return log.exists() and marker in log.read_text(errors="replace")

    wait_for(ready, timeout, interval, what)


def log_tail(path: str | Path, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
