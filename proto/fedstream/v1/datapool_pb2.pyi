from fedstream.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInfoRequest(_message.Message):
    __slots__ = ("label_counts",)
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    label_counts: bool
    def __init__(self, label_counts: _Optional[bool] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("dataset", "partitioner", "seed", "num_clients", "client_sizes", "example", "num_classes", "num_test", "max_batch_size", "max_clients_per_request", "label_counts", "site")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PARTITIONER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_SIZES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CLIENTS_PER_REQUEST_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    partitioner: str
    seed: int
    num_clients: int
    client_sizes: _containers.RepeatedScalarFieldContainer[int]
    example: _tensor_pb2.TensorSpec
    num_classes: int
    num_test: int
    max_batch_size: int
    max_clients_per_request: int
    label_counts: _containers.RepeatedScalarFieldContainer[int]
    site: str
    def __init__(self, dataset: _Optional[str] = ..., partitioner: _Optional[str] = ..., seed: _Optional[int] = ..., num_clients: _Optional[int] = ..., client_sizes: _Optional[_Iterable[int]] = ..., example: _Optional[_Union[_tensor_pb2.TensorSpec, _Mapping]] = ..., num_classes: _Optional[int] = ..., num_test: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., max_clients_per_request: _Optional[int] = ..., label_counts: _Optional[_Iterable[int]] = ..., site: _Optional[str] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("client_ids", "step", "batch_size")
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    client_ids: _containers.RepeatedScalarFieldContainer[int]
    step: int
    batch_size: int
    def __init__(self, client_ids: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class BatchHeader(_message.Message):
    __slots__ = ("client_ids", "sizes", "step", "tensors")
    CLIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    SIZES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    client_ids: _containers.RepeatedScalarFieldContainer[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    step: int
    tensors: _tensor_pb2.TensorSetHeader
    def __init__(self, client_ids: _Optional[_Iterable[int]] = ..., sizes: _Optional[_Iterable[int]] = ..., step: _Optional[int] = ..., tensors: _Optional[_Union[_tensor_pb2.TensorSetHeader, _Mapping]] = ...) -> None: ...

class BatchMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BatchHeader
    chunk: _tensor_pb2.Chunk
    def __init__(self, header: _Optional[_Union[BatchHeader, _Mapping]] = ..., chunk: _Optional[_Union[_tensor_pb2.Chunk, _Mapping]] = ...) -> None: ...

class TestSetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
