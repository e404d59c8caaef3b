"""Tensor sets as raw little-endian bytes: specs, packing, chunking and reassembly.

Pure numpy; no protobuf here. A tensor set is a list of arrays; on the wire it is the list of
their specs plus the concatenation of their C-order little-endian bytes. The receiver
preallocates one buffer of the declared size and writes chunks into it as they arrive; the
arrays it returns are views of that buffer, so nothing is copied twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument, ResourceExhausted

CHUNK_BYTES = 1 << 20  # 1 MiB: far below gRPC's 4 MiB default message limit
MAX_TENSOR_SET_BYTES = 1 << 32  # 4 GiB: refuse larger declarations before allocating

SUPPORTED_DTYPES = tuple(
    np.dtype(t).newbyteorder("<")
    for t in ("float32", "float64", "float16", "int8", "int16", "int32", "int64",
              "uint8", "uint16", "uint32", "uint64", "bool")
)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype  # always little-endian
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))


def spec_of(name: str, array: np.ndarray) -> TensorSpec:
    return TensorSpec(name, _wire_dtype(array.dtype), tuple(int(d) for d in array.shape))


def _wire_dtype(dtype: np.dtype) -> np.dtype:
    wire = np.dtype(dtype).newbyteorder("<")
    if wire not in SUPPORTED_DTYPES:
        raise InvalidArgument(f"dtype {dtype} cannot travel; use one of "
                              f"{', '.join(d.name for d in SUPPORTED_DTYPES)}")
    return wire


def pack(names: Sequence[str], arrays: Sequence[np.ndarray]) -> tuple[list[TensorSpec], bytes]:
    """Specs and the payload: the arrays' little-endian C-order bytes, concatenated."""
    if len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} arrays")
    specs, parts = [], []
    for name, array in zip(names, arrays):
        array = np.asarray(array)
        spec = spec_of(name, array)
        specs.append(spec)
        parts.append(np.ascontiguousarray(array, dtype=spec.dtype).data)
    return specs, b"".join(parts)


def stack_updates(updates: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per-client updates (each a list of arrays, one per variable) as one [clients, ...]
    array per variable."""
    if not updates:
        raise ValueError("no updates to stack")
    return [np.stack([u[i] for u in updates]) for i in range(len(updates[0]))]


def iter_chunks(payload: bytes | memoryview, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, bytes]]:
    """(offset, bytes) slices of at most `chunk_bytes`; nothing for an empty payload."""
    view = memoryview(payload)
    for offset in range(0, len(view), chunk_bytes):
        yield offset, bytes(view[offset:offset + chunk_bytes])


class TensorSetAssembler:
    """Reassembles one tensor set from chunks into a buffer allocated once from the header."""

    def __init__(self, specs: Sequence[TensorSpec], total_bytes: int, *,
                 max_bytes: int = MAX_TENSOR_SET_BYTES):
        expected = sum(s.nbytes for s in specs)
        if total_bytes != expected:
            raise InvalidArgument(
                f"header declares {total_bytes} bytes but its tensor specs need {expected}")
        if total_bytes > max_bytes:
            raise ResourceExhausted(
                f"tensor set of {total_bytes} bytes exceeds this server's limit of {max_bytes}")
        self.specs = list(specs)
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
        return unpack(self.specs, self._buffer)


def unpack(specs: Sequence[TensorSpec], payload: bytes | bytearray | memoryview) -> list[np.ndarray]:
    """Arrays viewing `payload` (writable when it is a bytearray)."""
    arrays, offset = [], 0
    for spec in specs:
        count = spec.nbytes // spec.dtype.itemsize
        array = np.frombuffer(payload, dtype=spec.dtype, count=count, offset=offset)
        arrays.append(array.reshape(spec.shape))
        offset += spec.nbytes
    if offset != len(payload):
        raise InvalidArgument(f"payload holds {len(payload)} bytes, specs describe {offset}")
    return arrays
