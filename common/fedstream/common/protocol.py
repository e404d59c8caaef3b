"""The protocol's domain types: what crosses between coordinator, worker and data pool,
as plain dataclasses and numpy arrays. `serde` converts them to and from protobuf."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence

import numpy as np

from fedstream.common.codecs import Encoded, Encoding
from fedstream.common.tensors import MAX_TENSOR_SET_BYTES, TensorSpec


class UpdateKind(str, enum.Enum):
    GRADIENT = "gradient"  # FedSGD: gradient of the mean loss over one client batch
    MODEL_DELTA = "delta"  # FedAvg family: w_start - w_after local training


class Weighting(str, enum.Enum):
    UNIFORM = "uniform"  # every client weighs 1: the reference's plain mean of gradients
    EXAMPLES = "examples"  # every client weighs its number of examples


class Action(enum.Enum):
    TRAIN = "train"
    WAIT = "wait"
    STOP = "stop"
    EVALUATE = "evaluate"  # evaluate `version` on the site's held-out examples
    SHARE_KEYS = "share_keys"  # secure aggregation: share the party's secrets
    MASK = "mask"  # secure aggregation: push the party's masked input
    UNMASK = "unmask"  # secure aggregation: reveal shares for the survivors
    CONFIRM = "confirm"  # secure aggregation: sign the survivors the party saw


def input_divisor(normalize: bool) -> float:
    """What examples are divided by before the model sees them: 255 to scale pixels to
    [0, 1], else 1 (the reference feeds raw 0..255)."""
    return 255.0 if normalize else 1.0


def steps_per_pass(client_size: int, batch_size: int) -> int:
    """Batches of `batch_size` in one pass over a client's data (the last may be short)."""
    return max(1, math.ceil(client_size / batch_size))


@dataclass(frozen=True)
class LocalTraining:
    """How a client trains before its delta is pushed (FedAvg, FedProx)."""
    epochs: int = 1
    batch_size: int = 10  # 0: the client's whole data as one batch
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    prox_mu: float = 0.0  # FedProx's proximal term; 0 is FedAvg


@dataclass(frozen=True)
class Task:
    """Everything a worker needs to compute updates, so it needs no model code."""
    model_json: str
    loss: str
    num_classes: int
    update_kind: UpdateKind
    weighting: Weighting
    batch_size: int
    dropout: bool  # run the model with training=True; the reference never does
    input_divisor: float  # examples become float32(x) / input_divisor
    update_specs: tuple[TensorSpec, ...]
    rounds: int
    per_client: bool = False  # push every client's gradient, stacked, for a robust aggregator
    local: LocalTraining | None = None  # MODEL_DELTA: how each client trains locally
    max_tensor_set_bytes: int = MAX_TENSOR_SET_BYTES  # the largest update accepted
    update_encoding: Encoding = Encoding.RAW  # PushUpdate takes this (and raw)
    topk_fraction: float = 0.01  # top-k: the share of each tensor's values kept
    weights_encoding: Encoding = Encoding.RAW  # what PullWeights sends
    weights_delta: bool = False  # PullWeights sends the change from the version held
    dp_clip: float = 0.0  # > 0: clip every client's update to this L2 norm (client-level DP)
    secure_aggregation: bool = False  # updates travel masked; the coordinator sees their sum


@dataclass(frozen=True)
class PartyKeys:
    """A secure-aggregation party's two X25519 public keys (raw 32 bytes each), and the
    Ed25519 signature of the site that vouches for them (`identity`; empty: unsigned)."""
    party: int
    share_key: bytes
    mask_key: bytes
    site: str = ""
    signature: bytes = b""


@dataclass(frozen=True)
class Confirmation:
    """A party's signature over the round's survivors (empty without a site identity)."""
    party: int
    signature: bytes


@dataclass(frozen=True)
class EncryptedShare:
    party: int  # the recipient when a party sends it; the sender in a party's inbox
    ciphertext: bytes


@dataclass(frozen=True)
class RevealedShare:
    """One party's share of another's secret: its self-mask seed (the owner survived) or
    its mask key (the owner dropped), never both."""
    party: int  # the owner
    self_mask_seed: bytes = b""
    mask_key: bytes = b""


@dataclass(frozen=True)
class PartyMessage:
    """A secure-aggregation party's message to its round: from the worker that holds unit
    `unit` of round `round`. One subclass per step of the protocol (Bonawitz et al. 2017)."""
    worker_id: str
    round: int
    unit: int


@dataclass(frozen=True)
class KeysAdvert(PartyMessage):
    keys: PartyKeys


@dataclass(frozen=True)
class KeyShares(PartyMessage):
    shares: Sequence[EncryptedShare]


@dataclass(frozen=True)
class SurvivorsConfirmed(PartyMessage):
    signature: bytes


@dataclass(frozen=True)
class SharesRevealed(PartyMessage):
    shares: Sequence[RevealedShare]


@dataclass(frozen=True)
class SecureStep:
    """What a secure-aggregation party needs for one step of its round (party = unit + 1)."""
    party: int
    threshold: int = 0
    roster: tuple[PartyKeys, ...] = ()  # SHARE_KEYS
    sharers: tuple[int, ...] = ()  # MASK
    inbox: tuple[EncryptedShare, ...] = ()  # MASK
    range: float = 0.0  # MASK: fixed point
    bits: int = 0
    noise_std: float = 0.0  # MASK: distributed DP
    survivors: tuple[int, ...] = ()  # UNMASK (its neighbourhood's); CONFIRM (every one)
    confirmed: tuple[int, ...] = ()  # UNMASK: the survivors the confirmations sign
    confirmations: tuple["Confirmation", ...] = ()  # UNMASK


@dataclass(frozen=True)
class Assignment:
    action: Action
    round: int = 0
    version: int = 0
    unit: int = 0
    client_ids: tuple[int, ...] = ()
    step: int = 0
    dp_clip: float = 0.0  # client-level DP: this round's clip; 0: the task's
    secure: SecureStep | None = None  # SHARE_KEYS, MASK, UNMASK
    local_epochs: tuple[int, ...] = ()  # partial work: each client's epochs; (): the task's


@dataclass(frozen=True)
class UpdateMeta:
    """The header of one pushed update; its tensors are the weighted sum over its clients."""
    worker_id: str
    round: int
    base_version: int
    unit: int
    client_ids: tuple[int, ...]
    weight: float
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    unclipped_clients: int = 0  # client-level DP: clients whose update was within the clip


@dataclass(frozen=True)
class PushResult:
    accepted: bool
    duplicate: bool
    round: int
    version: int


@dataclass(frozen=True)
class Weights:
    """A version of the center model as workers hold it: `arrays`, None when the caller
    already holds it; or, for a caller holding `delta_from`, the change `delta` to add."""
    version: int
    specs: tuple[TensorSpec, ...]
    arrays: list[np.ndarray] | None
    delta_from: int = 0
    delta: list[np.ndarray] | None = None
    encoded_delta: Encoded | None = None  # the change as the wire carries it
    wire_bytes: int = 0  # what the pull moves: the change, or the whole in its encoding


@dataclass(frozen=True)
class Batch:
    client_id: int
    step: int
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class SiteData:
    """What a data site publishes about its data through its workers: never an example."""
    client_sizes: tuple[int, ...]
    example_shape: tuple[int, ...]
    example_dtype: np.dtype
    num_classes: int
    num_test: int = 0
    label_histograms: tuple[tuple[int, ...], ...] = ()  # only if the site publishes them


class Joined(NamedTuple):
    """A worker's registration: its id, the task, and the federation-wide id of its site's
    client 0 (sites' clients are numbered locally; the federation's ids are unique)."""
    worker_id: str
    task: Task
    client_id_base: int = 0


@dataclass(frozen=True)
class EvaluationResult:
    """A site's federated evaluation of one version on its own held-out examples."""
    worker_id: str
    version: int
    num_examples: int
    loss: float
    accuracy: float


@dataclass(frozen=True)
class DatasetSummary:
    dataset: str
    partitioner: str
    seed: int
    client_sizes: tuple[int, ...]
    example_shape: tuple[int, ...]
    example_dtype: np.dtype
    num_classes: int
    num_test: int
    label_histograms: tuple[tuple[int, ...], ...] = ()  # [client][class] example counts
    site: str = ""  # the data site the pool belongs to

    def site_data(self, *, publish_labels: bool) -> SiteData:
        """What the site's workers publish: sizes and data spec, label histograms on request."""
        return SiteData(self.client_sizes, self.example_shape, self.example_dtype,
                        self.num_classes, self.num_test,
                        self.label_histograms if publish_labels else ())

    def describe(self, limit: int = 10) -> str:
        """Sizes and label histograms, for people: the first `limit` clients in full."""
        sizes = np.array(self.client_sizes)
        lines = [f"{self.dataset}: {self.num_clients} clients ({self.partitioner}, seed "
                 f"{self.seed}); examples per client min {sizes.min()}, median "
                 f"{int(np.median(sizes))}, max {sizes.max()}"]
        if self.label_histograms:
            classes = [sum(1 for v in h if v) for h in self.label_histograms]
            lines.append(f"classes per client: min {min(classes)}, max {max(classes)}")
            for c, h in enumerate(self.label_histograms[:limit]):
                lines.append(f"  client {c:>5}: {self.client_sizes[c]:>6} examples, labels "
                             f"{list(h)}")
        return "\n".join(lines)

    @property
    def num_clients(self) -> int:
        return len(self.client_sizes)


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    worker_name: str
    device: str
    last_seen_s_ago: float
    updates_accepted: int
    site: str = ""


@dataclass(frozen=True)
class FederationStatus:
    """Where a coordinator stands: what `GetStatus` and `fedstream status` report."""
    phase: str  # waiting_for_workers, training, done
    round: int
    version: int
    total_rounds: int
    workers: tuple[WorkerStatus, ...]
    last_metrics: dict[str, float]


class CoordinatorPort(Protocol):
    """What a worker calls on the coordinator: the gRPC client and the in-process
    federation both provide it, so one worker loop serves both run modes."""

    def join(self, worker_name: str, device: str, site: str = "",
             site_data: SiteData | None = None) -> Joined: ...

    def assignment(self, worker_id: str, wait_s: float) -> Assignment: ...

    def pull_weights(self, worker_id: str, have_version: int) -> Weights: ...

    def push(self, meta: UpdateMeta, arrays: Sequence[np.ndarray],
             encoded: Encoded | None = None) -> PushResult:
        """An update; under secure aggregation, the party's masked input (one tensor)."""

    def deliver(self, message: PartyMessage) -> None:
        """A secure-aggregation party's key advert, key shares, confirmation or reveal."""

    def leave(self, worker_id: str) -> None: ...

    def report_evaluation(self, result: EvaluationResult) -> None: ...


class DataPort(Protocol):
    """What a worker calls on the data pool (gRPC client or the in-process store)."""

    def batches(self, client_ids: Sequence[int], step: int, batch_size: int) -> list[Batch]: ...

    def info(self, label_counts: bool = False) -> DatasetSummary: ...

    def test_set(self) -> tuple[np.ndarray, np.ndarray]: ...
