from fedstream.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UPDATE_KIND_UNSPECIFIED: _ClassVar[UpdateKind]
    UPDATE_KIND_GRADIENT: _ClassVar[UpdateKind]
    UPDATE_KIND_MODEL_DELTA: _ClassVar[UpdateKind]

class ClientWeighting(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_WEIGHTING_UNSPECIFIED: _ClassVar[ClientWeighting]
    CLIENT_WEIGHTING_UNIFORM: _ClassVar[ClientWeighting]
    CLIENT_WEIGHTING_EXAMPLES: _ClassVar[ClientWeighting]
UPDATE_KIND_UNSPECIFIED: UpdateKind
UPDATE_KIND_GRADIENT: UpdateKind
UPDATE_KIND_MODEL_DELTA: UpdateKind
CLIENT_WEIGHTING_UNSPECIFIED: ClientWeighting
CLIENT_WEIGHTING_UNIFORM: ClientWeighting
CLIENT_WEIGHTING_EXAMPLES: ClientWeighting

class JoinRequest(_message.Message):
    __slots__ = ("worker_name", "device", "site", "site_data")
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    SITE_DATA_FIELD_NUMBER: _ClassVar[int]
    worker_name: str
    device: str
    site: str
    site_data: SiteData
    def __init__(self, worker_name: _Optional[str] = ..., device: _Optional[str] = ..., site: _Optional[str] = ..., site_data: _Optional[_Union[SiteData, _Mapping]] = ...) -> None: ...

class SiteData(_message.Message):
    __slots__ = ("client_sizes", "example", "num_classes", "num_test", "label_counts")
    CLIENT_SIZES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    client_sizes: _containers.RepeatedScalarFieldContainer[int]
    example: _tensor_pb2.TensorSpec
    num_classes: int
    num_test: int
    label_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, client_sizes: _Optional[_Iterable[int]] = ..., example: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., num_classes: _Optional[int] = ..., num_test: _Optional[int] = ..., label_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("worker_id", "task", "client_id_base")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_BASE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    task: Task
    client_id_base: int
    def __init__(self, worker_id: _Optional[str] = ..., task: _Optional[_Union[Task, _Mapping]] = ..., client_id_base: _Optional[int] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("model_json", "loss", "num_classes", "update_kind", "weighting", "batch_size", "dropout", "input_divisor", "update_tensors", "rounds", "per_client_updates", "local_epochs", "local_batch_size", "client_optimizer", "client_lr", "client_momentum", "prox_mu", "max_tensor_set_bytes", "update_encoding", "topk_fraction", "weights_encoding", "weights_delta", "dp_clip", "secure_aggregation")
    MODEL_JSON_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_KIND_FIELD_NUMBER: _ClassVar[int]
    WEIGHTING_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIVISOR_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TENSORS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    PER_CLIENT_UPDATES_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLIENT_OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_LR_FIELD_NUMBER: _ClassVar[int]
    CLIENT_MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    PROX_MU_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_SET_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOPK_FRACTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ENCODING_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_DELTA_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    model_json: str
    loss: str
    num_classes: int
    update_kind: UpdateKind
    weighting: ClientWeighting
    batch_size: int
    dropout: bool
    input_divisor: float
    update_tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    rounds: int
    per_client_updates: bool
    local_epochs: int
    local_batch_size: int
    client_optimizer: str
    client_lr: float
    client_momentum: float
    prox_mu: float
    max_tensor_set_bytes: int
    update_encoding: _tensor_pb2.Encoding
    topk_fraction: float
    weights_encoding: _tensor_pb2.Encoding
    weights_delta: bool
    dp_clip: float
    secure_aggregation: bool
    def __init__(self, model_json: _Optional[str] = ..., loss: _Optional[str] = ..., num_classes: _Optional[int] = ..., update_kind: _Optional[_Union[UpdateKind, str]] = ..., weighting: _Optional[_Union[ClientWeighting, str]] = ..., batch_size: _Optional[int] = ..., dropout: _Optional[bool] = ..., input_divisor: _Optional[float] = ..., update_tensors: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., rounds: _Optional[int] = ..., per_client_updates: _Optional[bool] = ..., local_epochs: _Optional[int] = ..., local_batch_size: _Optional[int] = ..., client_optimizer: _Optional[str] = ..., client_lr: _Optional[float] = ..., client_momentum: _Optional[float] = ..., prox_mu: _Optional[float] = ..., max_tensor_set_bytes: _Optional[int] = ..., update_encoding: _Optional[_Union[_tensor_pb2.Encoding, str]] = ..., topk_fraction: _Optional[float] = ..., weights_encoding: _Optional[_Union[_tensor_pb2.Encoding, str]] = ..., weights_delta: _Optional[bool] = ..., dp_clip: _Optional[float] = ..., secure_aggregation: _Optional[bool] = ...) -> None: ...

class AssignmentRequest(_message.Message):
    __slots__ = ("worker_id", "wait_ms")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    wait_ms: int
    def __init__(self, worker_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("action", "round", "version", "unit", "client_ids", "step", "dp_clip", "secure", "local_epochs")
    class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ACTION_UNSPECIFIED: _ClassVar[Assignment.Action]
        TRAIN: _ClassVar[Assignment.Action]
        WAIT: _ClassVar[Assignment.Action]
        STOP: _ClassVar[Assignment.Action]
        EVALUATE: _ClassVar[Assignment.Action]
        SHARE_KEYS: _ClassVar[Assignment.Action]
        MASK: _ClassVar[Assignment.Action]
        UNMASK: _ClassVar[Assignment.Action]
        CONFIRM: _ClassVar[Assignment.Action]
    ACTION_UNSPECIFIED: Assignment.Action
    TRAIN: Assignment.Action
    WAIT: Assignment.Action
    STOP: Assignment.Action
    EVALUATE: Assignment.Action
    SHARE_KEYS: Assignment.Action
    MASK: Assignment.Action
    UNMASK: Assignment.Action
    CONFIRM: Assignment.Action
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    DP_CLIP_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    LOCAL_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    action: Assignment.Action
    round: int
    version: int
    unit: int
    client_ids: _containers.RepeatedScalarFieldContainer[int]
    step: int
    dp_clip: float
    secure: SecureStep
    local_epochs: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, action: _Optional[_Union[Assignment.Action, str]] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., unit: _Optional[int] = ..., client_ids: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ..., dp_clip: _Optional[float] = ..., secure: _Optional[_Union[SecureStep, _Mapping]] = ..., local_epochs: _Optional[_Iterable[int]] = ...) -> None: ...

class SecureStep(_message.Message):
    __slots__ = ("party", "threshold", "roster", "sharers", "inbox", "range", "bits", "noise_std", "survivors", "confirmed", "confirmations")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    SHARERS_FIELD_NUMBER: _ClassVar[int]
    INBOX_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    CONFIRMED_FIELD_NUMBER: _ClassVar[int]
    CONFIRMATIONS_FIELD_NUMBER: _ClassVar[int]
    party: int
    threshold: int
    roster: _containers.RepeatedCompositeFieldContainer[PartyKeys]
    sharers: _containers.RepeatedScalarFieldContainer[int]
    inbox: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    range: float
    bits: int
    noise_std: float
    survivors: _containers.RepeatedScalarFieldContainer[int]
    confirmed: _containers.RepeatedScalarFieldContainer[int]
    confirmations: _containers.RepeatedCompositeFieldContainer[Confirmation]
    def __init__(self, party: _Optional[int] = ..., threshold: _Optional[int] = ..., roster: _Optional[_Iterable[_Union[PartyKeys, _Mapping]]] = ..., sharers: _Optional[_Iterable[int]] = ..., inbox: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ..., range: _Optional[float] = ..., bits: _Optional[int] = ..., noise_std: _Optional[float] = ..., survivors: _Optional[_Iterable[int]] = ..., confirmed: _Optional[_Iterable[int]] = ..., confirmations: _Optional[_Iterable[_Union[Confirmation, _Mapping]]] = ...) -> None: ...

class Confirmation(_message.Message):
    __slots__ = ("party", "signature")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    party: int
    signature: bytes
    def __init__(self, party: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class PartyKeys(_message.Message):
    __slots__ = ("party", "share_key", "mask_key", "site", "signature")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    party: int
    share_key: bytes
    mask_key: bytes
    site: str
    signature: bytes
    def __init__(self, party: _Optional[int] = ..., share_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., site: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class EncryptedShare(_message.Message):
    __slots__ = ("party", "ciphertext")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    party: int
    ciphertext: bytes
    def __init__(self, party: _Optional[int] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class AdvertiseKeysRequest(_message.Message):
    __slots__ = ("worker_id", "round", "unit", "share_key", "mask_key", "site", "signature")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    unit: int
    share_key: bytes
    mask_key: bytes
    site: str
    signature: bytes
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., unit: _Optional[int] = ..., share_key: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ..., site: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("worker_id", "round", "unit", "shares")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    unit: int
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShare]
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., unit: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[EncryptedShare, _Mapping]]] = ...) -> None: ...

class RevealedShare(_message.Message):
    __slots__ = ("party", "self_mask_seed", "mask_key")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SEED_FIELD_NUMBER: _ClassVar[int]
    MASK_KEY_FIELD_NUMBER: _ClassVar[int]
    party: int
    self_mask_seed: bytes
    mask_key: bytes
    def __init__(self, party: _Optional[int] = ..., self_mask_seed: _Optional[bytes] = ..., mask_key: _Optional[bytes] = ...) -> None: ...

class ConfirmSurvivorsRequest(_message.Message):
    __slots__ = ("worker_id", "round", "unit", "signature")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    unit: int
    signature: bytes
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., unit: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class RevealSharesRequest(_message.Message):
    __slots__ = ("worker_id", "round", "unit", "shares")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    unit: int
    shares: _containers.RepeatedCompositeFieldContainer[RevealedShare]
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., unit: _Optional[int] = ..., shares: _Optional[_Iterable[_Union[RevealedShare, _Mapping]]] = ...) -> None: ...

class SecureReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PullWeightsRequest(_message.Message):
    __slots__ = ("worker_id", "have_version")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    HAVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    have_version: int
    def __init__(self, worker_id: _Optional[str] = ..., have_version: _Optional[int] = ...) -> None: ...

class WeightsHeader(_message.Message):
    __slots__ = ("version", "unchanged", "tensors", "delta_from")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    DELTA_FROM_FIELD_NUMBER: _ClassVar[int]
    version: int
    unchanged: bool
    tensors: _tensor_pb2.TensorSetHeader
    delta_from: int
    def __init__(self, version: _Optional[int] = ..., unchanged: _Optional[bool] = ..., tensors: _Optional[_Union[_tensor_pb2.TensorSetHeader, _Mapping]] = ..., delta_from: _Optional[int] = ...) -> None: ...

class WeightsMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: WeightsHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[WeightsHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class UpdateHeader(_message.Message):
    __slots__ = ("worker_id", "round", "base_version", "unit", "client_ids", "weight", "num_examples", "metrics", "tensors", "unclipped_clients")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    UNCLIPPED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    round: int
    base_version: int
    unit: int
    client_ids: _containers.RepeatedScalarFieldContainer[int]
    weight: float
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    tensors: _tensor_pb2.TensorSetHeader
    unclipped_clients: int
    def __init__(self, worker_id: _Optional[str] = ..., round: _Optional[int] = ..., base_version: _Optional[int] = ..., unit: _Optional[int] = ..., client_ids: _Optional[_Iterable[int]] = ..., weight: _Optional[float] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., tensors: _Optional[_Union[_tensor_pb2.TensorSetHeader, _Mapping]] = ..., unclipped_clients: _Optional[int] = ...) -> None: ...

class UpdateMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class PushUpdateReply(_message.Message):
    __slots__ = ("accepted", "duplicate", "round", "version")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    round: int
    version: int
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., round: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerInfo(_message.Message):
    __slots__ = ("worker_id", "worker_name", "device", "last_seen_s_ago", "updates_accepted", "site")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_NAME_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_AGO_FIELD_NUMBER: _ClassVar[int]
    UPDATES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    worker_name: str
    device: str
    last_seen_s_ago: float
    updates_accepted: int
    site: str
    def __init__(self, worker_id: _Optional[str] = ..., worker_name: _Optional[str] = ..., device: _Optional[str] = ..., last_seen_s_ago: _Optional[float] = ..., updates_accepted: _Optional[int] = ..., site: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("phase", "round", "version", "total_rounds", "workers", "last_metrics")
    class LastMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    LAST_METRICS_FIELD_NUMBER: _ClassVar[int]
    phase: str
    round: int
    version: int
    total_rounds: int
    workers: _containers.RepeatedCompositeFieldContainer[WorkerInfo]
    last_metrics: _containers.ScalarMap[str, float]
    def __init__(self, phase: _Optional[str] = ..., round: _Optional[int] = ..., version: _Optional[int] = ..., total_rounds: _Optional[int] = ..., workers: _Optional[_Iterable[_Union[WorkerInfo, _Mapping]]] = ..., last_metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("worker_id",)
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    def __init__(self, worker_id: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EvaluateReply(_message.Message):
    __slots__ = ("version", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    version: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("worker_id", "version", "num_examples", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    version: int
    num_examples: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, worker_id: _Optional[str] = ..., version: _Optional[int] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluationReply(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    def __init__(self, accepted: _Optional[bool] = ...) -> None: ...
