"""Machine events the stand-in publishes to nsqd, in metal-api's 2020 schema (research note §3.1).

Since 2020-03-24 (metal-core ``bf1ab7c``, metal-api ``metal/machine.go@56e4775d``) events carry IDs only:

    {"type": "delete", "old": "<machineID>"}
    {"type": "command", "cmd": {"target": "<machineID>", "cmd": "LED-ON", "params": ["<description>"]}}

Go writes these structs with ``omitempty``, so absent parts are absent, not null. They go to the topic
``<partition>-machine`` (``NSQTopic.GetFQN``) through nsqd's HTTP ``POST /pub?topic=...``; metal-api creates
its topics with ``POST /topic/create`` at start-up, and so does :class:`NsqPublisher`.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

__all__ = ["NsqPublisher", "PublishError", "command_event", "delete_event", "machine_topic"]

COMMANDS = ("ON", "OFF", "RESET", "CYCLE", "BIOS", "DISK", "PXE", "REINSTALL", "LED-ON", "LED-OFF")


class PublishError(Exception):
    """nsqd did not take the message."""


def machine_topic(partition_id: str) -> str:
    return f"{partition_id}-machine"


def delete_event(machine_id: str) -> dict:
    return {"type": "delete", "old": machine_id}


def command_event(machine_id: str, cmd: str, params: list[str] | None = None) -> dict:
    if cmd not in COMMANDS:
        raise ValueError(f"unknown machine command {cmd!r}")
    c: dict[str, Any] = {"target": machine_id, "cmd": cmd}
    if params:
        c["params"] = list(params)
    return {"type": "command", "cmd": c}


class NsqPublisher:
    """Publishes over nsqd's HTTP API; ``nsqd_http`` None keeps the events only in ``published``."""

    def __init__(self, nsqd_http: str | None, timeout: float = 5.0) -> None:
        self.nsqd_http = nsqd_http
        self.published: list[dict] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=f"http://{nsqd_http}", timeout=timeout) if nsqd_http else None

    def create_topic(self, topic: str) -> None:
        if self._http is not None:
            try:
                self._http.post("/topic/create", params={"topic": topic}).raise_for_status()
            except httpx.HTTPError as e:
                raise PublishError(f"nsqd {self.nsqd_http}: cannot create topic {topic}: {e}") from None

    def publish(self, topic: str, message: dict) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        record = {"topic": topic, "message": message, "time": time.time(), "delivered_to_nsqd": False}
        if self._http is not None:
            try:
                resp = self._http.post("/pub", params={"topic": topic}, content=body)
                resp.raise_for_status()
            except httpx.HTTPError as e:
                with self._lock:
                    self.published.append({**record, "error": str(e)})
                raise PublishError(f"nsqd {self.nsqd_http}: cannot publish to {topic}: {e}") from None
            record["delivered_to_nsqd"] = True
        with self._lock:
            self.published.append(record)

    def events(self) -> list[dict]:
        with self._lock:
            return list(self.published)

    def clear(self) -> None:
        with self._lock:
            self.published.clear()

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
