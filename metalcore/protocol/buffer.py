"""A byte cursor with pull/push pairs (the aioquic ``Buffer`` shape).

Rules of this file:

1. Every read past the end raises :class:`BufferReadError`; callers in this package turn it into
   ``MalformedPacket`` so that a peer's garbage never escapes as ``IndexError``/``struct.error``.
2. Pushes write at the cursor and grow the buffer when they run past its end, so a writer can
   ``seek`` back and patch a length or checksum in place.
"""

from __future__ import annotations

import struct

__all__ = ["Buffer", "BufferReadError"]

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class BufferReadError(ValueError):
    """A read ran past the end of the data (the peer sent too few bytes)."""


class Buffer:
    """Read cursor over ``data`` (bytes-like) or, without ``data``, a growing write buffer."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | bytearray | memoryview | None = None) -> None:
        # Reading keeps the caller's object (no copy); writing needs a mutable bytearray.
        self._data: bytes | bytearray | memoryview = bytearray() if data is None else data
        self._pos = 0

    # -- position -------------------------------------------------------------------------------
    @property
    def data(self) -> bytes:
        """Everything in the buffer (not only what was pulled), as immutable bytes."""
        return bytes(self._data)

    @property
    def raw(self) -> bytes | bytearray | memoryview:
        """The underlying object, for ``struct.unpack_from`` fast paths in this package."""
        return self._data

    def __len__(self) -> int:
        return len(self._data)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int) -> None:
        if not 0 <= pos <= len(self._data):
            raise BufferReadError(f"seek to {pos} outside 0..{len(self._data)}")
        self._pos = pos

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def eof(self) -> bool:
        return self._pos >= len(self._data)

    # -- pull -----------------------------------------------------------------------------------
    def _take(self, n: int) -> int:
        start = self._pos
        end = start + n
        if n < 0 or end > len(self._data):
            raise BufferReadError(f"need {n} bytes at offset {start}, have {len(self._data) - start}")
        self._pos = end
        return start

    def pull_bytes(self, n: int) -> bytes:
        start = self._take(n)
        return bytes(self._data[start : start + n])

    def pull_uint8(self) -> int:
        start = self._take(1)
        return self._data[start]

    def pull_uint16(self) -> int:
        return _U16.unpack_from(self._data, self._take(2))[0]

    def pull_uint32(self) -> int:
        return _U32.unpack_from(self._data, self._take(4))[0]

    def pull_struct(self, fmt: struct.Struct) -> tuple:
        """Unpack a precompiled ``struct.Struct`` at the cursor and advance past it."""
        return fmt.unpack_from(self._data, self._take(fmt.size))

    def pull_rest(self) -> bytes:
        return self.pull_bytes(len(self._data) - self._pos)

    # -- push -----------------------------------------------------------------------------------
    def push_bytes(self, value: bytes | bytearray | memoryview) -> None:
        data = self._data
        if not isinstance(data, bytearray):
            raise TypeError("this Buffer was made for reading; create Buffer() to write")
        pos = self._pos
        end = pos + len(value)
        if pos == len(data):
            data += value
        else:
            # overwrite in place; a write that runs past the end grows the buffer
            data[pos : min(end, len(data))] = value
        self._pos = end

    def push_uint8(self, value: int) -> None:
        self.push_bytes(bytes((value,)))

    def push_uint16(self, value: int) -> None:
        self.push_bytes(_U16.pack(value))

    def push_uint32(self, value: int) -> None:
        self.push_bytes(_U32.pack(value))

    def push_struct(self, fmt: struct.Struct, *values: object) -> None:
        self.push_bytes(fmt.pack(*values))
