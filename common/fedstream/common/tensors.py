"""Tensor sets as raw little-endian bytes: specs, packing, chunking and reassembly.

Pure numpy; no protobuf here. A tensor set is a list of arrays; on the wire it is the list of
their specs plus the concatenation of their C-order little-endian bytes (or an encoding of
them, `codecs`). The receiver preallocates one buffer of the declared size and writes chunks
into it as they arrive (`codecs.TensorSetAssembler`); raw arrays are views of that buffer, so
nothing is copied twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from fedstream.common.errors import InvalidArgument

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
