"""Protobuf wire encoding by hand, for the Braiins OS+ gRPC messages: field numbers come
from braiins/bos-plus-api (read through pyasic's bindings); we do not vendor the .proto files
(GPL-3.0 headers), so there is no generated code to lean on.
"""

from __future__ import annotations

import struct


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints go out as two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def pb_uint(field: int, value: int) -> bytes:
    """A varint field; proto3 leaves out zeros."""
    return _varint(field << 3) + _varint(value) if value else b""


def pb_optional_uint(field: int, value: int) -> bytes:
    """A varint field declared `optional`: sent even when 0, as its presence is the point."""
    return _varint(field << 3) + _varint(value)


def pb_bool(field: int, value: bool) -> bytes:
    return pb_uint(field, int(value))


def pb_true(field: int) -> bytes:
    return pb_uint(field, 1)


def pb_double(field: int, value: float) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<d", value) if value else b""


def pb_bytes(field: int, data: bytes) -> bytes:
    """A length-delimited field; sub-messages always go out, as presence matters."""
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def pb_str(field: int, text: str) -> bytes:
    return pb_bytes(field, text.encode()) if text else b""


PbFields = dict[int, list[int | bytes]]


def pb_decode(data: bytes) -> PbFields:
    """Fields by number: varints as ints, everything else as bytes; ValueError if broken."""
    fields: PbFields = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i : i + size], i + size
        elif wire == 2:  # noqa: PLR2004 - protobuf wire type LEN
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if i > len(data):
            raise ValueError("truncated field")
        fields.setdefault(number, []).append(value)
    return fields


def pb_int(fields: PbFields, number: int) -> int:
    values = fields.get(number)
    if not values:
        return 0
    value = values[-1]  # proto3: the last occurrence wins
    if not isinstance(value, int):
        raise ValueError(f"field {number} is not a varint")  # noqa: TRY004 - ValueError is the codec's
    return value


def pb_message(fields: PbFields, number: int) -> bytes:
    values = fields.get(number)
    if not values:
        return b""
    value = values[-1]
    if not isinstance(value, bytes):
        raise ValueError(f"field {number} is not length-delimited")  # noqa: TRY004
    return value


def pb_string(fields: PbFields, number: int) -> str:
    return pb_message(fields, number).decode()


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:  # noqa: PLR2004 - a varint has at most 10 bytes
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i
