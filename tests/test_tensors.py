import numpy as np
import pytest

from fedstream.common.codecs import TensorSetAssembler
from fedstream.common.errors import InvalidArgument, ResourceExhausted
from fedstream.common.tensors import (
    CHUNK_BYTES,
    SUPPORTED_DTYPES,
    TensorSpec,
    iter_chunks,
    pack,
    unpack,
)


def roundtrip(arrays, chunk_bytes=CHUNK_BYTES):
    specs, payload = pack([f"t{i}" for i in range(len(arrays))], arrays)
    assembler = TensorSetAssembler(specs, len(payload))
    for offset, data in iter_chunks(payload, chunk_bytes):
        assembler.add(offset, data)
    return specs, assembler.finish()


@pytest.mark.parametrize("dtype", [d.name for d in SUPPORTED_DTYPES])
def test_every_dtype_roundtrips_bit_exactly(dtype):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((3, 5)) * 100).astype(dtype)
    specs, (b,) = roundtrip([a], chunk_bytes=7)
    assert b.dtype == a.dtype and b.shape == a.shape
    assert a.tobytes() == b.tobytes()


def test_empty_scalar_and_zero_size_tensors():
    arrays = [np.float32(3.5), np.zeros((0, 4), np.int64), np.array([], np.uint8),
              np.arange(4, dtype=np.int16)]
    specs, out = roundtrip(arrays)
    assert [s.shape for s in specs] == [(), (0, 4), (0,), (4,)]
    for a, b in zip(arrays, out):
        np.testing.assert_array_equal(np.asarray(a), b)


def test_empty_tensor_set():
    specs, out = roundtrip([])
    assert specs == [] and out == []


def test_large_tensor_travels_in_bounded_chunks():
    a = np.random.default_rng(1).standard_normal(900_000).astype(np.float32)  # 3.6 MB
    specs, payload = pack(["w"], [a])
    chunks = list(iter_chunks(payload))
    assert len(chunks) == 4 and max(len(c) for _, c in chunks) == CHUNK_BYTES
    _, (b,) = roundtrip([a])
    np.testing.assert_array_equal(a, b)


def test_big_endian_and_non_contiguous_inputs_go_out_little_endian_c_order():
    a = np.arange(12, dtype=">i4").reshape(3, 4).T  # big-endian, Fortran-ordered view
    specs, payload = pack(["a"], [a])
    assert specs[0].dtype == np.dtype("<i4")
    assert payload == np.ascontiguousarray(a, dtype="<i4").tobytes()


def test_reassembled_arrays_are_writable_views_of_one_buffer():
    _, (a, b) = roundtrip([np.ones(3, np.float32), np.ones(2, np.float64)])
    a[0] = 5
    assert a.base is not None and a.flags.writeable


def test_unsupported_dtype_is_refused():
    with pytest.raises(InvalidArgument, match="cannot travel"):
        pack(["c"], [np.zeros(2, np.complex64)])


def test_header_size_must_match_specs():
    spec = TensorSpec("w", np.dtype("<f4"), (2, 2))
    with pytest.raises(InvalidArgument, match="specs need 16"):
        TensorSetAssembler([spec], 15)


def test_oversized_declaration_is_refused_before_allocation():
    spec = TensorSpec("w", np.dtype("<f4"), (1 << 20,))
    with pytest.raises(ResourceExhausted):
        TensorSetAssembler([spec], 4 << 20, max_bytes=1 << 20)


@pytest.mark.parametrize("offsets, error", [
    ([0, 0], "offset 0 but 4"),  # overlap
    ([0, 8], "offset 8 but 4"),  # gap
])
def test_chunks_out_of_order_are_refused(offsets, error):
    assembler = TensorSetAssembler([TensorSpec("w", np.dtype("<f4"), (4,))], 16)
    assembler.add(offsets[0], b"\0" * 4)
    with pytest.raises(InvalidArgument, match=error):
        assembler.add(offsets[1], b"\0" * 4)


def test_chunk_past_declared_size_is_refused():
    assembler = TensorSetAssembler([TensorSpec("w", np.dtype("<f4"), (1,))], 4)
    with pytest.raises(InvalidArgument, match="past the 4 bytes"):
        assembler.add(0, b"\0" * 8)


def test_a_chunk_over_1_mib_is_refused():
    n = (1 << 20) // 4 + 1  # one float32 more than 1 MiB
    assembler = TensorSetAssembler([TensorSpec("w", np.dtype("<f4"), (n,))], 4 * n)
    with pytest.raises(InvalidArgument, match="at most 1048576 bytes"):
        assembler.add(0, b"\0" * 4 * n)
    assembler.add(0, b"\0" * (1 << 20))  # exactly 1 MiB is fine
    assembler.add(1 << 20, b"\0" * 4)
    assert len(assembler.finish()[0]) == n


def test_truncated_stream_is_refused():
    assembler = TensorSetAssembler([TensorSpec("w", np.dtype("<f4"), (2,))], 8)
    assembler.add(0, b"\0" * 4)
    with pytest.raises(InvalidArgument, match="truncated"):
        assembler.finish()


def test_unpack_checks_payload_length():
    with pytest.raises(InvalidArgument):
        unpack([TensorSpec("w", np.dtype("<f4"), (1,))], b"\0" * 8)
