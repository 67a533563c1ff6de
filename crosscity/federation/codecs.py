"""Lossy encodings of a flat float32 update for the WAN, each with a stated worst-case error.

Numpy only: the cities encode with it and the coordinator decodes, averages and re-encodes with the
very same code, so both sides reconstruct bit-identical values. Every codec turns `numel` floats into
a list of payload arrays whose shapes depend only on `numel`, so the receiver checks each array
against the shape it expects before decoding. Scales are kept per chunk of `CHUNK` values so that
one spike only coarsens its own chunk, never the whole vector.

Error bounds (max abs error of decode(encode(x)) over all elements; a_c = max|x| in chunk c):
- none:  0
- fp16:  max_c (2^-11 a_c + s_c 2^-25) + slack; s_c = exact power-of-two chunk scale: no overflow
- bf16:  max_c (2^-8 a_c + s_c 2^-134) + slack; same scheme, bf16 significand (sent as uint16)
- int8:  max_c (a_c / 254 + a_c 2^-22) + 127 * 2^-149; 127 levels per sign, round to nearest
- int4:  max_c (a_c / 14 + a_c 2^-22) + 7 * 2^-149; 7 levels per sign, two values packed per byte
  (slack: a_c 2^-23 (floats) / a_c 2^-22 (ints) plus 2^-149 terms cover float32 rounding of
  the scale and the decode, subnormals included; the codecs compute in float32)

`ErrorFeedback` keeps, per key (stripe and fragment), what compression dropped last time and adds it
back before the next encode, so the decoded updates sum to the true sum within one round's error.
A city commits the new residual only when its round committed: a failed round sent nothing.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np

CHUNK = 1024  # values per scale: 4 bytes of scale per 1024 values = 0.4% overhead at int8
FLT_MAX = float(np.finfo(np.float32).max)
Shapes = list[tuple[tuple[int, ...], np.dtype]]


def _chunks(numel: int) -> int:
    return max(1, math.ceil(numel / CHUNK))


def _chunked(x: np.ndarray) -> np.ndarray:
    """[n] -> [chunks, CHUNK], zero padded (zeros never change a chunk's absmax)."""
    out = np.zeros(_chunks(x.size) * CHUNK, dtype=x.dtype)
    out[: x.size] = x
    return out.reshape(-1, CHUNK)


def check_input(x: np.ndarray) -> np.ndarray:
    """A flat, finite float32 vector (a copy-free view when it already is one)."""
    x = np.asarray(x)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"codec input must be a flat floating array, got shape {x.shape} {x.dtype}")
    x = x.astype(np.float32, copy=False)
    finite = np.isfinite(x)
    if not finite.all():
        bad = int((~finite).sum())
        raise ValueError(f"codec input has {bad} non-finite values (nan/inf) of {x.size}: cannot encode")
    return x


def _absmax(x: np.ndarray) -> np.ndarray:
    return np.abs(_chunked(check_input(x))).max(axis=1)


def _times_pow2(chunks: np.ndarray, exps: np.ndarray) -> np.ndarray:
    """chunks[c] * 2^exps[c], exactly, in two float32 factors so that 2^|e| <= 2^82 never overflows."""
    exps = exps.astype(np.int32)
    half = np.floor_divide(exps, 2)
    rest = exps - half
    one = np.float32(1.0)
    return (
        chunks
        * np.ldexp(one, half)[:, None].astype(np.float32)
        * np.ldexp(one, rest)[:, None].astype(np.float32)
    )


def _finite(x: np.ndarray) -> np.ndarray:
    """A decode within rounding of +-FLT_MAX may round up to inf: pull it back (error <= 1 ulp)."""
    return np.clip(x, -FLT_MAX, FLT_MAX)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), round to nearest even (inputs are finite)."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)


def _from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


class Codec(ABC):
    """Encode a flat float vector into fixed-size payloads; decode back to float32."""

    name: str

    @abstractmethod
    def encode(self, x: np.ndarray) -> list[np.ndarray]: ...

    @abstractmethod
    def decode(self, payload: list[np.ndarray], numel: int) -> np.ndarray: ...

    @abstractmethod
    def payload_shapes(self, numel: int) -> Shapes:
        """Shape and dtype of each payload array for `numel` values (what a receiver checks)."""

    @abstractmethod
    def error_bound(self, x: np.ndarray) -> float:
        """Largest abs error decode(encode(x)) may have against x (see the module docstring)."""

    def payload_bytes(self, numel: int) -> int:
        """Exact bytes of one encoded vector of `numel` values."""
        return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in self.payload_shapes(numel))


class NoCodec(Codec):
    name = "none"

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(check_input(x))]

    def decode(self, payload: list[np.ndarray], numel: int) -> np.ndarray:
        return payload[0].astype(np.float32, copy=False)

    def payload_shapes(self, numel: int) -> Shapes:
        return [((numel,), np.dtype(np.float32))]

    def error_bound(self, x: np.ndarray) -> float:
        return 0.0


class FloatCodec(Codec):
    """Cast to a 16-bit float after dividing each chunk by a power of two (int16 exponent).

    The power-of-two scale is exact and maps each chunk's absmax into [2^14, 2^15), so fp16 never
    overflows and small chunks stay out of the subnormal range.
    """

    def __init__(self, name: str, mantissa_bits: int, min_normal_exp: int) -> None:
        self.name = name
        self.unit_roundoff = 2.0 ** -(mantissa_bits + 1)
        self.half_subnormal = 2.0 ** (min_normal_exp - mantissa_bits - 1)
        self.wire = np.dtype(np.float16) if name == "fp16" else np.dtype(np.uint16)

    def _exponents(self, absmax: np.ndarray) -> np.ndarray:
        """e with absmax < 2^e (frexp), minus 15; 0 for an all-zero chunk."""
        exps = np.frexp(absmax)[1] - 15
        return np.where(absmax > 0, exps, 0).astype(np.int16)

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        x = check_input(x)
        chunks = _chunked(x)
        exps = self._exponents(np.abs(chunks).max(axis=1))
        scaled = _times_pow2(chunks, -exps.astype(np.int32)).reshape(-1)[: x.size]
        values = scaled.astype(np.float16) if self.name == "fp16" else _to_bf16(scaled)
        return [values, exps]

    def decode(self, payload: list[np.ndarray], numel: int) -> np.ndarray:
        values, exps = payload
        floats = values.astype(np.float32) if self.name == "fp16" else _from_bf16(values)
        return _finite(_times_pow2(_chunked(floats), exps).reshape(-1)[:numel])

    def payload_shapes(self, numel: int) -> Shapes:
        return [((numel,), self.wire), ((_chunks(numel),), np.dtype(np.int16))]

    def error_bound(self, x: np.ndarray) -> float:
        absmax = _absmax(x).astype(np.float64)
        scale = np.ldexp(1.0, self._exponents(absmax.astype(np.float32)).astype(np.int64))
        # plus one float32 rounding of the decode (relative 2^-23 covers it, 2^-149 where subnormal)
        per_chunk = absmax * (self.unit_roundoff + 2.0**-23) + scale * self.half_subnormal
        return float(per_chunk.max()) + 2.0**-149


class IntCodec(Codec):
    """Symmetric integer quantisation with a float32 absmax scale per chunk."""

    def __init__(self, name: str, bits: int) -> None:
        self.name, self.bits = name, bits
        self.levels = 2 ** (bits - 1) - 1  # 127 for int8, 7 for int4: symmetric, zero exact

    def encode(self, x: np.ndarray) -> list[np.ndarray]:
        x = check_input(x)
        chunks = _chunked(x)
        scale = (np.abs(chunks).max(axis=1) / np.float32(self.levels)).astype(np.float32)
        divisor = np.where(scale > 0, scale, np.float32(1.0))[:, None]
        q = (
            np.clip(np.rint(chunks / divisor), -self.levels, self.levels)
            .astype(np.int8)
            .reshape(-1)[: x.size]
        )
        if self.bits == 8:
            return [q, scale]
        nibbles = (q.astype(np.int16) + self.levels + 1).astype(np.uint8)  # 1..15, fits in 4 bits
        if nibbles.size % 2:
            nibbles = np.concatenate([nibbles, np.zeros(1, np.uint8)])
        return [nibbles[0::2] | (nibbles[1::2] << 4), scale]

    def decode(self, payload: list[np.ndarray], numel: int) -> np.ndarray:
        packed, scale = payload
        if self.bits == 8:
            q = packed.astype(np.float32)
        else:
            nibbles = np.stack([packed & 0x0F, packed >> 4], axis=1).reshape(-1)[:numel]
            q = nibbles.astype(np.float32) - np.float32(self.levels + 1)
        return _finite((_chunked(q) * scale[:, None]).reshape(-1)[:numel])

    def payload_shapes(self, numel: int) -> Shapes:
        values = numel if self.bits == 8 else math.ceil(numel / 2)
        dtype = np.dtype(np.int8) if self.bits == 8 else np.dtype(np.uint8)
        return [((values,), dtype), ((_chunks(numel),), np.dtype(np.float32))]

    def error_bound(self, x: np.ndarray) -> float:
        # half a quantisation step, slack for the float32 rounding of scale, division and decode,
        # and for a scale that falls into (or under) float32's subnormal range
        return float((_absmax(x).astype(np.float64) * (0.5 / self.levels + 2.0**-22)).max()) + (
            self.levels * 2.0**-149
        )


CODECS: dict[str, Codec] = {
    "none": NoCodec(),
    "fp16": FloatCodec("fp16", mantissa_bits=10, min_normal_exp=-14),
    "bf16": FloatCodec("bf16", mantissa_bits=7, min_normal_exp=-126),
    "int8": IntCodec("int8", 8),
    "int4": IntCodec("int4", 4),
}


def make_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"wan.codec={name!r}: allowed values are {', '.join(CODECS)}")
    return CODECS[name]


class ErrorFeedback:
    """Residual compensation: encode(x + residual), then residual = (x + residual) - decoded.

    One residual per key (e.g. "f0/s1": fragment 0, stripe 1), so fragments and stripes never mix;
    the residuals are part of the checkpoint. `propose` leaves the residual alone until `commit`.
    """

    def __init__(self) -> None:
        self.residuals: dict[str, np.ndarray] = {}

    def propose(self, codec: Codec, x: np.ndarray, key: str) -> tuple[list[np.ndarray], np.ndarray]:
        """Payload for x plus the residual carried under `key`, and the residual it would leave."""
        residual = self.residuals.get(key)
        if residual is not None and residual.size != x.size:
            raise ValueError(
                f"error feedback key {key!r}: residual has {residual.size} values, x has {x.size}"
            )
        target = check_input(x) + (residual if residual is not None else np.float32(0.0))
        payload = codec.encode(target)
        return payload, target - codec.decode(payload, x.size)

    def commit(self, key: str, residual: np.ndarray) -> None:
        self.residuals[key] = residual

    def encode(self, codec: Codec, x: np.ndarray, key: str) -> list[np.ndarray]:
        """propose + commit: for a sender whose encode always takes effect (the coordinator)."""
        payload, residual = self.propose(codec, x, key)
        self.commit(key, residual)
        return payload

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.residuals.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.residuals = {k: np.asarray(v, dtype=np.float32).copy() for k, v in state.items()}
