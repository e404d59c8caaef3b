"""Update and weight encodings: their error bounds, int8's unbiased rounding, top-k's error
feedback, malformed encoded streams refused over gRPC, bytes counted, and FedAvg with int8
updates as accurate as with float32."""

import argparse

import numpy as np
import pytest

from fedstream.common.clients import CoordinatorClient
from fedstream.common.codecs import (
    BLOCK,
    Encoded,
    Encoding,
    TensorSetAssembler,
    decode,
    encode,
    encoded_size,
    topk_count,
    transmit,
)
from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import Task, UpdateKind, UpdateMeta, Weighting
from fedstream.common.tensors import TensorSpec
from fedstream.coordinator.config import FederationConfig
from fedstream.coordinator.federation import Federation
from fedstream.coordinator.server import SERVICE_NAME
from fedstream.coordinator.servicer import CoordinatorServicer
from fedstream.v1 import coordinator_pb2_grpc
from fedstream.worker.compression import UpdateEncoder

from conftest import tiny_model, weights_digest

F32 = np.dtype("<f4")


def roundtrip(encoding, arrays, **options):
    """What a receiver decodes from `arrays` sent in `encoding`."""
    return transmit(encoding, arrays, **options)[1]


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(700, 3)) * 10.0 ** rng.uniform(-3, 2, size=(700, 3))).astype(F32),
            rng.normal(size=(5,)).astype(F32), np.zeros((2, 2), F32)]


def specs_of(arrays):
    return [TensorSpec(str(i), F32, a.shape) for i, a in enumerate(arrays)]


@pytest.mark.parametrize("encoding, bits", [(Encoding.FLOAT16, 11), (Encoding.BFLOAT16, 8)])
def test_half_precision_keeps_the_relative_error_of_its_mantissa(encoding, bits):
    arrays = [a for a in tensors() if a.size]
    for a, d in zip(arrays, roundtrip(encoding, arrays)):
        normal = np.abs(a) > 1e-4  # float16's normal range starts at 6.1e-5
        assert np.all(np.abs(d - a)[normal] <= np.abs(a)[normal] * 2.0 ** -bits)
    assert len(encode(encoding, arrays)) == 2 * sum(a.size for a in arrays)


@pytest.mark.parametrize("encoding", [Encoding.INT8, Encoding.INT8_BLOCK])
def test_int8_errs_by_less_than_one_step_of_its_scale(encoding):
    arrays = tensors()
    decoded = roundtrip(encoding, arrays, rng=np.random.default_rng(1))
    for a, d in zip(arrays, decoded):
        flat, err = a.reshape(-1), np.abs(d - a).reshape(-1)
        block = flat.size if encoding is Encoding.INT8 else BLOCK
        for start in range(0, flat.size, max(1, block)):
            scale = np.abs(flat[start:start + block]).max() / 127
            assert np.all(err[start:start + block] <= scale * (1 + 1e-6) + 1e-12)
    assert len(encode(encoding, arrays, rng=np.random.default_rng(0))) == \
        encoded_size(encoding, specs_of(arrays))


def test_int8_stochastic_rounding_is_unbiased():
    """The mean of many encodings converges to the value: within 5 standard errors."""
    x = np.random.default_rng(3).normal(size=64).astype(F32)
    scale = np.abs(x).max() / 127
    draws = 4000
    rng = np.random.default_rng(4)
    total = sum(roundtrip(Encoding.INT8, [x], rng=rng)[0].astype(np.float64) for _ in range(draws))
    standard_error = scale * 0.5 / np.sqrt(draws)  # rounding error is within one step
    assert np.all(np.abs(total / draws - x) <= 5 * standard_error)
    nearest = np.round(x / scale) * scale  # deterministic rounding is biased
    assert np.abs(nearest - x).max() > 10 * standard_error


def test_topk_keeps_exactly_the_largest_values():
    a = np.array([[0.1, -5.0, 0.2], [3.0, 0.0, -0.3]], F32)
    (d,) = roundtrip(Encoding.TOPK, [a], topk_fraction=0.34)
    assert topk_count(6, 0.34) == 3
    np.testing.assert_array_equal(d, np.array([[0, -5.0, 0], [3.0, 0, -0.3]], F32))


def test_error_feedback_sends_what_plain_topk_never_would():
    """A constant update v, 1% kept per round. Plain top-k moves the largest coordinate only,
    forever. With error feedback everything is sent: what is still owed (T·v minus the sum
    sent) stays bounded by sum(v) instead of growing with T, so the average sent per round
    converges to v."""
    v = np.linspace(1.0, 0.5, 100, dtype=F32)
    task = Task("", "", 10, UpdateKind.GRADIENT, Weighting.UNIFORM, 1, False, 1.0, (), 1,
                update_encoding=Encoding.TOPK, topk_fraction=0.01)
    with_feedback = UpdateEncoder(task)
    sent, plain, owed = np.zeros_like(v), np.zeros_like(v), {}
    for r in range(1, 1001):
        sent += with_feedback.encode([v], (0, 1), r)[0][0]
        plain += roundtrip(Encoding.TOPK, [v], topk_fraction=0.01)[0]
        if r in (500, 1000):
            owed[r] = np.abs(r * v - sent).max()
    assert np.count_nonzero(plain) == 1  # stalls on coordinate 0
    assert np.count_nonzero(sent) == 100
    assert owed[1000] <= v.sum() * (1 + 1e-4) and owed[1000] <= owed[500] * (1 + 1e-3)
    assert np.abs(sent / 1000 - v).max() <= v.sum() / 1000 * (1 + 1e-4)


@pytest.mark.parametrize("encoding, corrupt, message", [
    (Encoding.INT8, lambda p: p[:-1], "payload of"),
    (Encoding.INT8, lambda p: np.array([np.nan], "<f4").tobytes() + p[4:], "scales must be"),
    (Encoding.INT8, lambda p: p[:4] + b"\x80" + p[5:], r"\[-127, 127\]"),
    (Encoding.TOPK, lambda p: p[:4] + (9).to_bytes(4, "little") + (2).to_bytes(4, "little")
     + p[12:], "ascending"),
    (Encoding.TOPK, lambda p: (10 ** 6).to_bytes(4, "little") + p[4:], "top-k count"),
    (Encoding.FLOAT16, lambda p: p + b"\0\0", "payload of"),
])
def test_malformed_encoded_payloads_are_refused(encoding, corrupt, message):
    arrays = [np.arange(12, dtype=F32).reshape(3, 4)]
    payload = encode(encoding, arrays, rng=np.random.default_rng(0), topk_fraction=0.25)
    with pytest.raises(InvalidArgument, match=message):
        decode(encoding, specs_of(arrays), corrupt(payload))


def test_a_header_declaring_the_wrong_encoded_size_is_refused_before_allocation():
    specs = [TensorSpec("w", F32, (1000,))]
    with pytest.raises(InvalidArgument, match="need 1004 in encoding int8"):
        TensorSetAssembler(specs, 4000, encoding=Encoding.INT8)
    with pytest.raises(InvalidArgument, match="outside what topk can take"):
        TensorSetAssembler(specs, 9000, encoding=Encoding.TOPK)
    with pytest.raises(InvalidArgument, match="float32 tensors only"):
        TensorSetAssembler([TensorSpec("x", np.dtype("u1"), (4,))], 8,
                           encoding=Encoding.FLOAT16)


@pytest.fixture
def int8_coordinator(serve):
    config = FederationConfig(rounds=3, units=1, server_optimizer="sgd", server_lr=0.1,
                              update_encoding="int8", weights_encoding="bfloat16")
    federation = Federation(config, tiny_model(), [10] * 4)
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [SERVICE_NAME])
    client = CoordinatorClient(f"127.0.0.1:{server.port}", connect_timeout_s=5)
    yield federation, client
    client.close()


def test_an_int8_update_over_grpc_is_decoded_and_bad_ones_change_nothing(int8_coordinator):
    federation, client = int8_coordinator
    wid, task, _ = client.join("w", "cpu")
    assert task.update_encoding is Encoding.INT8 and task.weights_encoding is Encoding.BFLOAT16
    weights = client.pull_weights(wid, 0)
    np.testing.assert_array_equal(weights.arrays[0], roundtrip(Encoding.BFLOAT16,
                                                               federation.server.model.weights[:1])[0])
    a = client.assignment(wid, 1.0)
    update = [np.full(s.shape, 0.5, F32) for s in task.update_specs]
    decoded, encoded = UpdateEncoder(task).encode(update, a.client_ids, a.round)
    meta = UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 4.0, 40)
    digest = weights_digest(federation.server.model)
    names = [s.name for s in task.update_specs]
    for bad, message in [(Encoded(Encoding.INT8, encoded.payload[:-3]), "need"),
                         (Encoded(Encoding.FLOAT16, encode(Encoding.FLOAT16, update)),
                          "this stream takes raw or int8")]:
        with pytest.raises(InvalidArgument, match=message):
            client.push(meta, decoded, names=names, encoded=bad)
    assert weights_digest(federation.server.model) == digest and federation.server.version == 1
    assert client.push(meta, decoded, encoded=encoded).accepted
    assert federation.server.version == 2


def test_raw_updates_stay_accepted_by_a_compressing_coordinator(int8_coordinator):
    federation, client = int8_coordinator
    wid, task, _ = client.join("w", "cpu")
    a = client.assignment(wid, 1.0)
    update = [np.zeros(s.shape, F32) for s in task.update_specs]
    assert client.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 4.0, 40),
                       update).accepted


def test_fedavg_with_int8_updates_is_as_accurate_and_its_bytes_are_counted():
    """MNIST 2NN FedAvg, 20 rounds, C=0.1: int8 updates within 0.5 points of float32, with a
    quarter of the bytes (a scale per tensor)."""
    from fedstream.cli import simulate
    results = {}
    for encoding in ("raw", "int8"):
        p = argparse.ArgumentParser()
        simulate.add_arguments(p)
        args = p.parse_args(["--model", "2nn", "--update", "delta", "--client-fraction", "0.1",
                             "--local-batch-size", "10", "--normalize", "--server-optimizer",
                             "sgd", "--server-lr", "1", "--weighting", "examples",
                             "--partitioner", "iid", "--rounds", "20", "--eval-every", "20",
                             "--update-encoding", encoding])
        results[encoding] = simulate.run(simulate.config_from_args(args))
    raw, int8 = results["raw"], results["int8"]
    assert abs(raw["test_acc"] - int8["test_acc"]) <= 0.005, (raw["test_acc"], int8["test_acc"])
    parameters = 199_210
    assert raw["push_bytes"] == 2 * 4 * parameters  # 2 units, each a float32 sum
    assert int8["push_bytes"] == 2 * (parameters + 4 * 6)  # a byte per value, 6 scales


def test_float16_saturates_instead_of_sending_an_infinity():
    (d,) = roundtrip(Encoding.FLOAT16, [np.array([1e6, -70000.0, 1.0], F32)])
    np.testing.assert_array_equal(d, np.array([65504, -65504, 1.0], F32))


def test_the_int8_example_in_protocol_md():
    class NoNoise:
        def random(self, shape, dtype):
            return np.zeros(shape, dtype)

    payload = encode(Encoding.INT8, [np.array([0.5, -1.0], F32)], rng=NoNoise())
    assert payload.hex(" ") == "04 02 01 3c 3f 81"


def test_the_weights_delta_chain_does_not_accumulate_rounding():
    """Small steps sent as float16 changes: the image stays within one float16 rounding of
    the last change from the weights, while rounding the weights themselves to float16
    errs by far more, and each image is the previous one plus the decoded change, exactly."""
    from fedstream.coordinator.weights_image import WeightsImage
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(50, 20)).astype(F32)]
    chain, rounded = WeightsImage(Encoding.FLOAT16, delta=True), WeightsImage(Encoding.FLOAT16,
                                                                               delta=False)
    chain.advance(1, w)
    rounded.advance(1, w)
    assert chain.delta_from(0) is None
    for version in range(2, 200):
        previous = chain.arrays
        step = (rng.normal(size=(50, 20)) * 1e-4).astype(F32)
        w = [w[0] + step]
        chain.advance(version, w)
        rounded.advance(version, w)
        change, encoded = chain.delta_from(version - 1)
        np.testing.assert_array_equal(chain.arrays[0], previous[0] + change[0])
        assert len(encoded.payload) == 2 * w[0].size
    chain_error = np.abs(chain.arrays[0] - w[0]).max()
    assert chain_error <= np.abs(step).max() * 2 ** -10  # one rounding of the last step
    assert np.abs(rounded.arrays[0] - w[0]).max() > 100 * chain_error


def test_weights_deltas_over_grpc_take_the_previous_version_to_the_current_exactly(serve):
    config = FederationConfig(rounds=3, units=1, server_optimizer="sgd", server_lr=0.1,
                              weights_encoding="bfloat16", weights_delta=True)
    federation = Federation(config, tiny_model(), [10] * 4)
    server = serve(lambda s: coordinator_pb2_grpc.add_CoordinatorServicer_to_server(
        CoordinatorServicer(federation), s), [SERVICE_NAME])
    client = CoordinatorClient(f"127.0.0.1:{server.port}", connect_timeout_s=5)
    wid, task, _ = client.join("w", "cpu")
    assert task.weights_delta and task.weights_encoding is Encoding.BFLOAT16
    first = client.pull_weights(wid, 0)  # nothing held: the whole image in float32
    assert first.delta_from == 0 and first.wire_bytes == sum(s.nbytes for s in first.specs)
    a = client.assignment(wid, 1.0)
    update = [np.full(s.shape, 0.01, F32) for s in task.update_specs]
    client.push(UpdateMeta(wid, a.round, a.version, a.unit, a.client_ids, 4.0, 40), update)
    second = client.pull_weights(wid, first.version)
    assert second.delta_from == first.version and second.arrays is None
    assert second.wire_bytes == sum(s.nbytes for s in second.specs) // 2
    held = [h + d for h, d in zip(first.arrays, second.delta)]
    for got, want in zip(held, federation.pull_weights(wid, 0).arrays):
        np.testing.assert_array_equal(got, want)
    assert client.pull_weights(wid, 0).delta_from == 0  # too old for a change: whole again
    client.close()


class _TopOfTheUnitInterval:
    """Draws u just below 1, the worst case of q = floor(x / scale + u)."""

    def random(self, shape, dtype=np.float64):
        return np.full(shape, np.nextafter(dtype(1), dtype(0)), dtype)


@pytest.mark.parametrize("encoding", [Encoding.INT8, Encoding.INT8_BLOCK])
def test_int8_clamps_to_127_where_float32_rounding_overshoots(encoding):
    """PROTOCOL.md: scale = max|x| / 127 in float32, x / scale in float32, q clamped to
    [-127, 127]. For max|x| = 2.7708886, x / scale is 127.00001 in float32, and with u near
    1 the floor would give 128, which a receiver refuses as it refuses -128."""
    x = np.array([2.7708886, -2.7708886, 0.5], np.float32)
    assert np.float32(x[0] / np.float32(x[0] / np.float32(127))) > 127
    payload = encode(encoding, [x], rng=_TopOfTheUnitInterval())
    q = np.frombuffer(payload[4:], np.int8)
    assert q.tolist()[:2] == [127, -127]
    (back,) = decode(encoding, [TensorSpec("x", np.dtype("<f4"), (3,))], payload)
    np.testing.assert_allclose(back[:2], x[:2], rtol=1e-6)
