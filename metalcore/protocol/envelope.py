"""The one envelope of every bus message: pure encode/decode, no sockets.

Wire form (two ZeroMQ frames, circus-style): ``[topic, json]`` where topic is ``b"<stream>.<name>"`` so that a
SUB socket filters by stream with a prefix, and json is the envelope object::

    {"v": 1, "kind": "event"|"job"|"ack"|"result"|"ping"|"pong", "stream": "ipmi", "name": "power",
     "id": "<uuid4 hex>", "trace_id": "...", "machine_id": "...", "mac": "...", "ts": 1732500000.123,
     "source": "nsq_consumer", "body": {...}}

Anything else on the wire raises BadEnvelope with the reason; the receiving stage logs it and drops it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

VERSION = 1
KINDS = frozenset({"event", "job", "ack", "result", "ping", "pong"})
# Upper bound for one message: a bus message describes one action, never bulk data.
MAX_MESSAGE_BYTES = 1 << 20
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_EVENT_NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class BadEnvelope(ValueError):
    """Bytes that are not a valid envelope; the message says why."""


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Envelope:
    kind: str
    stream: str
    name: str
    body: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    ts: float = 0.0
    source: str = ""
    trace_id: str | None = None
    machine_id: str | None = None
    mac: str | None = None
    version: int = VERSION

    @property
    def topic(self) -> str:
        return f"{self.stream}.{self.name}"

    def reply(self, kind: str, body: dict[str, Any], ts: float, source: str) -> "Envelope":
        """An ack/result/pong for this message, keeping its ids so the timeline links up."""
        return replace(self, kind=kind, body=body, id=self.id, ts=ts, source=source)


def encode(env: Envelope) -> list[bytes]:
    if env.kind not in KINDS:
        raise ValueError(f"unknown kind {env.kind!r}")
    obj = {"v": env.version, "kind": env.kind, "stream": env.stream, "name": env.name, "id": env.id,
           "ts": env.ts, "source": env.source, "body": env.body}
    for key in ("trace_id", "machine_id", "mac"):
        value = getattr(env, key)
        if value is not None:
            obj[key] = value
    return [env.topic.encode(), json.dumps(obj, separators=(",", ":")).encode()]


def _opt_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise BadEnvelope(f"{key} is not a string")
    return value


def decode(frames: list[bytes]) -> Envelope:
    if len(frames) != 2:
        raise BadEnvelope(f"expected 2 frames, got {len(frames)}")
    topic, payload = frames
    if len(payload) > MAX_MESSAGE_BYTES:
        raise BadEnvelope(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        obj = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise BadEnvelope(f"not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise BadEnvelope("not a JSON object")
    if obj.get("v") != VERSION:
        raise BadEnvelope(f"unsupported version {obj.get('v')!r}")
    kind, stream, name = obj.get("kind"), obj.get("stream"), obj.get("name")
    if kind not in KINDS:
        raise BadEnvelope(f"unknown kind {kind!r}")
    if not isinstance(stream, str) or not _NAME_RE.match(stream):
        raise BadEnvelope(f"bad stream {stream!r}")
    if not isinstance(name, str) or not _EVENT_NAME_RE.match(name):
        raise BadEnvelope(f"bad name {name!r}")
    if topic != f"{stream}.{name}".encode():
        raise BadEnvelope("topic frame does not match stream.name")
    msg_id, ts, body = obj.get("id"), obj.get("ts"), obj.get("body", {})
    if not isinstance(msg_id, str) or not msg_id:
        raise BadEnvelope("missing id")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        raise BadEnvelope("bad ts")
    if not isinstance(body, dict):
        raise BadEnvelope("body is not an object")
    return Envelope(kind=kind, stream=stream, name=name, body=body, id=msg_id, ts=float(ts),
                    source=_opt_str(obj, "source") or "", trace_id=_opt_str(obj, "trace_id"),
                    machine_id=_opt_str(obj, "machine_id"), mac=_opt_str(obj, "mac"))


def trace_id_for(machine_key: str) -> str:
    """A machine's trace id: stable, so that every stage derives the same one without asking another."""
    return uuid.uuid5(uuid.NAMESPACE_OID, "metalcore:" + machine_key.lower()).hex[:16]
