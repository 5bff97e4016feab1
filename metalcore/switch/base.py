"""The driver interface of a leaf switch, so that OpenConfig, Cumulus NVUE or SONiC drivers can follow the
NETCONF one (networking-generic-switch ``devices/__init__.py`` manners: a small abstract base, one concrete
class per device family, chosen by name from the switch's config).

A driver owns one session to one switch and is used by one thread at a time (the switch's reconciler).
Errors are split by what the caller should do about them:

    SwitchError
     ├── SwitchUnreachable   no session / it broke: retried next interval, the error goes into notify
     ├── SwitchBusy          the candidate is locked by someone else (lock-denied / in-use): retried at once
     ├── SwitchRejected      the switch refused the edit or commit: nothing changed, error in notify
     └── VerifyFailed        the read-back after the confirmed commit did not show the change: rolled back
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from metalcore.switch.models import ChangeSet, SwitchConfig


class SwitchError(Exception):
    """Base of every driver error; the message is what goes into the Metal API's notify."""


class SwitchUnreachable(SwitchError):
    pass


class SwitchBusy(SwitchError):
    pass


class SwitchRejected(SwitchError):
    def __init__(self, message: str, tag: str = "", path: str = "") -> None:
        super().__init__(message)
        self.tag, self.path = tag, path


class VerifyFailed(SwitchError):
    pass


@dataclass(frozen=True)
class ApplyResult:
    running: SwitchConfig          # the read-back after the confirming commit
    commit_seconds: float          # lock .. confirming commit, read-back included
    attempts: int                  # > 1 when the candidate was busy


class SwitchDriver(abc.ABC):
    """One switch. Methods raise SwitchError subclasses only."""

    name: str

    @abc.abstractmethod
    def read_ports(self) -> dict[str, str]:
        """Port name -> MAC of every front-panel port (for the switch registration)."""

    @abc.abstractmethod
    def read_running(self) -> SwitchConfig:
        """The running config, parsed."""

    @abc.abstractmethod
    def apply(self, changes: ChangeSet) -> ApplyResult:
        """Apply all ``changes`` atomically and safely: either the read-back running config shows every
        change, or the switch is left as it was (rolled back) and a SwitchError is raised."""

    @abc.abstractmethod
    def close(self) -> None:
        """Drop the session (idempotent)."""


def make_driver(target, **kwargs) -> SwitchDriver:
    """The driver named by ``target.driver`` (config SwitchTarget)."""
    if target.driver in ("netconf-leaf", "netconf"):
        from metalcore.switch.netconf_leaf import NetconfLeafDriver
        return NetconfLeafDriver(target, **kwargs)
    raise ValueError(f"switch {target.name}: unknown driver {target.driver!r} (known: netconf-leaf)")
