"""Lossy encodings of a flat float32 update for the WAN, each with a stated worst-case error.

Every codec turns a tensor of `numel` floats into a list of payload tensors whose shapes depend
only on `numel`, so cities can all_gather them without first exchanging sizes. Scales are kept per
chunk of `CHUNK` values so that one spike only coarsens its own chunk, never the whole vector.

Error bounds (max abs error of decode(encode(x)) over all elements; a_c = max|x| in chunk c):
- none:  0
- fp16:  max_c (2^-11 a_c + s_c 2^-25) + slack; s_c = exact power-of-two chunk scale: no overflow
- bf16:  max_c (2^-8 a_c + s_c 2^-134) + slack; same scheme, bf16 significand
- int8:  max_c (a_c / 254 + a_c 2^-22) + 127 * 2^-149; 127 levels per sign, round to nearest
- int4:  max_c (a_c / 14 + a_c 2^-22) + 7 * 2^-149; 7 levels per sign, two values packed per byte
  (slack: a_c 2^-23 (floats) / a_c 2^-22 (ints) plus 2^-149 terms cover float32 rounding of
  the scale and the decode, subnormals included; the codecs compute in float32 for speed)

`ErrorFeedback` keeps, per key (rank and fragment), what compression dropped last time and adds it
back before the next encode, so the decoded updates sum to the true sum within one round's error.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch

CHUNK = 1024  # values per scale: 4 bytes of scale per 1024 values = 0.4% overhead at int8


def _chunks(numel: int) -> int:
    return max(1, math.ceil(numel / CHUNK))


def _chunked(x: torch.Tensor) -> torch.Tensor:
    """[n] -> [chunks, CHUNK], zero padded (zeros never change a chunk's absmax)."""
    return torch.nn.functional.pad(x, (0, _chunks(x.numel()) * CHUNK - x.numel())).view(-1, CHUNK)


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 1 or not x.is_floating_point():
        raise ValueError(f"codec input must be a flat floating tensor, got shape {tuple(x.shape)} {x.dtype}")
    x = x.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"codec input has {bad} non-finite values (nan/inf) of {x.numel()}: cannot encode")
    return x


def _absmax(x: torch.Tensor) -> torch.Tensor:
    return _chunked(_check_input(x)).abs().amax(dim=1)


def _times_pow2(chunks: torch.Tensor, exps: torch.Tensor) -> torch.Tensor:
    """chunks[c] * 2^exps[c], exactly, in two float32 factors so that 2^|e| <= 2^82 never overflows."""
    half = torch.div(exps, 2, rounding_mode="floor").to(torch.float32)
    rest = exps.to(torch.float32) - half
    return chunks * torch.exp2(half).unsqueeze(1) * torch.exp2(rest).unsqueeze(1)


def _finite(x: torch.Tensor) -> torch.Tensor:
    """A decode within rounding of +-FLT_MAX may round up to inf: pull it back (error <= 1 ulp)."""
    top = torch.finfo(torch.float32).max
    return x.clamp_(-top, top)


class Codec(ABC):
    """Encode a flat float tensor into fixed-size payloads; decode back to float32."""

    name: str

    @abstractmethod
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    @abstractmethod
    def decode(self, payload: list[torch.Tensor], numel: int) -> torch.Tensor: ...

    @abstractmethod
    def payload_shapes(self, numel: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of each payload tensor for `numel` values (same on every rank)."""

    @abstractmethod
    def error_bound(self, x: torch.Tensor) -> float:
        """Largest abs error decode(encode(x)) may have against x (see the module docstring)."""

    def payload_bytes(self, numel: int) -> int:
        """Exact bytes on the wire for one encoded tensor of `numel` values."""
        total = 0
        for shape, dtype in self.payload_shapes(numel):
            total += math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        return total


class NoCodec(Codec):
    name = "none"

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.detach().to(torch.float32).contiguous()]

    def decode(self, payload: list[torch.Tensor], numel: int) -> torch.Tensor:
        return payload[0].to(torch.float32)

    def payload_shapes(self, numel: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((numel,), torch.float32)]

    def error_bound(self, x: torch.Tensor) -> float:
        return 0.0


class FloatCodec(Codec):
    """Cast to a 16-bit float after dividing each chunk by a power of two (int16 exponent).

    The power-of-two scale is exact and maps each chunk's absmax into [2^14, 2^15), so fp16 never
    overflows and small chunks stay out of the subnormal range.
    """

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name, self.dtype = name, dtype
        info = torch.finfo(dtype)
        self.unit_roundoff = info.eps / 2
        self.half_subnormal = info.smallest_normal * info.eps / 2

    def _exponents(self, absmax: torch.Tensor) -> torch.Tensor:
        """e with absmax < 2^e (frexp), minus 15; 0 for an all-zero chunk."""
        exps = torch.frexp(absmax).exponent - 15
        return torch.where(absmax > 0, exps, torch.zeros_like(exps)).to(torch.int16)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        chunks = _chunked(_check_input(x))
        exps = self._exponents(chunks.abs().amax(dim=1))
        scaled = _times_pow2(chunks, -exps.to(torch.int32))
        return [scaled.flatten()[: x.numel()].to(self.dtype), exps]

    def decode(self, payload: list[torch.Tensor], numel: int) -> torch.Tensor:
        values, exps = payload
        chunks = _chunked(values.to(torch.float32))
        return _finite(_times_pow2(chunks, exps.to(torch.int32)).flatten()[:numel])

    def payload_shapes(self, numel: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [((numel,), self.dtype), ((_chunks(numel),), torch.int16)]

    def error_bound(self, x: torch.Tensor) -> float:
        absmax = _absmax(x).double()
        scale = torch.exp2(self._exponents(absmax.float()).double())
        # plus one float32 rounding of the decode (relative 2^-23 covers it, 2^-149 where subnormal)
        per_chunk = absmax * (self.unit_roundoff + 2.0**-23) + scale * self.half_subnormal
        return float(per_chunk.max()) + 2.0**-149


class IntCodec(Codec):
    """Symmetric integer quantisation with a float32 absmax scale per chunk."""

    def __init__(self, name: str, bits: int) -> None:
        self.name, self.bits = name, bits
        self.levels = 2 ** (bits - 1) - 1  # 127 for int8, 7 for int4: symmetric, zero exact

    def _quantise(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        chunks = _chunked(_check_input(x))
        scale = chunks.abs().amax(dim=1) / self.levels
        divisor = torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
        q = torch.round(chunks / divisor).clamp_(-self.levels, self.levels).to(torch.int8)
        return q.flatten()[: x.numel()], scale

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        q, scale = self._quantise(x)
        if self.bits == 8:
            return [q, scale]
        nibbles = (q + self.levels + 1).to(torch.uint8)  # 1..15, fits in 4 bits
        if nibbles.numel() % 2:
            nibbles = torch.cat([nibbles, nibbles.new_zeros(1)])
        return [nibbles[0::2] | (nibbles[1::2] << 4), scale]

    def decode(self, payload: list[torch.Tensor], numel: int) -> torch.Tensor:
        packed, scale = payload
        if self.bits == 8:
            q = packed
        else:
            nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=1).flatten()[:numel]
            q = nibbles.to(torch.int8) - (self.levels + 1)
        chunks = _chunked(q.to(torch.float32))
        return _finite((chunks * scale.unsqueeze(1)).flatten()[:numel])

    def payload_shapes(self, numel: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        values = numel if self.bits == 8 else math.ceil(numel / 2)
        dtype = torch.int8 if self.bits == 8 else torch.uint8
        return [((values,), dtype), ((_chunks(numel),), torch.float32)]

    def error_bound(self, x: torch.Tensor) -> float:
        # half a quantisation step, slack for the float32 rounding of scale, division and decode,
        # and for a scale that falls into (or under) float32's subnormal range
        return float((_absmax(x).double() * (0.5 / self.levels + 2.0**-22)).max()) + self.levels * 2.0**-149


CODECS: dict[str, Codec] = {
    "none": NoCodec(),
    "fp16": FloatCodec("fp16", torch.float16),
    "bf16": FloatCodec("bf16", torch.bfloat16),
    "int8": IntCodec("int8", 8),
    "int4": IntCodec("int4", 4),
}


def make_codec(name: str) -> Codec:
    if name not in CODECS:
        raise ValueError(f"wan.codec={name!r}: allowed values are {', '.join(CODECS)}")
    return CODECS[name]


class ErrorFeedback:
    """Residual compensation: encode(x + residual), then residual = (x + residual) - decoded.

    One residual per key (e.g. "params/stripe0" or "fragment3"), so fragments and stripes never
    mix; the residual is part of the checkpoint.
    """

    def __init__(self) -> None:
        self.residuals: dict[str, torch.Tensor] = {}

    def encode(self, codec: Codec, x: torch.Tensor, key: str) -> list[torch.Tensor]:
        """Payload for x plus the residual carried under `key`; keeps what this encode dropped."""
        residual = self.residuals.get(key)
        if residual is not None and residual.numel() != x.numel():
            raise ValueError(
                f"error feedback key {key!r}: residual has {residual.numel()} values, x has {x.numel()}"
            )
        target = x.detach().to(torch.float32) + (residual if residual is not None else 0.0)
        payload = codec.encode(target)
        self.residuals[key] = target - codec.decode(payload, x.numel())
        return payload

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.residuals.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.residuals = {k: v.clone() for k, v in state.items()}
