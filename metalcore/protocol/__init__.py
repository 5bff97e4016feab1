"""Pure protocol code of metalcore: no I/O here (see README.md in this folder)."""

from .errors import Malformed, MalformedPacket

__all__ = ["Malformed", "MalformedPacket"]
