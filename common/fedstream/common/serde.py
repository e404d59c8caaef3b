"""Protobuf <-> plain Python for tensor sets: the one place that knows both sides.

Streams of tensor sets share one framing: a message whose `kind` oneof is `header` (holding
a TensorSetHeader under `.tensors`) followed by `chunk` messages. `frame` produces such a
stream; `read_one` consumes one and raises InvalidArgument on any breach.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from fedstream.common.codecs import Encoding, TensorSetAssembler
from fedstream.common.errors import InvalidArgument
from fedstream.common.protocol import (
    Action,
    Assignment,
    Batch,
    Confirmation,
    DatasetSummary,
    EncryptedShare,
    EvaluationResult,
    FederationStatus,
    KeysAdvert,
    KeyShares,
    LocalTraining,
    PartyKeys,
    PushResult,
    RevealedShare,
    SecureStep,
    SharesRevealed,
    SiteData,
    SurvivorsConfirmed,
    Task,
    UpdateKind,
    UpdateMeta,
    Weighting,
    WorkerStatus,
)
from fedstream.common.tensors import (
    CHUNK_BYTES,
    MAX_TENSOR_SET_BYTES,
    TensorSpec,
    iter_chunks,
    pack,
)
from fedstream.v1 import coordinator_pb2, datapool_pb2, tensor_pb2

_DTYPE_TO_PROTO = {
    np.dtype("<f4"): tensor_pb2.DTYPE_FLOAT32,
    np.dtype("<f8"): tensor_pb2.DTYPE_FLOAT64,
    np.dtype("<f2"): tensor_pb2.DTYPE_FLOAT16,
    np.dtype("i1"): tensor_pb2.DTYPE_INT8,
    np.dtype("<i2"): tensor_pb2.DTYPE_INT16,
    np.dtype("<i4"): tensor_pb2.DTYPE_INT32,
    np.dtype("<i8"): tensor_pb2.DTYPE_INT64,
    np.dtype("u1"): tensor_pb2.DTYPE_UINT8,
    np.dtype("<u2"): tensor_pb2.DTYPE_UINT16,
    np.dtype("<u4"): tensor_pb2.DTYPE_UINT32,
    np.dtype("<u8"): tensor_pb2.DTYPE_UINT64,
    np.dtype("bool"): tensor_pb2.DTYPE_BOOL,
}
_PROTO_TO_DTYPE = {code: dtype for dtype, code in _DTYPE_TO_PROTO.items()}

M = TypeVar("M")


def spec_to_proto(spec: TensorSpec) -> tensor_pb2.TensorSpec:
    return tensor_pb2.TensorSpec(name=spec.name, dtype=_DTYPE_TO_PROTO[spec.dtype],
                                 shape=list(spec.shape))


def spec_from_proto(msg: tensor_pb2.TensorSpec) -> TensorSpec:
    dtype = _PROTO_TO_DTYPE.get(msg.dtype)
    if dtype is None:
        raise InvalidArgument(
            f"tensor {msg.name!r} has unknown dtype code {msg.dtype}; see DType in "
            "fedstream/v1/tensor.proto for the codes this server reads")
    if any(d < 0 for d in msg.shape):
        raise InvalidArgument(f"tensor {msg.name!r} has a negative dimension: {list(msg.shape)}")
    return TensorSpec(msg.name, dtype, tuple(int(d) for d in msg.shape))


# each encoding and its wire value: ENCODING_<NAME> of tensor.proto's enum
_ENCODING = {e: tensor_pb2.Encoding.Value(f"ENCODING_{e.name}") for e in Encoding}


def header_to_proto(specs: Sequence[TensorSpec], total_bytes: int,
                    encoding: Encoding = Encoding.RAW) -> tensor_pb2.TensorSetHeader:
    return tensor_pb2.TensorSetHeader(tensors=[spec_to_proto(s) for s in specs],
                                      encoding=_ENCODING[encoding], total_bytes=total_bytes)


def encoding_from_proto(msg: tensor_pb2.TensorSetHeader) -> Encoding:
    return _lookup(_ENCODING, msg.encoding, "tensor encoding (see Encoding in "
                   "fedstream/v1/tensor.proto)")


def header_from_proto(msg: tensor_pb2.TensorSetHeader) -> tuple[list[TensorSpec], int]:
    encoding_from_proto(msg)
    return [spec_from_proto(t) for t in msg.tensors], int(msg.total_bytes)


def frame(header: M, payload: bytes, make: Callable[..., M],
          chunk_bytes: int = CHUNK_BYTES) -> Iterator[M]:
    """The header message (already built with `make(header=...)`), then one message per chunk."""
    yield header
    for offset, data in iter_chunks(payload, chunk_bytes):
        msg = make()
        # Assign in place: make(chunk=Chunk(data=...)) copies the 1 MiB twice more (1.2 ms).
        msg.chunk.offset = offset
        msg.chunk.data = data
        yield msg


def _assembler(header, max_bytes: int, accept: Sequence[Encoding]) -> TensorSetAssembler:
    specs, total = header_from_proto(header.tensors)
    encoding = encoding_from_proto(header.tensors)
    if encoding not in accept:
        raise InvalidArgument(f"tensors encoded {encoding.value}; this stream takes "
                              f"{' or '.join(e.value for e in accept)}")
    return TensorSetAssembler(specs, total, encoding=encoding, max_bytes=max_bytes)


def open_one(messages: Iterable, *, max_bytes: int = MAX_TENSOR_SET_BYTES,
             accept: Sequence[Encoding] = (Encoding.RAW,)
             ) -> tuple[object, Callable[[], list[np.ndarray]]]:
    """A stream holding exactly one tensor set in one of the `accept`ed encodings, opened:
    (its header message, a function that reads the rest and returns the decoded arrays).

    Nothing beyond the header is read until that function is called, so a header the caller
    refuses (unknown worker, wrong round) costs no buffer."""
    it = iter(messages)
    first = next(it, None)
    if first is None or first.WhichOneof("kind") != "header":
        raise InvalidArgument("stream must start with a header message before any chunk")
    header = first.header

    def read() -> list[np.ndarray]:
        assembler = _assembler(header, max_bytes, accept)
        for msg in it:
            if msg.WhichOneof("kind") != "chunk":
                raise InvalidArgument("a second header arrived in a one-tensor-set stream")
            assembler.add(msg.chunk.offset, msg.chunk.data)
        return assembler.finish()

    return header, read


def read_one(messages: Iterable, *, max_bytes: int = MAX_TENSOR_SET_BYTES,
             accept: Sequence[Encoding] = (Encoding.RAW,)) -> tuple[object, list[np.ndarray]]:
    """Consume a stream holding exactly one tensor set; return (header, decoded arrays)."""
    header, read = open_one(messages, max_bytes=max_bytes, accept=accept)
    return header, read()


_UPDATE_KIND = {UpdateKind.GRADIENT: coordinator_pb2.UPDATE_KIND_GRADIENT,
                UpdateKind.MODEL_DELTA: coordinator_pb2.UPDATE_KIND_MODEL_DELTA}
_WEIGHTING = {Weighting.UNIFORM: coordinator_pb2.CLIENT_WEIGHTING_UNIFORM,
              Weighting.EXAMPLES: coordinator_pb2.CLIENT_WEIGHTING_EXAMPLES}
_ACTION = {Action.TRAIN: coordinator_pb2.Assignment.TRAIN,
           Action.WAIT: coordinator_pb2.Assignment.WAIT,
           Action.STOP: coordinator_pb2.Assignment.STOP,
           Action.EVALUATE: coordinator_pb2.Assignment.EVALUATE,
           Action.SHARE_KEYS: coordinator_pb2.Assignment.SHARE_KEYS,
           Action.MASK: coordinator_pb2.Assignment.MASK,
           Action.UNMASK: coordinator_pb2.Assignment.UNMASK,
           Action.CONFIRM: coordinator_pb2.Assignment.CONFIRM}


def _lookup(table: dict, code, what: str):
    for value, c in table.items():
        if c == code:
            return value
    raise InvalidArgument(f"unknown {what} code {code}")


def task_to_proto(task: Task) -> coordinator_pb2.Task:
    return coordinator_pb2.Task(
        model_json=task.model_json, loss=task.loss, num_classes=task.num_classes,
        update_kind=_UPDATE_KIND[task.update_kind], weighting=_WEIGHTING[task.weighting],
        batch_size=task.batch_size, dropout=task.dropout, input_divisor=task.input_divisor,
        update_tensors=[spec_to_proto(s) for s in task.update_specs], rounds=task.rounds,
        per_client_updates=task.per_client, max_tensor_set_bytes=task.max_tensor_set_bytes,
        update_encoding=_ENCODING[task.update_encoding], topk_fraction=task.topk_fraction,
        weights_encoding=_ENCODING[task.weights_encoding], weights_delta=task.weights_delta,
        dp_clip=task.dp_clip, secure_aggregation=task.secure_aggregation,
        **({} if task.local is None else dict(
            local_epochs=task.local.epochs, local_batch_size=task.local.batch_size,
            client_optimizer=task.local.optimizer, client_lr=task.local.lr,
            client_momentum=task.local.momentum, prox_mu=task.local.prox_mu)))


def task_from_proto(msg: coordinator_pb2.Task) -> Task:
    return Task(
        model_json=msg.model_json, loss=msg.loss, num_classes=msg.num_classes,
        update_kind=_lookup(_UPDATE_KIND, msg.update_kind, "update kind"),
        weighting=_lookup(_WEIGHTING, msg.weighting, "client weighting"),
        batch_size=msg.batch_size, dropout=msg.dropout, input_divisor=msg.input_divisor,
        update_specs=tuple(spec_from_proto(s) for s in msg.update_tensors), rounds=msg.rounds,
        per_client=msg.per_client_updates, max_tensor_set_bytes=msg.max_tensor_set_bytes,
        update_encoding=_lookup(_ENCODING, msg.update_encoding, "update encoding"),
        topk_fraction=msg.topk_fraction,
        weights_encoding=_lookup(_ENCODING, msg.weights_encoding, "weights encoding"),
        weights_delta=msg.weights_delta, dp_clip=msg.dp_clip,
        secure_aggregation=msg.secure_aggregation,
        local=None if msg.update_kind != coordinator_pb2.UPDATE_KIND_MODEL_DELTA else
        LocalTraining(epochs=msg.local_epochs, batch_size=msg.local_batch_size,
                      optimizer=msg.client_optimizer, lr=msg.client_lr,
                      momentum=msg.client_momentum, prox_mu=msg.prox_mu))


def assignment_to_proto(a: Assignment) -> coordinator_pb2.Assignment:
    return coordinator_pb2.Assignment(action=_ACTION[a.action], round=a.round, version=a.version,
                                      unit=a.unit, client_ids=list(a.client_ids), step=a.step,
                                      dp_clip=a.dp_clip, local_epochs=list(a.local_epochs),
                                      secure=None if a.secure is None
                                      else _secure_step_to_proto(a.secure))


def assignment_from_proto(msg: coordinator_pb2.Assignment) -> Assignment:
    return Assignment(action=_lookup(_ACTION, msg.action, "assignment action"), round=msg.round,
                      version=msg.version, unit=msg.unit, client_ids=tuple(msg.client_ids),
                      step=msg.step, dp_clip=msg.dp_clip,
                      local_epochs=tuple(msg.local_epochs),
                      secure=_secure_step_from_proto(msg.secure) if msg.HasField("secure")
                      else None)


def _secure_step_to_proto(s: SecureStep) -> coordinator_pb2.SecureStep:
    return coordinator_pb2.SecureStep(
        party=s.party, threshold=s.threshold,
        roster=[coordinator_pb2.PartyKeys(party=k.party, share_key=k.share_key,
                                          mask_key=k.mask_key, site=k.site,
                                          signature=k.signature) for k in s.roster],
        sharers=list(s.sharers), inbox=shares_to_proto(s.inbox), range=s.range, bits=s.bits,
        noise_std=s.noise_std, survivors=list(s.survivors), confirmed=list(s.confirmed),
        confirmations=[coordinator_pb2.Confirmation(party=c.party, signature=c.signature)
                       for c in s.confirmations])


def _secure_step_from_proto(msg: coordinator_pb2.SecureStep) -> SecureStep:
    return SecureStep(
        party=msg.party, threshold=msg.threshold,
        roster=tuple(PartyKeys(k.party, k.share_key, k.mask_key, k.site, k.signature)
                     for k in msg.roster),
        sharers=tuple(msg.sharers), inbox=shares_from_proto(msg.inbox), range=msg.range,
        bits=msg.bits, noise_std=msg.noise_std, survivors=tuple(msg.survivors),
        confirmed=tuple(msg.confirmed),
        confirmations=tuple(Confirmation(c.party, c.signature) for c in msg.confirmations))


def shares_to_proto(shares: Sequence[EncryptedShare]) -> list[coordinator_pb2.EncryptedShare]:
    return [coordinator_pb2.EncryptedShare(party=e.party, ciphertext=e.ciphertext)
            for e in shares]


def shares_from_proto(msgs) -> tuple[EncryptedShare, ...]:
    return tuple(EncryptedShare(m.party, m.ciphertext) for m in msgs)


def revealed_to_proto(shares: Sequence[RevealedShare]) -> list[coordinator_pb2.RevealedShare]:
    return [coordinator_pb2.RevealedShare(party=r.party, self_mask_seed=r.self_mask_seed,
                                          mask_key=r.mask_key) for r in shares]


def revealed_from_proto(msgs) -> tuple[RevealedShare, ...]:
    return tuple(RevealedShare(m.party, m.self_mask_seed, m.mask_key) for m in msgs)


def keys_advert_from_proto(msg) -> KeysAdvert:
    return KeysAdvert(msg.worker_id, msg.round, msg.unit,
                      PartyKeys(msg.unit + 1, msg.share_key, msg.mask_key, msg.site,
                                msg.signature))


def key_shares_from_proto(msg) -> KeyShares:
    return KeyShares(msg.worker_id, msg.round, msg.unit, shares_from_proto(msg.shares))


def confirmation_from_proto(msg) -> SurvivorsConfirmed:
    return SurvivorsConfirmed(msg.worker_id, msg.round, msg.unit, msg.signature)


def reveal_from_proto(msg) -> SharesRevealed:
    return SharesRevealed(msg.worker_id, msg.round, msg.unit, revealed_from_proto(msg.shares))


# each party message: the RPC that carries it, and its request
PARTY_REQUESTS = {
    KeysAdvert: ("AdvertiseKeys", lambda m: coordinator_pb2.AdvertiseKeysRequest(
        worker_id=m.worker_id, round=m.round, unit=m.unit, share_key=m.keys.share_key,
        mask_key=m.keys.mask_key, site=m.keys.site, signature=m.keys.signature)),
    KeyShares: ("ShareKeys", lambda m: coordinator_pb2.ShareKeysRequest(
        worker_id=m.worker_id, round=m.round, unit=m.unit, shares=shares_to_proto(m.shares))),
    SurvivorsConfirmed: ("ConfirmSurvivors", lambda m: coordinator_pb2.ConfirmSurvivorsRequest(
        worker_id=m.worker_id, round=m.round, unit=m.unit, signature=m.signature)),
    SharesRevealed: ("RevealShares", lambda m: coordinator_pb2.RevealSharesRequest(
        worker_id=m.worker_id, round=m.round, unit=m.unit,
        shares=revealed_to_proto(m.shares))),
}


def update_meta_to_proto(meta: UpdateMeta, specs: Sequence[TensorSpec], total_bytes: int,
                         encoding: Encoding = Encoding.RAW) -> coordinator_pb2.UpdateHeader:
    return coordinator_pb2.UpdateHeader(
        worker_id=meta.worker_id, round=meta.round, base_version=meta.base_version,
        unit=meta.unit, client_ids=list(meta.client_ids), weight=meta.weight,
        num_examples=meta.num_examples, metrics=meta.metrics,
        unclipped_clients=meta.unclipped_clients,
        tensors=header_to_proto(specs, total_bytes, encoding))


def update_meta_from_proto(msg: coordinator_pb2.UpdateHeader) -> UpdateMeta:
    return UpdateMeta(worker_id=msg.worker_id, round=msg.round, base_version=msg.base_version,
                      unit=msg.unit, client_ids=tuple(msg.client_ids), weight=msg.weight,
                      num_examples=msg.num_examples, metrics=dict(msg.metrics),
                      unclipped_clients=msg.unclipped_clients)


def push_result_to_proto(r: PushResult) -> coordinator_pb2.PushUpdateReply:
    return coordinator_pb2.PushUpdateReply(accepted=r.accepted, duplicate=r.duplicate,
                                           round=r.round, version=r.version)


def push_result_from_proto(msg: coordinator_pb2.PushUpdateReply) -> PushResult:
    return PushResult(accepted=msg.accepted, duplicate=msg.duplicate, round=msg.round,
                      version=msg.version)


def status_to_proto(s: FederationStatus) -> coordinator_pb2.Status:
    return coordinator_pb2.Status(
        phase=s.phase, round=s.round, version=s.version, total_rounds=s.total_rounds,
        workers=[coordinator_pb2.WorkerInfo(
            worker_id=w.worker_id, worker_name=w.worker_name, device=w.device,
            last_seen_s_ago=w.last_seen_s_ago, updates_accepted=w.updates_accepted,
            site=w.site) for w in s.workers],
        last_metrics={k: float(v) for k, v in s.last_metrics.items()})


def status_from_proto(msg: coordinator_pb2.Status) -> FederationStatus:
    return FederationStatus(
        phase=msg.phase, round=msg.round, version=msg.version, total_rounds=msg.total_rounds,
        workers=tuple(WorkerStatus(worker_id=w.worker_id, worker_name=w.worker_name,
                                   device=w.device, last_seen_s_ago=w.last_seen_s_ago,
                                   updates_accepted=w.updates_accepted, site=w.site)
                       for w in msg.workers),
        last_metrics=dict(msg.last_metrics))


def dataset_info_to_proto(s: DatasetSummary, *, max_batch_size: int,
                          max_clients_per_request: int) -> datapool_pb2.DatasetInfo:
    """The summary and the limits of the pool that serves it."""
    return datapool_pb2.DatasetInfo(
        dataset=s.dataset, partitioner=s.partitioner, seed=s.seed,
        num_clients=s.num_clients, client_sizes=list(s.client_sizes),
        example=spec_to_proto(TensorSpec("x", s.example_dtype, s.example_shape)),
        num_classes=s.num_classes, num_test=s.num_test, max_batch_size=max_batch_size,
        max_clients_per_request=max_clients_per_request,
        label_counts=[v for row in s.label_histograms for v in row], site=s.site)


def dataset_summary_from_proto(msg: datapool_pb2.DatasetInfo) -> DatasetSummary:
    example = spec_from_proto(msg.example)
    return DatasetSummary(
        dataset=msg.dataset, partitioner=msg.partitioner, seed=msg.seed,
        client_sizes=tuple(msg.client_sizes), example_shape=example.shape,
        example_dtype=example.dtype, num_classes=msg.num_classes, num_test=msg.num_test,
        label_histograms=_histograms(msg.label_counts, len(msg.client_sizes), msg.num_classes),
        site=msg.site)


def _histograms(counts: Sequence[int], n_clients: int, k: int) -> tuple[tuple[int, ...], ...]:
    """Row-major clients x classes counts; empty when none were sent."""
    if not counts:
        return ()
    if len(counts) != n_clients * k:
        raise InvalidArgument(f"{len(counts)} label counts for {n_clients} clients x {k} "
                              "classes: send clients x classes counts, or none")
    return tuple(tuple(counts[c * k:(c + 1) * k]) for c in range(n_clients))


def site_data_to_proto(d: SiteData) -> coordinator_pb2.SiteData:
    return coordinator_pb2.SiteData(
        client_sizes=list(d.client_sizes),
        example=spec_to_proto(TensorSpec("x", np.dtype(d.example_dtype), d.example_shape)),
        num_classes=d.num_classes, num_test=d.num_test,
        label_counts=[v for row in d.label_histograms for v in row])


def site_data_from_proto(msg: coordinator_pb2.SiteData) -> SiteData:
    example = spec_from_proto(msg.example)
    return SiteData(tuple(msg.client_sizes), example.shape, example.dtype, msg.num_classes,
                    msg.num_test, _histograms(msg.label_counts, len(msg.client_sizes),
                                              msg.num_classes))


def evaluation_to_proto(r: EvaluationResult) -> coordinator_pb2.EvaluationReport:
    return coordinator_pb2.EvaluationReport(
        worker_id=r.worker_id, version=r.version, num_examples=r.num_examples,
        metrics={"loss": r.loss, "accuracy": r.accuracy})


def evaluation_from_proto(msg: coordinator_pb2.EvaluationReport) -> EvaluationResult:
    missing = {"loss", "accuracy"} - set(msg.metrics)
    if missing:
        raise InvalidArgument(f"an evaluation report needs the metrics 'loss' and 'accuracy'; "
                              f"missing {sorted(missing)}")
    return EvaluationResult(msg.worker_id, msg.version, msg.num_examples,
                            msg.metrics["loss"], msg.metrics["accuracy"])


def batches_to_stream(batches: Sequence[Batch], step: int) -> Iterator[datapool_pb2.BatchMessage]:
    """One header naming each client's size, then the chunks of x and y, each the
    concatenation of the clients' arrays in order (one copy, into the payload)."""
    return _examples_stream([b.client_id for b in batches], [len(b.y) for b in batches], step,
                            _concat([b.x for b in batches]), _concat([b.y for b in batches]))


def test_set_to_stream(x: np.ndarray, y: np.ndarray) -> Iterator[datapool_pb2.BatchMessage]:
    """The test set in the batch framing: no client ids, one size."""
    return _examples_stream([], [len(y)], 0, x, y)


def _examples_stream(client_ids, sizes, step, x, y) -> Iterator[datapool_pb2.BatchMessage]:
    specs, payload = pack(["x", "y"], [x, y])
    header = datapool_pb2.BatchMessage(header=datapool_pb2.BatchHeader(
        client_ids=client_ids, sizes=sizes, step=step,
        tensors=header_to_proto(specs, len(payload))))
    return frame(header, payload, datapool_pb2.BatchMessage)


def batches_from_stream(messages: Iterable, client_ids: Sequence[int]) -> list[Batch]:
    """The batches of a StreamBatches answer, checked against the clients asked for."""
    header, (x, y) = read_one(messages)
    if list(header.client_ids) != list(client_ids) or sum(header.sizes) != len(y):
        raise InvalidArgument("the data pool answered for other clients or sizes than asked")
    ends = np.cumsum(header.sizes)
    return [Batch(c, header.step, x[e - n:e], y[e - n:e])
            for c, n, e in zip(header.client_ids, header.sizes, ends)]


def _concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
