"""One pyghmi lanplus session per BMC, with the two pyghmi traps designed around (research ipmi-qemu.md §4.6,
peers-on-this-machine.md §1 gotcha 7):

1. **Idle trap.** ipmi_sim drops a session after 30 s idle, and pyghmi's keepalive only runs while some
   thread is inside its event loop (and only every 24-29 s). We do not keep sessions alive: a session idle
   for ``IDLE_DROP`` (15 s) is logged out by the worker's janitor and the next command logs in afresh
   (a login is four round trips, ~8 ms against ipmi_sim). No keepalive traffic to 500 idle BMCs.
2. **Stale-session stall.** pyghmi caches sessions per (bmc, port, user) process-wide; after a BMC restart
   the cached session looks fine but is unknown to the BMC, and a call on it (or a *new* ``Command``,
   which reuses it) stalls 18-68 s in pyghmi's retries. So every call here runs under a :class:`Watchdog`
   deadline: when it passes, the pyghmi session is marked broken *without* the logout round trip
   (:func:`kill_session`), which ends pyghmi's wait loop at once ("Session no longer connected"), and the
   session is dropped from pyghmi's cache; the next attempt logs in fresh. Any failed call does the same.
   So recovery after a BMC restart costs one call timeout, not a minute.

pyghmi's login itself cannot be preempted this way (the session object is not ours until the constructor
returns); pyghmi gives up a login to a silent BMC after ~4.7 s on its own.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable

from loguru import logger
from pyghmi import exceptions as pyghmi_exc
from pyghmi.ipmi import command as pyghmi_command
from pyghmi.ipmi.private import session as pyghmi_session
from pyghmi.ipmi.private import util as pyghmi_util

from metalcore.ipmi.codec import BmcAddress

__all__ = ["BmcError", "BmcSession", "IDLE_DROP", "Watchdog", "kill_session"]

IDLE_DROP = 15.0  # seconds; well under ipmi_sim's hard-coded 30 s session timeout

# pyghmi 1.6.19 takes its two global locks in both orders: awaitresponse holds WAITING_SESSIONS and, on a
# retransmit (_timedout -> send_payload), takes KEEPALIVE_SESSIONS; send_payload holds KEEPALIVE_SESSIONS and
# _xmit_packet then takes WAITING_SESSIONS. Under load (a BMC slower than pyghmi's ~1 s retry timer) two threads
# deadlock there and with them every later request, the watchdog and the janitor: the ipmi stage hung for good
# (seen in bench/bench_nsq_ipmi.py, 100 BMCs, 3000 events). One re-entrant lock for both cannot deadlock; pyghmi
# looks both names up at call time, so aliasing them before the first session is enough.
if pyghmi_session.KEEPALIVE_SESSIONS is not pyghmi_session.WAITING_SESSIONS:
    pyghmi_session.KEEPALIVE_SESSIONS = pyghmi_session.WAITING_SESSIONS

# pyghmi's texts for a refused login: retrying with the same credentials cannot help
_AUTH_ERRORS = ("Incorrect password", "Unauthorized name", "Unauthorized", "insufficient privilege",
                "Invalid user", "authentication")


class BmcError(Exception):
    """A BMC command did not do what was asked. ``auth`` True: the credentials were refused (fetch them
    again, do not retry blindly); ``code``: the IPMI completion code when the BMC answered one."""

    def __init__(self, message: str, *, auth: bool = False, code: int | None = None) -> None:
        super().__init__(message)
        self.auth = auth
        self.code = code


def kill_session(s) -> None:
    """Mark a pyghmi session broken and drop it from pyghmi's caches, without any network round trip.

    pyghmi's own ``_mark_broken`` first logs out (a raw command that waits behind the stuck call): this is
    the same bookkeeping minus that logout. A thread stuck in ``awaitresponse`` on ``s`` sees
    ``logged == 0`` and raises "Session no longer connected" on its next loop turn.
    """
    s.lastpayload = None
    s.onlogpayload = None
    with pyghmi_util.protect(pyghmi_session.KEEPALIVE_SESSIONS):
        pyghmi_session.Session.keepalive_sessions.pop(s, None)
    with pyghmi_util.protect(pyghmi_session.WAITING_SESSIONS):
        pyghmi_session.Session.waiting_sessions.pop(s, None)
    purge_initting(s.bmc, s.port)
    s.logged = 0
    s.logging = False
    if not s.broken:
        s.broken = True
        if s.socket is not None and s.socket in s.socketpool:
            s.socketpool[s.socket] -= 1


def purge_initting(host: str, port: int) -> None:
    """Forget pyghmi's half-made sessions to one BMC.

    pyghmi registers a session being logged in under ``(bmc, userid, password, port, kg)`` with the user
    as given (str) but removes it under the encoded user (bytes), so after a failed login (BMC down) the
    entry stays, and every later ``Command`` to that BMC is handed that dead half-session: raw_command
    then fails with "TypeError: '<' not supported between 'float' and 'NoneType'" forever. Our lane is the
    only user of a BMC's sessions, so dropping every entry for (host, port) before a login is safe.
    """
    table = pyghmi_session.Session.initting_sessions
    for key in [k for k in list(table) if k[0] == host and k[3] == port]:
        table.pop(key, None)


class Watchdog:
    """Kills pyghmi sessions whose call overran its deadline. One thread for all sessions."""

    def __init__(self, interval: float = 0.05, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.interval = interval
        self._armed: dict[int, tuple[float, object]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self.kills = 0
        self._thread = threading.Thread(target=self._run, name="ipmi-watchdog", daemon=True)
        self._thread.start()

    def arm(self, session, deadline: float) -> int:
        token = next(self._ids)
        with self._lock:
            self._armed[token] = (deadline, session)
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while not self._halt.wait(self.interval):
            now = self.clock()
            with self._lock:
                due = [(t, s) for t, (d, s) in self._armed.items() if d <= now]
                for t, _ in due:
                    del self._armed[t]
            for _, s in due:
                self.kills += 1
                try:
                    kill_session(s)
                except Exception:  # pyghmi internals changed: log, never kill the watchdog
                    logger.exception("could not break a stuck pyghmi session")

    def stop(self) -> None:
        self._halt.set()


class BmcSession:
    """The lanplus session to one BMC. Not thread-safe: the worker's per-BMC lane serialises its use."""

    def __init__(self, address: BmcAddress, user: str, password: str, watchdog: Watchdog,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.address = address
        self.user = user
        self._password = password
        self.watchdog = watchdog
        self.clock = clock
        self._cmd: pyghmi_command.Command | None = None
        self.last_used = 0.0
        self.logins = 0

    def __repr__(self) -> str:
        return f"BmcSession({self.address}, user={self.user!r})"

    @property
    def connected(self) -> bool:
        return self._cmd is not None

    def _connect(self) -> pyghmi_command.Command:
        purge_initting(self.address.host, self.address.port)
        try:
            cmd = pyghmi_command.Command(bmc=self.address.host, userid=self.user, password=self._password,
                                         port=self.address.port)
        except pyghmi_exc.IpmiException as e:
            text = str(e) if e.args and e.args[0] else "no answer (BMC unreachable?)"
            raise BmcError(f"login to {self.address} failed: {text}",
                           auth=any(a.lower() in text.lower() for a in _AUTH_ERRORS)) from None
        except OSError as e:
            raise BmcError(f"login to {self.address} failed: {e}") from None
        self.logins += 1
        self._cmd = cmd
        return cmd

    def raw(self, netfn: int, command: int, data: tuple[int, ...] = (), timeout: float = 4.0) -> bytes:
        """One IPMI request; the response data (completion code stripped). Raises BmcError."""
        cmd = self._cmd or self._connect()
        s = cmd.ipmi_session
        token = self.watchdog.arm(s, self.clock() + timeout)
        try:
            r = cmd.raw_command(netfn=netfn, command=command, data=data)
        except pyghmi_exc.IpmiException as e:
            self.drop()
            raise BmcError(f"{self.address} netfn {netfn:#x} cmd {command:#x}: {e or 'no answer'}") from None
        except (OSError, AttributeError, TypeError) as e:  # pyghmi on a session we broke underneath it
            self.drop()
            raise BmcError(f"{self.address} netfn {netfn:#x} cmd {command:#x}: {type(e).__name__}: {e}") from None
        finally:
            self.watchdog.disarm(token)
        self.last_used = self.clock()
        if r.get("error") or r.get("code"):
            # the BMC answered with a completion code: the session itself is fine
            raise BmcError(f"{self.address} netfn {netfn:#x} cmd {command:#x}: "
                           f"{r.get('error') or 'completion code'} (0x{r.get('code', 0):02x})", code=r.get("code"))
        return bytes(r.get("data", b""))

    def drop(self) -> None:
        """Forget the session without a round trip (after a failure: the BMC may not know it any more)."""
        cmd, self._cmd = self._cmd, None
        if cmd is not None:
            kill_session(cmd.ipmi_session)

    def logout(self) -> None:
        """Close the session politely (idle drop): one Close Session request, no retry."""
        cmd, self._cmd = self._cmd, None
        if cmd is None:
            return
        s = cmd.ipmi_session
        token = self.watchdog.arm(s, self.clock() + 2.0)
        try:
            s.logout()
        except Exception:  # the BMC may be gone; the session is dropped either way
            pass
        finally:
            self.watchdog.disarm(token)
            kill_session(s)
