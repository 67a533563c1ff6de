"""Typed frames on a byte stream: a small JSON header, then raw array bytes. Never pickle.

    frame = "CCW1" | header length (u32) | payload length (u64) | header (UTF-8 JSON) | payload

The header is {"kind": str, "fields": {...}, "arrays": [{"dtype": str, "shape": [int, ...]}, ...]};
the payload is the arrays' bytes back to back (little-endian, C order). Every check happens before
the bytes are used: the magic, both lengths against their limits (a peer cannot make us allocate
more than `max_payload`), the JSON shape, each field against the message kind's declared type, each
dtype against a short allow-list and the arrays' sizes against the payload length. A frame that fails
any of them raises `WireError` naming what was wrong; the caller logs it and drops the connection.
What the arrays must look like for a given request (shape against the model) is the receiver's next
check (`expect_arrays`).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MAGIC = b"CCW1"
PREFIX = struct.Struct("<4sIQ")
MAX_HEADER = 64 * 1024
DTYPES = {
    name: np.dtype(name).newbyteorder("<")
    for name in ("float32", "float16", "uint16", "int16", "int8", "uint8")
}


class WireError(ValueError):
    """A frame or message that breaks the protocol; the message says what and where."""


@dataclass
class Message:
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    arrays: list[np.ndarray] = field(default_factory=list)


# ------------------------------------------------------------------ message kinds and their fields

# kind -> {field: type}; a field typed `object` may hold any JSON value (small dicts of numbers).
FieldTypes = dict[str, type | tuple[type, ...]]
SCHEMAS: dict[str, FieldTypes] = {}


def message_kind(kind: str, **fields: type | tuple[type, ...]) -> str:
    """Declare a message kind and the exact fields it carries (all required, no others)."""
    SCHEMAS[kind] = fields
    return kind


def check_fields(msg: Message) -> None:
    schema = SCHEMAS.get(msg.kind)
    if schema is None:
        raise WireError(f"unknown message kind {msg.kind!r}: allowed {', '.join(sorted(SCHEMAS))}")
    missing = sorted(set(schema) - set(msg.fields))
    extra = sorted(set(msg.fields) - set(schema))
    if missing or extra:
        raise WireError(f"{msg.kind}: fields missing {missing}, unexpected {extra}")
    for name, tp in schema.items():
        if not _field_ok(msg.fields[name], tp):
            raise WireError(f"{msg.kind}.{name}={msg.fields[name]!r}: expected {getattr(tp, '__name__', tp)}")


def _field_ok(value: Any, tp: type | tuple[type, ...]) -> bool:
    if tp is object:
        return True
    types = tp if isinstance(tp, tuple) else (tp,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true is not the integer 1 here
    if not isinstance(value, types):
        return False
    return math.isfinite(value) if isinstance(value, float) else True


def expect_arrays(msg: Message, shapes: list[tuple[tuple[int, ...], np.dtype]]) -> None:
    """The arrays are exactly these (shape, dtype), e.g. a codec's payload for a stripe of the model."""
    got = [(a.shape, a.dtype.newbyteorder("=")) for a in msg.arrays]
    want = [(tuple(s), np.dtype(d).newbyteorder("=")) for s, d in shapes]
    if got != want:
        raise WireError(f"{msg.kind}: arrays {got} do not match the expected {want}")


# ------------------------------------------------------------------ encoding and decoding frames


def encode(msg: Message) -> bytes:
    arrays = [np.ascontiguousarray(a) for a in msg.arrays]
    for a in arrays:
        if a.dtype.newbyteorder("<").name not in DTYPES:
            raise WireError(f"{msg.kind}: dtype {a.dtype} cannot be sent (allowed {', '.join(DTYPES)})")
    header = json.dumps(
        {
            "kind": msg.kind,
            "fields": msg.fields,
            "arrays": [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays],
        },
        allow_nan=False,
        separators=(",", ":"),
    ).encode()
    payload = b"".join(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes() for a in arrays)
    if len(header) > MAX_HEADER:
        raise WireError(f"{msg.kind}: header of {len(header)} bytes exceeds {MAX_HEADER}")
    return PREFIX.pack(MAGIC, len(header), len(payload)) + header + payload


def decode(read_exact: Callable[[int], bytes], max_payload: int) -> tuple[Message, int]:
    """Read one frame with `read_exact(n)`; returns the message and the bytes it took on the wire."""
    magic, header_len, payload_len = PREFIX.unpack(read_exact(PREFIX.size))
    if magic != MAGIC:
        raise WireError(f"bad frame magic {magic!r}: not a crosscity peer, or a desynchronised stream")
    if header_len > MAX_HEADER:
        raise WireError(f"header of {header_len} bytes exceeds the limit of {MAX_HEADER}")
    if payload_len > max_payload:
        raise WireError(f"payload of {payload_len} bytes exceeds the limit of {max_payload} for this peer")
    try:
        header = json.loads(read_exact(header_len), parse_constant=_no_constants)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict) or set(header) != {"kind", "fields", "arrays"}:
        raise WireError("header must be an object with exactly kind, fields, arrays")
    kind, fields, specs = header["kind"], header["fields"], header["arrays"]
    if not isinstance(kind, str) or not isinstance(fields, dict) or not isinstance(specs, list):
        raise WireError("header: kind must be a string, fields an object, arrays a list")
    shapes, total = [], 0
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape"} or spec["dtype"] not in DTYPES:
            raise WireError(f"array spec {spec!r}: need dtype in {', '.join(DTYPES)} and a shape")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WireError(f"array shape {shape!r}: need a list of non-negative integers")
        dtype = DTYPES[spec["dtype"]]
        total += math.prod(shape) * dtype.itemsize
        shapes.append((tuple(shape), dtype))
    if total != payload_len:
        raise WireError(f"arrays declare {total} bytes but the payload has {payload_len}")
    payload = read_exact(payload_len)
    arrays, offset = [], 0
    for shape, dtype in shapes:
        n = math.prod(shape) * dtype.itemsize
        arrays.append(
            np.frombuffer(payload, dtype=dtype, count=math.prod(shape), offset=offset).reshape(shape).copy()
        )
        offset += n
    msg = Message(kind, fields, arrays)
    check_fields(msg)
    return msg, PREFIX.size + header_len + payload_len


def _no_constants(name: str) -> Any:
    raise WireError(f"header holds {name}: only finite numbers are allowed")
