import numpy as np
import pytest

from fedstream.common import serde
from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import Action, Assignment, PushResult, Task, UpdateKind, UpdateMeta, Weighting
from fedstream.common.tensors import SUPPORTED_DTYPES, TensorSpec, pack
from fedstream.v1 import coordinator_pb2, datapool_pb2, tensor_pb2


@pytest.mark.parametrize("dtype", SUPPORTED_DTYPES, ids=lambda d: d.name)
def test_spec_roundtrip(dtype):
    spec = TensorSpec("layer/kernel", dtype, (3, 0, 2))
    assert serde.spec_from_proto(serde.spec_to_proto(spec)) == spec


def test_unknown_dtype_code_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="unknown dtype code 99"):
        serde.spec_from_proto(tensor_pb2.TensorSpec(name="x", dtype=99, shape=[1]))
    with pytest.raises(InvalidArgument, match="unknown dtype code 0"):
        serde.spec_from_proto(tensor_pb2.TensorSpec(name="x", shape=[1]))


def test_negative_dimension_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="negative"):
        serde.spec_from_proto(tensor_pb2.TensorSpec(name="x", dtype=1, shape=[-1]))


def test_unknown_encoding_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="encoding"):
        serde.header_from_proto(tensor_pb2.TensorSetHeader(encoding=7))


def test_task_with_local_training_roundtrip():
    from fedstream.common.protocol import LocalTraining
    task = Task(model_json="{}", loss="categorical_crossentropy", num_classes=10,
                update_kind=UpdateKind.MODEL_DELTA, weighting=Weighting.EXAMPLES, batch_size=600,
                dropout=False, input_divisor=255.0, update_specs=(), rounds=3, per_client=True,
                local=LocalTraining(epochs=5, batch_size=0, lr=0.05, momentum=0.9, prox_mu=0.01))
    assert serde.task_from_proto(serde.task_to_proto(task)) == task


def test_task_roundtrip():
    task = Task(model_json="{}", loss="categorical_crossentropy", num_classes=10,
                update_kind=UpdateKind.GRADIENT, weighting=Weighting.EXAMPLES, batch_size=32,
                dropout=True, input_divisor=255.0,
                update_specs=(TensorSpec("k", np.dtype("<f4"), (2, 3)),), rounds=7)
    assert serde.task_from_proto(serde.task_to_proto(task)) == task


@pytest.mark.parametrize("action", list(Action))
def test_assignment_roundtrip(action):
    a = Assignment(action, round=3, version=4, unit=1, client_ids=(5, 6), step=2)
    assert serde.assignment_from_proto(serde.assignment_to_proto(a)) == a


def test_update_meta_and_push_result_roundtrip():
    meta = UpdateMeta("w1", 2, 3, 1, (4, 5), 2.0, 64, {"loss": 0.5})
    specs = [TensorSpec("k", np.dtype("<f4"), (2,))]
    msg = serde.update_meta_to_proto(meta, specs, 8)
    assert serde.update_meta_from_proto(msg) == meta
    assert serde.header_from_proto(msg.tensors) == (specs, 8)
    r = PushResult(True, False, 3, 4)
    assert serde.push_result_from_proto(serde.push_result_to_proto(r)) == r


def _batch_stream(arrays, chunk_bytes=10):
    specs, payload = pack(["x", "y"], arrays)
    header = datapool_pb2.BatchMessage(header=datapool_pb2.BatchHeader(
        client_ids=[4], sizes=[len(arrays[1])], tensors=serde.header_to_proto(specs, len(payload))))
    yield from serde.frame(header, payload, datapool_pb2.BatchMessage, chunk_bytes)


def test_framed_stream_roundtrip_in_small_chunks():
    arrays = [np.arange(60, dtype=np.uint8).reshape(2, 30), np.array([7, 8], np.uint8)]
    messages = list(_batch_stream(arrays))
    assert len(messages) == 1 + 7  # header, then 62 bytes in chunks of 10
    header, got = serde.read_one(messages)
    assert list(header.client_ids) == [4]
    for a, b in zip(got, arrays):
        np.testing.assert_array_equal(a, b)


def test_read_one_refuses_chunk_first_and_second_header():
    messages = list(_batch_stream([np.zeros(30, np.uint8), np.zeros(1, np.uint8)]))
    with pytest.raises(InvalidArgument, match="start with a header"):
        serde.read_one(messages[1:])
    with pytest.raises(InvalidArgument, match="second header"):
        serde.read_one(messages + messages)
    with pytest.raises(InvalidArgument, match="start with a header"):
        serde.read_one([])


def test_open_one_reads_no_chunk_before_the_header_is_accepted():
    seen = []

    def stream():
        yield coordinator_pb2.UpdateMessage(header=coordinator_pb2.UpdateHeader(worker_id="x"))
        seen.append("chunk read")
        yield coordinator_pb2.UpdateMessage(chunk=tensor_pb2.Chunk())

    header, read = serde.open_one(stream())
    assert header.worker_id == "x" and seen == []  # a refused header stops here
    assert read() == [] and seen == ["chunk read"]
