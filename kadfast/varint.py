"""Unsigned LEB128 varints as used by multiformats and protobuf.

Decoding is strict: at most 9 bytes (values below 2**63, the multiformats
limit) and minimal encodings only, so that one value has one encoding.
"""

from __future__ import annotations

from .errors import VarintError

__all__ = ["encode_uvarint", "decode_uvarint", "MAX_UVARINT_BYTES"]

#: what the decoders read
Buffer = bytes | bytearray | memoryview

#: multiformats unsigned-varint spec: at most 9 bytes (63 bits of value).
MAX_UVARINT_BYTES = 9


def encode_uvarint(value: int) -> bytes:
    if value < 0 or value >= 1 << 63:
        raise VarintError(f"varint value out of range: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: Buffer, pos: int = 0) -> tuple[int, int]:
    """Decode a varint at ``data[pos:]``; returns ``(value, new_pos)``.

    Raises :class:`VarintError` when the input ends inside the varint (call it
    again with more data), when it is longer than 9 bytes, or non-minimal.
    """
    value = 0
    shift = 0
    end = len(data)
    start = pos
    while True:
        if pos >= end:
            raise VarintError("truncated varint")
        if pos - start >= MAX_UVARINT_BYTES:
            raise VarintError("varint longer than 9 bytes")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and pos - start > 1:
                raise VarintError("non-minimal varint encoding")
            return value, pos
        shift += 7
