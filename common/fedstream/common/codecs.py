"""Tensor encodings that cut the bytes of float32 tensor sets (updates, weights): float16,
bfloat16, int8 with one scale per tensor or per block of 256 values (stochastic rounding:
unbiased), and top-k sparsification (indices and values). Pure numpy; the byte layouts are
given in docs/PROTOCOL.md.

The specs of an encoded tensor set still describe the decoded float32 tensors; the payload is
the tensors' encodings concatenated in order. Decoding checks the payload's structure and
raises InvalidArgument for anything malformed, before any value is used.
"""

from __future__ import annotations

import abc
import enum
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument, ResourceExhausted
from fedstream.common.tensors import CHUNK_BYTES, MAX_TENSOR_SET_BYTES, TensorSpec, unpack

BLOCK = 256  # values per scale in int8-block
HALF_MAX = 65504.0  # the largest finite float16
F32 = np.dtype("<f4")


class Encoding(str, enum.Enum):
    RAW = "raw"  # the tensors' own dtype, little-endian
    FLOAT16 = "float16"  # IEEE half per value
    BFLOAT16 = "bfloat16"  # the upper 16 bits of the float32, rounded to nearest even
    INT8 = "int8"  # a float32 scale per tensor, then one int8 per value
    INT8_BLOCK = "int8-block"  # a float32 scale per block of 256 values, then one int8 each
    TOPK = "topk"  # uint32 k, k ascending uint32 flat indices, k float32 values


@dataclass(frozen=True)
class Encoded:
    """A tensor set's payload as sent: its encoding and bytes."""
    encoding: Encoding
    payload: bytes


def _count(spec: TensorSpec) -> int:
    return int(np.prod(spec.shape, dtype=np.int64))


class Codec(abc.ABC):
    """How one compressed encoding lays out a float32 tensor of n values: its size, its
    bytes, and the checks that refuse a malformed payload before any value is used. Raw,
    the tensors' own dtype, is not a codec: it is the absence of one."""

    error_feedback = False  # a sender keeps what this encoding drops and adds it next time

    def size(self, n: int) -> int | None:
        """The payload bytes of a tensor of n values; None when they vary."""
        return None

    def max_size(self, n: int) -> int:
        """The most payload bytes a header may declare for n values."""
        return self.size(n)

    @abc.abstractmethod
    def encode(self, flat: np.ndarray, *, rng: np.random.Generator | None,
               topk_fraction: float) -> bytes:
        """The bytes of one flat float32 tensor."""

    @abc.abstractmethod
    def decode(self, spec: TensorSpec, n: int, view: memoryview,
               offset: int) -> tuple[np.ndarray, int]:
        """The tensor at `offset` (flat float32) and the offset after it."""


class Float16(Codec):
    def size(self, n):
        return 2 * n

    def encode(self, flat, *, rng, topk_fraction):
        # beyond float16's range a value saturates at +-65504 rather than becoming Inf
        return np.clip(flat, -HALF_MAX, HALF_MAX).astype("<f2").tobytes()

    def decode(self, spec, n, view, offset):
        return np.frombuffer(view, "<f2", n, offset).astype(F32), offset + 2 * n


class BFloat16(Codec):
    def size(self, n):
        return 2 * n

    def encode(self, flat, *, rng, topk_fraction):
        bits = flat.view("<u4").astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        return rounded.astype("<u2").tobytes()

    def decode(self, spec, n, view, offset):
        values = np.zeros(n, F32)  # the 16 bits become the upper half of each float32
        values.view("<u2")[1::2] = np.frombuffer(view, "<u2", n, offset)
        return values, offset + 2 * n


class Int8(Codec):
    """A float32 scale per block of values (the whole tensor when `block` is None), then
    one int8 per value, rounded stochastically (unbiased) and clamped to [-127, 127]."""

    def __init__(self, block: int | None):
        self.block = block

    def _blocks(self, n: int) -> tuple[int, int]:
        block = self.block or n
        return block, (max(1, math.ceil(n / block)) if n else 0)

    def size(self, n):
        return 4 * self._blocks(n)[1] + n

    def encode(self, flat, *, rng, topk_fraction):
        if rng is None:
            raise ValueError("int8 encodings round stochastically: pass rng")
        n = len(flat)
        block, blocks = self._blocks(n)
        padded = np.zeros(blocks * block if block else 0, F32)
        padded[:n] = flat
        padded = padded.reshape(blocks, -1) if blocks else padded.reshape(0, 1)
        scales = (np.abs(padded).max(axis=1) / 127).astype(F32)
        safe = np.where(scales > 0, scales, 1).astype(F32)
        scaled = padded / safe[:, None]
        q = np.floor(scaled + rng.random(scaled.shape, dtype=np.float32))
        q = np.clip(q, -127, 127).astype(np.int8).reshape(-1)[:n]
        return scales.astype("<f4").tobytes() + q.tobytes()

    def decode(self, spec, n, view, offset):
        block, blocks = self._blocks(n)
        scales = np.frombuffer(view, "<f4", blocks, offset)
        q = np.frombuffer(view, np.int8, n, offset + 4 * blocks)
        if not np.all(np.isfinite(scales) & (scales >= 0)):
            raise InvalidArgument(f"tensor {spec.name!r}: int8 scales must be finite and "
                                  ">= 0")
        if n and q.min() == -128:
            raise InvalidArgument(f"tensor {spec.name!r}: int8 values lie in [-127, 127]")
        return _dequantize(q, scales, block), offset + 4 * blocks + n


class TopK(Codec):
    """uint32 k, k ascending uint32 flat indices, k float32 values; zeros elsewhere."""

    error_feedback = True

    def max_size(self, n):
        return 4 + 8 * n

    def encode(self, flat, *, rng, topk_fraction):
        k = topk_count(len(flat), topk_fraction)
        index = np.sort(np.argpartition(np.abs(flat), len(flat) - k)[len(flat) - k:]) if k \
            else np.zeros(0, np.int64)
        return (np.array([k], "<u4").tobytes() + index.astype("<u4").tobytes()
                + flat[index].astype("<f4").tobytes())

    def decode(self, spec, n, view, offset):
        if offset + 4 > len(view):
            raise InvalidArgument(f"top-k payload ends before tensor {spec.name!r}'s count")
        k = int(np.frombuffer(view, "<u4", 1, offset)[0])
        if k > n or offset + 4 + 8 * k > len(view):
            raise InvalidArgument(f"tensor {spec.name!r}: top-k count {k} for {n} values, or "
                                  "past the payload's end")
        index = np.frombuffer(view, "<u4", k, offset + 4).astype(np.int64)
        if k and (index[-1] >= n or np.any(np.diff(index) <= 0)):
            raise InvalidArgument(f"tensor {spec.name!r}: top-k indices must be ascending, "
                                  f"distinct and below {n}")
        values = np.zeros(n, F32)
        values[index] = np.frombuffer(view, "<f4", k, offset + 4 + 4 * k)
        return values, offset + 4 + 8 * k


# the compressed encodings; a new one is a Codec above, its Encoding member, a line here and
# its ENCODING_<NAME> value in tensor.proto (serde maps the two by name)
CODECS: dict[Encoding, Codec] = {
    Encoding.FLOAT16: Float16(),
    Encoding.BFLOAT16: BFloat16(),
    Encoding.INT8: Int8(block=None),
    Encoding.INT8_BLOCK: Int8(block=BLOCK),
    Encoding.TOPK: TopK(),
}


def encoded_size(encoding: Encoding, specs: Sequence[TensorSpec]) -> int | None:
    """The payload bytes of a fixed-size encoding; None for one whose size varies (top-k)."""
    if encoding is Encoding.RAW:
        return sum(s.nbytes for s in specs)
    _check_float32(specs, encoding)
    sizes = [CODECS[encoding].size(_count(s)) for s in specs]
    return None if None in sizes else sum(sizes)


def max_encoded_size(encoding: Encoding, specs: Sequence[TensorSpec]) -> int:
    """The largest payload a header may declare for `specs` in `encoding`."""
    fixed = encoded_size(encoding, specs)
    if fixed is not None:
        return fixed
    return sum(CODECS[encoding].max_size(_count(s)) for s in specs)


def _check_float32(specs: Sequence[TensorSpec], encoding: Encoding) -> None:
    other = [s.name for s in specs if s.dtype != F32]
    if other:
        raise InvalidArgument(f"encoding {encoding.value} carries float32 tensors only; "
                              f"{other[:3]} are not")


def topk_count(n: int, fraction: float) -> int:
    return min(n, max(1, math.ceil(fraction * n))) if n else 0


def encode(encoding: Encoding, arrays: Sequence[np.ndarray], *,
           rng: np.random.Generator | None = None, topk_fraction: float = 0.01) -> bytes:
    """The payload of `arrays` (float32 unless raw) in `encoding`; int8 rounds stochastically
    with `rng`."""
    if encoding is Encoding.RAW:
        return b"".join(np.ascontiguousarray(a).astype(np.asarray(a).dtype.newbyteorder("<"),
                                                       copy=False).tobytes() for a in arrays)
    codec = CODECS[encoding]
    return b"".join(codec.encode(np.ascontiguousarray(a, dtype=F32).reshape(-1), rng=rng,
                                 topk_fraction=topk_fraction) for a in arrays)


def decode(encoding: Encoding, specs: Sequence[TensorSpec],
           payload: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """The tensors of an encoded payload; INVALID_ARGUMENT for a malformed one."""
    if encoding is Encoding.RAW:
        return unpack(specs, payload)
    view = memoryview(payload)
    expected = encoded_size(encoding, specs)
    if expected is not None and len(view) != expected:
        raise InvalidArgument(f"{encoding.value} payload of {len(view)} bytes; the specs need "
                              f"{expected}")
    codec, out, offset = CODECS[encoding], [], 0
    for spec in specs:
        values, offset = codec.decode(spec, _count(spec), view, offset)
        out.append(values.reshape(spec.shape))
    if offset != len(view):
        raise InvalidArgument(f"{encoding.value} payload holds {len(view)} bytes, its tensors "
                              f"use {offset}")
    return out


def _dequantize(q: np.ndarray, scales: np.ndarray, block: int) -> np.ndarray:
    """q * its block's scale, written once into the output (no full-size temporaries)."""
    values = np.empty(len(q), F32)
    full = len(q) // block * block if block else 0
    np.multiply(q[:full].reshape(-1, block), scales[:full // block, None],
                out=values[:full].reshape(-1, block), dtype=F32)
    if full < len(q):
        np.multiply(q[full:], scales[-1], out=values[full:], dtype=F32)
    return values


def transmit(encoding: Encoding, arrays: Sequence[np.ndarray],
             **options) -> tuple[Encoded, list[np.ndarray]]:
    """The payload of float32 `arrays` in `encoding` and what a receiver decodes from it: a
    sender that must hold exactly what was received (error feedback, weight images) uses
    the decoded arrays."""
    payload = encode(encoding, arrays, **options)
    specs = [TensorSpec(str(i), F32, tuple(a.shape)) for i, a in enumerate(arrays)]
    return Encoded(encoding, payload), decode(encoding, specs, payload)


class TensorSetAssembler:
    """Reassembles one tensor set from chunks into a buffer allocated once from the header,
    and decodes it: raw arrays are views of that buffer."""

    def __init__(self, specs: Sequence[TensorSpec], total_bytes: int, *,
                 encoding: Encoding = Encoding.RAW, max_bytes: int = MAX_TENSOR_SET_BYTES):
        expected = encoded_size(encoding, specs)
        if expected is not None and total_bytes != expected:
            raise InvalidArgument(f"header declares {total_bytes} bytes but its tensor specs "
                                  f"need {expected} in encoding {encoding.value}")
        if expected is None and not 4 * len(specs) <= total_bytes <= max_encoded_size(
                encoding, specs):
            raise InvalidArgument(f"header declares {total_bytes} bytes, outside what "
                                  f"{encoding.value} can take for its tensor specs")
        if total_bytes > max_bytes:
            raise ResourceExhausted(
                f"tensor set of {total_bytes} bytes exceeds this server's limit of {max_bytes}")
        self.specs = list(specs)
        self.encoding = encoding
        self.total_bytes = total_bytes
        self._buffer = bytearray(total_bytes)
        self._filled = 0

    def add(self, offset: int, data: bytes) -> None:
        if len(data) > CHUNK_BYTES:
            raise InvalidArgument(f"a chunk of {len(data)} bytes: chunks hold at most "
                                  f"{CHUNK_BYTES} bytes (1 MiB); split the payload")
        if offset != self._filled:
            raise InvalidArgument(
                f"chunk at offset {offset} but {self._filled} bytes were received so far: "
                "send chunks in order, without gaps or overlaps")
        end = offset + len(data)
        if end > self.total_bytes:
            raise InvalidArgument(
                f"chunk ends at byte {end}, past the {self.total_bytes} bytes the header declared")
        self._buffer[offset:end] = data
        self._filled = end

    def finish(self) -> list[np.ndarray]:
        if self._filled != self.total_bytes:
            raise InvalidArgument(
                f"stream ended after {self._filled} of {self.total_bytes} declared bytes "
                "(truncated): resend the whole tensor set")
        return decode(self.encoding, self.specs, self._buffer)
