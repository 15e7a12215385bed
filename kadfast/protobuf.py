"""Minimal protobuf wire-format reading and writing.

Just what libp2p's small messages need: varint and length-delimited fields,
with unknown fields skipped, as the other implementations do.
"""

from __future__ import annotations

from typing import Any, Iterator

from .errors import ProtobufError, VarintError
from .varint import Buffer, decode_uvarint, encode_uvarint

__all__ = ["iter_fields", "field_varint", "field_bytes", "WT_VARINT", "WT_LEN"]

WT_VARINT = 0
WT_I64 = 1
WT_LEN = 2
WT_I32 = 5


def _varint(data: Buffer, pos: int) -> tuple[int, int]:
    try:
        return decode_uvarint(data, pos)
    except VarintError as exc:
        raise ProtobufError(f"bad varint in protobuf: {exc}") from None


def iter_fields(data: Buffer) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field_number, wire_type, value)``; value is an int or bytes.
    (Typed Any: the wire type says which, and a type checker cannot follow.)

    Fixed-width fields are returned as bytes; groups are refused.
    """
    pos = 0
    end = len(data)
    value: int | bytes
    while pos < end:
        tag, pos = _varint(data, pos)
        number, wt = tag >> 3, tag & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wt == WT_VARINT:
            value, pos = _varint(data, pos)
        elif wt == WT_LEN:
            n, pos = _varint(data, pos)
            if pos + n > end:
                raise ProtobufError("length-delimited field runs past the end")
            value = bytes(data[pos:pos + n])
            pos += n
        elif wt == WT_I64:
            if pos + 8 > end:
                raise ProtobufError("truncated fixed64 field")
            value = bytes(data[pos:pos + 8])
            pos += 8
        elif wt == WT_I32:
            if pos + 4 > end:
                raise ProtobufError("truncated fixed32 field")
            value = bytes(data[pos:pos + 4])
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wt}")
        yield number, wt, value


def field_varint(number: int, value: int) -> bytes:
    return encode_uvarint(number << 3 | WT_VARINT) + encode_uvarint(value)


def field_bytes(number: int, value: bytes) -> bytes:
    return encode_uvarint(number << 3 | WT_LEN) + encode_uvarint(len(value)) + value
