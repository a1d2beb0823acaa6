from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchParams(_message.Message):
    __slots__ = ("nprobe", "ef_search")
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    nprobe: int
    ef_search: int
    def __init__(self, nprobe: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class ApplyLogRequest(_message.Message):
    __slots__ = ("seq", "request_id")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    seq: int
    request_id: str
    def __init__(self, seq: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class ApplyLogResponse(_message.Message):
    __slots__ = ("applied_seq",)
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    applied_seq: int
    def __init__(self, applied_seq: _Optional[int] = ...) -> None: ...

class ShardSearchRequest(_message.Message):
    __slots__ = ("vectors", "dim", "k", "params", "index_version", "request_id", "filter")
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    vectors: bytes
    dim: int
    k: int
    params: SearchParams
    index_version: str
    request_id: str
    filter: str
    def __init__(self, vectors: _Optional[bytes] = ..., dim: _Optional[int] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., index_version: _Optional[str] = ..., request_id: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class ShardSearchResponse(_message.Message):
    __slots__ = ("shard", "num_queries", "k", "ids", "scores", "keys", "index_version", "metric", "applied_seq")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    shard: int
    num_queries: int
    k: int
    ids: bytes
    scores: bytes
    keys: _containers.RepeatedScalarFieldContainer[str]
    index_version: str
    metric: str
    applied_seq: int
    def __init__(self, shard: _Optional[int] = ..., num_queries: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., keys: _Optional[_Iterable[str]] = ..., index_version: _Optional[str] = ..., metric: _Optional[str] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class GetVectorsRequest(_message.Message):
    __slots__ = ("image_ids", "request_id")
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    def __init__(self, image_ids: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ...) -> None: ...

class GetVectorsResponse(_message.Message):
    __slots__ = ("dim", "image_ids", "vectors", "keys", "missing_ids")
    DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    dim: int
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: bytes
    keys: _containers.RepeatedScalarFieldContainer[str]
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, dim: _Optional[int] = ..., image_ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[bytes] = ..., keys: _Optional[_Iterable[str]] = ..., missing_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("shard", "num_shards", "count", "dim", "metric", "factory", "index_version", "model", "model_version", "search_params", "memory_bytes", "queries_served", "held_versions", "index_uri", "index_pointer", "pointer_target", "metadata_columns", "applied_seq", "worker_pid")
    class SearchParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SHARD_FIELD_NUMBER: _ClassVar[int]
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEARCH_PARAMS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUERIES_SERVED_FIELD_NUMBER: _ClassVar[int]
    HELD_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INDEX_URI_FIELD_NUMBER: _ClassVar[int]
    INDEX_POINTER_FIELD_NUMBER: _ClassVar[int]
    POINTER_TARGET_FIELD_NUMBER: _ClassVar[int]
    METADATA_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    WORKER_PID_FIELD_NUMBER: _ClassVar[int]
    shard: int
    num_shards: int
    count: int
    dim: int
    metric: str
    factory: str
    index_version: str
    model: str
    model_version: str
    search_params: _containers.ScalarMap[str, int]
    memory_bytes: int
    queries_served: int
    held_versions: _containers.RepeatedScalarFieldContainer[str]
    index_uri: str
    index_pointer: str
    pointer_target: str
    metadata_columns: _containers.RepeatedCompositeFieldContainer[MetadataColumn]
    applied_seq: int
    worker_pid: int
    def __init__(self, shard: _Optional[int] = ..., num_shards: _Optional[int] = ..., count: _Optional[int] = ..., dim: _Optional[int] = ..., metric: _Optional[str] = ..., factory: _Optional[str] = ..., index_version: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., search_params: _Optional[_Mapping[str, int]] = ..., memory_bytes: _Optional[int] = ..., queries_served: _Optional[int] = ..., held_versions: _Optional[_Iterable[str]] = ..., index_uri: _Optional[str] = ..., index_pointer: _Optional[str] = ..., pointer_target: _Optional[str] = ..., metadata_columns: _Optional[_Iterable[_Union[MetadataColumn, _Mapping]]] = ..., applied_seq: _Optional[int] = ..., worker_pid: _Optional[int] = ...) -> None: ...

class MetadataColumn(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class LoadIndexRequest(_message.Message):
    __slots__ = ("index_uri",)
    INDEX_URI_FIELD_NUMBER: _ClassVar[int]
    index_uri: str
    def __init__(self, index_uri: _Optional[str] = ...) -> None: ...

class LoadIndexResponse(_message.Message):
    __slots__ = ("swapped", "index_version", "previous_version", "message")
    SWAPPED_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    swapped: bool
    index_version: str
    previous_version: str
    message: str
    def __init__(self, swapped: _Optional[bool] = ..., index_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class UpsertItem(_message.Message):
    __slots__ = ("key", "image", "vector", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    key: str
    image: bytes
    vector: FloatVector
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, key: _Optional[str] = ..., image: _Optional[bytes] = ..., vector: _Optional[_Union[FloatVector, _Mapping]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("items", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[UpsertItem]
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[UpsertItem, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("image_ids", "keys", "request_id")
    IMAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    image_ids: _containers.RepeatedScalarFieldContainer[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, image_ids: _Optional[_Iterable[int]] = ..., keys: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class WriteResult(_message.Message):
    __slots__ = ("key", "image_id", "image_id_str", "status", "reason", "shard", "seq")
    KEY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_STR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    key: str
    image_id: int
    image_id_str: str
    status: str
    reason: str
    shard: int
    seq: int
    def __init__(self, key: _Optional[str] = ..., image_id: _Optional[int] = ..., image_id_str: _Optional[str] = ..., status: _Optional[str] = ..., reason: _Optional[str] = ..., shard: _Optional[int] = ..., seq: _Optional[int] = ...) -> None: ...

class WriteResponse(_message.Message):
    __slots__ = ("items", "request_id")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[WriteResult]
    request_id: str
    def __init__(self, items: _Optional[_Iterable[_Union[WriteResult, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class FloatVector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("image", "vector", "image_id", "k", "params", "exclude_query_image", "request_id", "filter")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    vector: FloatVector
    image_id: int
    k: int
    params: SearchParams
    exclude_query_image: bool
    request_id: str
    filter: str
    def __init__(self, image: _Optional[bytes] = ..., vector: _Optional[_Union[FloatVector, _Mapping]] = ..., image_id: _Optional[int] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., exclude_query_image: _Optional[bool] = ..., request_id: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("image_id", "key", "score", "shard")
    IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    image_id: int
    key: str
    score: float
    shard: int
    def __init__(self, image_id: _Optional[int] = ..., key: _Optional[str] = ..., score: _Optional[float] = ..., shard: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits", "partial", "failed_shards", "index_version", "metric", "request_id")
    HITS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    FAILED_SHARDS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    partial: bool
    failed_shards: _containers.RepeatedScalarFieldContainer[int]
    index_version: str
    metric: str
    request_id: str
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., partial: _Optional[bool] = ..., failed_shards: _Optional[_Iterable[int]] = ..., index_version: _Optional[str] = ..., metric: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("queries", "k", "params", "exclude_query_image", "request_id", "filter", "vectors", "dim")
    class Query(_message.Message):
        __slots__ = ("image", "vector", "image_id")
        IMAGE_FIELD_NUMBER: _ClassVar[int]
        VECTOR_FIELD_NUMBER: _ClassVar[int]
        IMAGE_ID_FIELD_NUMBER: _ClassVar[int]
        image: bytes
        vector: FloatVector
        image_id: int
        def __init__(self, image: _Optional[bytes] = ..., vector: _Optional[_Union[FloatVector, _Mapping]] = ..., image_id: _Optional[int] = ...) -> None: ...
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_QUERY_IMAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[SearchBatchRequest.Query]
    k: int
    params: SearchParams
    exclude_query_image: bool
    request_id: str
    filter: str
    vectors: bytes
    dim: int
    def __init__(self, queries: _Optional[_Iterable[_Union[SearchBatchRequest.Query, _Mapping]]] = ..., k: _Optional[int] = ..., params: _Optional[_Union[SearchParams, _Mapping]] = ..., exclude_query_image: _Optional[bool] = ..., request_id: _Optional[str] = ..., filter: _Optional[str] = ..., vectors: _Optional[bytes] = ..., dim: _Optional[int] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results", "index_version", "metric", "request_id")
    class Result(_message.Message):
        __slots__ = ("hits", "partial", "failed_shards", "error_code", "error")
        HITS_FIELD_NUMBER: _ClassVar[int]
        PARTIAL_FIELD_NUMBER: _ClassVar[int]
        FAILED_SHARDS_FIELD_NUMBER: _ClassVar[int]
        ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
        ERROR_FIELD_NUMBER: _ClassVar[int]
        hits: _containers.RepeatedCompositeFieldContainer[Hit]
        partial: bool
        failed_shards: _containers.RepeatedScalarFieldContainer[int]
        error_code: str
        error: str
        def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ..., partial: _Optional[bool] = ..., failed_shards: _Optional[_Iterable[int]] = ..., error_code: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchBatchResponse.Result]
    index_version: str
    metric: str
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[SearchBatchResponse.Result, _Mapping]]] = ..., index_version: _Optional[str] = ..., metric: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("num_shards", "dim", "model", "model_version", "metric", "index_version", "live_replicas", "replicas", "shard_counts", "shard_index_versions", "requests_served", "metadata_columns")
    class LiveReplicasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ReplicasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ShardCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ShardIndexVersionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    NUM_SHARDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    LIVE_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INDEX_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    METADATA_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    num_shards: int
    dim: int
    model: str
    model_version: str
    metric: str
    index_version: str
    live_replicas: _containers.ScalarMap[int, int]
    replicas: _containers.ScalarMap[int, int]
    shard_counts: _containers.ScalarMap[int, int]
    shard_index_versions: _containers.ScalarMap[int, str]
    requests_served: int
    metadata_columns: _containers.RepeatedCompositeFieldContainer[MetadataColumn]
    def __init__(self, num_shards: _Optional[int] = ..., dim: _Optional[int] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., metric: _Optional[str] = ..., index_version: _Optional[str] = ..., live_replicas: _Optional[_Mapping[int, int]] = ..., replicas: _Optional[_Mapping[int, int]] = ..., shard_counts: _Optional[_Mapping[int, int]] = ..., shard_index_versions: _Optional[_Mapping[int, str]] = ..., requests_served: _Optional[int] = ..., metadata_columns: _Optional[_Iterable[_Union[MetadataColumn, _Mapping]]] = ...) -> None: ...
