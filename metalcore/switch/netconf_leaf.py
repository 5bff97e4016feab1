"""ncclient driver for a leaf speaking our metalcore-leaf YANG model over NETCONF (netconfd/yuma123 in the lab).

One session per switch, opened on first use and kept; any transport error drops it and the next call opens
a new one. The apply sequence (research note peers-on-this-machine.md §2, NGS ``netconf_switch.py``):

    lock candidate -> discard-changes -> ONE edit-config with every change -> confirmed commit (timeout)
    -> read back running and check it shows the change -> confirming commit -> unlock

* No ``validate`` of the candidate before commit: yuma123 then commits nothing and answers <ok/>
  (gotcha 2); commit validates anyway.
* Any failure after the confirmed commit: cancel-commit (rolls back at once); if even that fails, the
  session is closed, which also rolls a non-persist confirmed commit back (RFC 6241 §8.4). If this process
  dies (kill -9) the session dies with it; failing all that, the confirm timeout rolls it back — but
  yuma123 runs that timer only while it is idle (gotcha 3), so nothing here polls a switch in a tight loop.
* Only lock-denied / in-use / resource-denied are retried (another manager holds the candidate); every
  other RPC error is final for this reconcile.
* ncclient's TICK (0.1 s) is the poll period of its transport thread and adds ~100 ms to every RPC
  (gotcha 1): it is a module global, set per process at construction (``tick``).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import ncclient.transport.session as nc_session
import paramiko
from loguru import logger
from ncclient import NCClientError, manager
from ncclient.operations import RPCError

from metalcore.switch.base import (ApplyResult, SwitchBusy, SwitchDriver, SwitchError, SwitchRejected,
                                   SwitchUnreachable, VerifyFailed)
from metalcore.switch.models import NS, ChangeSet, SwitchConfig, parse_running, render_edit, unmet

RETRY_TAGS = frozenset({"lock-denied", "in-use", "resource-denied"})
FULL_FILTER = ("subtree", f'<switch xmlns="{NS}"/>')
PORTS_FILTER = ("subtree", f'<switch xmlns="{NS}"><port><name/><mac/></port></switch>')
_TRANSPORT_ERRORS = (NCClientError, OSError, socket.error, paramiko.SSHException, EOFError)


def set_tick(tick: float | None) -> None:
    """Set ncclient's transport poll period for this process (None leaves ncclient's default)."""
    if tick is not None:
        nc_session.TICK = tick


def _rpc_errors(e: RPCError) -> list[RPCError]:
    return list(getattr(e, "errors", None) or [e])


def _describe(e: RPCError) -> tuple[str, str, str]:
    """(tag, path, message) of the first error; message joins all of them."""
    errs = _rpc_errors(e)
    first = errs[0]
    msg = "; ".join(f"{x.tag or '?'}: {(x.message or '').strip() or 'no message'}"
                    + (f" at {x.path.strip()}" if x.path else "") for x in errs)
    return first.tag or "", (first.path or "").strip(), msg


class NetconfLeafDriver(SwitchDriver):
    def __init__(self, target, *, confirm_timeout: float = 60.0, connect_timeout: float = 10.0,
                 rpc_timeout: float = 15.0, tick: float | None = 0.001, lock_attempts: int = 5,
                 lock_backoff: float = 0.2, confirm_delay: float = 0.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.target = target
        self.name = target.name
        self.confirm_timeout = max(1, int(round(confirm_timeout)))
        self.connect_timeout = connect_timeout
        self.rpc_timeout = rpc_timeout
        self.lock_attempts = lock_attempts
        self.lock_backoff = lock_backoff
        self.confirm_delay = confirm_delay  # TEST ONLY (settings.switch_test_confirm_delay)
        self._sleep, self._clock = sleep, clock
        self._m = None
        self._lock = threading.Lock()  # one RPC sequence at a time on the one session
        self.log = logger.bind(switch=target.name)
        self.sessions_opened = 0
        set_tick(tick)

    # -- session ----------------------------------------------------------------------------------
    def _session(self):
        if self._m is not None and self._m.connected:
            return self._m
        self._drop()
        t = self.target
        try:
            self._m = manager.connect(host=t.host, port=t.port, username=t.username, password=t.password,
                                      hostkey_verify=False, allow_agent=False, look_for_keys=False,
                                      timeout=self.connect_timeout)
        except _TRANSPORT_ERRORS as e:
            raise SwitchUnreachable(f"switch {t.name} ({t.host}:{t.port}) unreachable: "
                                    f"{type(e).__name__}: {e}".rstrip(": ")) from None
        self._m.timeout = self.rpc_timeout
        self.sessions_opened += 1
        self.log.info("NETCONF session {} to {}:{} open", self._m.session_id, t.host, t.port)
        return self._m

    def _drop(self) -> None:
        m, self._m = self._m, None
        if m is None:
            return
        try:
            if m.connected:
                m.close_session()
        except Exception:  # the session is going away anyway
            pass
        try:
            m._session.close()
        except Exception:
            pass

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _unreachable(self, e: BaseException, doing: str) -> SwitchUnreachable:
        self._drop()
        return SwitchUnreachable(f"switch {self.name}: {doing} failed: {type(e).__name__}: {e}".rstrip(": "))

    # -- reads ------------------------------------------------------------------------------------
    def _get_running(self, m, flt=FULL_FILTER) -> str:
        return m.get_config("running", filter=flt).data_xml

    def read_running(self) -> SwitchConfig:
        with self._lock:
            m = self._session()
            try:
                return parse_running(self._get_running(m))
            except RPCError as e:
                raise SwitchRejected(f"switch {self.name}: get-config: {_describe(e)[2]}", *_describe(e)[:2]) from None
            except _TRANSPORT_ERRORS as e:
                raise self._unreachable(e, "get-config") from None

    def read_ports(self) -> dict[str, str]:
        with self._lock:
            m = self._session()
            try:
                cfg = parse_running(self._get_running(m, PORTS_FILTER))
            except RPCError as e:
                raise SwitchRejected(f"switch {self.name}: get-config: {_describe(e)[2]}", *_describe(e)[:2]) from None
            except _TRANSPORT_ERRORS as e:
                raise self._unreachable(e, "get-config") from None
        return dict(cfg.macs)

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, changes: ChangeSet) -> ApplyResult:
        xml = render_edit(changes)
        started = self._clock()
        with self._lock:
            for attempt in range(1, self.lock_attempts + 1):
                try:
                    running = self._apply_once(changes, xml)
                    return ApplyResult(running=running, commit_seconds=self._clock() - started, attempts=attempt)
                except SwitchBusy as e:
                    if attempt == self.lock_attempts:
                        raise
                    delay = self.lock_backoff * attempt
                    self.log.info("switch {} candidate busy ({}), attempt {} again in {:.1f}s",
                                  self.name, e, attempt + 1, delay)
                    self._sleep(delay)
        raise AssertionError("unreachable")

    def _apply_once(self, changes: ChangeSet, xml: str) -> SwitchConfig:
        m = self._session()
        step = "lock"
        locked = pending = False
        try:
            m.lock("candidate")
            locked = True
            step = "discard-changes"
            m.discard_changes()
            step = "edit-config"
            m.edit_config(target="candidate", config=xml)
            step = "confirmed commit"
            m.commit(confirmed=True, timeout=str(self.confirm_timeout))
            pending = True
            if self.confirm_delay:
                self.log.warning("TEST ONLY: waiting {:.1f}s between confirmed commit and confirm",
                                 self.confirm_delay)
                self._sleep(self.confirm_delay)
            step = "read-back"
            running = parse_running(self._get_running(m))
            missing = unmet(changes, running)
            if missing:
                raise VerifyFailed(f"switch {self.name}: read-back after commit does not show the change: "
                                   + "; ".join(missing[:5]))
            step = "confirming commit"
            m.commit()
            pending = False
            step = "unlock"
            m.unlock("candidate")
            locked = False
            return running
        except RPCError as e:
            tag, path, msg = _describe(e)
            self._undo(m, pending, locked)
            if tag in RETRY_TAGS and not pending:
                raise SwitchBusy(f"switch {self.name}: {step}: {msg}") from None
            raise SwitchRejected(f"switch {self.name} rejected {step}: {msg}", tag, path) from None
        except SwitchError:
            self._undo(m, pending, locked)
            raise
        except _TRANSPORT_ERRORS as e:
            # the session is gone: netconfd rolls a pending confirmed commit back on session end
            raise self._unreachable(e, step) from None
        except BaseException:
            self._undo(m, pending, locked)
            raise

    def _undo(self, m, pending: bool, locked: bool) -> None:
        """Leave the switch as it was: cancel a pending confirmed commit, empty the candidate, unlock."""
        try:
            if pending:
                m.cancel_commit()
                self.log.warning("switch {}: confirmed commit cancelled (rolled back)", self.name)
            if locked:
                m.discard_changes()
                m.unlock("candidate")
        except Exception as e:
            # closing the session rolls back a non-persist confirmed commit and frees the lock
            self.log.warning("switch {}: clean-up after a failed apply failed ({}: {}); closing the session",
                             self.name, type(e).__name__, e)
            self._drop()
