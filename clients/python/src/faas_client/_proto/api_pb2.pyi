from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

CALL_STATUS_CANCELLED: CallStatus
CALL_STATUS_FAILED: CallStatus
CALL_STATUS_QUEUED: CallStatus
CALL_STATUS_RUNNING: CallStatus
CALL_STATUS_SUCCEEDED: CallStatus
CALL_STATUS_TIMEOUT: CallStatus
CALL_STATUS_UNSPECIFIED: CallStatus
DESCRIPTOR: _descriptor.FileDescriptor
HTTP_ACCESS_PRIVATE: HttpAccess
HTTP_ACCESS_PUBLIC: HttpAccess
HTTP_ACCESS_UNSPECIFIED: HttpAccess
ROLE_ADMIN: Role
ROLE_DEVELOPER: Role
ROLE_INVOKER: Role
ROLE_PUBLIC_INVOKER: Role
ROLE_UNSPECIFIED: Role
SPOT_STATE_CLEARING: SpotState
SPOT_STATE_FREE: SpotState
SPOT_STATE_PRELOADED_FUNCTION: SpotState
SPOT_STATE_PRELOADED_RUNTIME: SpotState
SPOT_STATE_PRELOADING: SpotState
SPOT_STATE_RUNNING: SpotState
SPOT_STATE_UNSPECIFIED: SpotState
START_KIND_COLD: StartKind
START_KIND_PREWARM_FUNCTION: StartKind
START_KIND_PREWARM_RUNTIME: StartKind
START_KIND_UNSPECIFIED: StartKind

class ApiToken(_message.Message):
    __slots__ = ["created_at_ms", "description", "expires_at_ms", "id", "namespaces", "role", "secret_sha256"]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    created_at_ms: int
    description: str
    expires_at_ms: int
    id: str
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    role: Role
    secret_sha256: str
    def __init__(self, id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., description: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., secret_sha256: _Optional[str] = ..., namespaces: _Optional[_Iterable[str]] = ...) -> None: ...

class Call(_message.Message):
    __slots__ = ["agent_incarnation", "alias", "attempts", "client_context", "created_at_ms", "error", "finished_at_ms", "function", "function_version", "id", "logs_truncated", "namespace", "node", "owner", "params_json", "policy", "result_base64", "result_json", "spot", "status", "timings", "traceparent"]
    AGENT_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LOGS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RESULT_BASE64_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    SPOT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    agent_incarnation: str
    alias: str
    attempts: int
    client_context: str
    created_at_ms: int
    error: CallError
    finished_at_ms: int
    function: str
    function_version: int
    id: str
    logs_truncated: bool
    namespace: str
    node: str
    owner: str
    params_json: str
    policy: str
    result_base64: bool
    result_json: str
    spot: int
    status: CallStatus
    timings: Timings
    traceparent: str
    def __init__(self, id: _Optional[str] = ..., function: _Optional[str] = ..., function_version: _Optional[int] = ..., params_json: _Optional[str] = ..., status: _Optional[_Union[CallStatus, str]] = ..., result_json: _Optional[str] = ..., error: _Optional[_Union[CallError, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., node: _Optional[str] = ..., spot: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., logs_truncated: bool = ..., policy: _Optional[str] = ..., attempts: _Optional[int] = ..., owner: _Optional[str] = ..., namespace: _Optional[str] = ..., traceparent: _Optional[str] = ..., client_context: _Optional[str] = ..., alias: _Optional[str] = ..., result_base64: bool = ..., agent_incarnation: _Optional[str] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ["log_tail", "message", "reason"]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    log_tail: str
    message: str
    reason: str
    def __init__(self, reason: _Optional[str] = ..., message: _Optional[str] = ..., log_tail: _Optional[str] = ...) -> None: ...

class CallLogChunk(_message.Message):
    __slots__ = ["data", "final", "offset", "truncated"]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    final: bool
    offset: int
    truncated: bool
    def __init__(self, data: _Optional[bytes] = ..., offset: _Optional[int] = ..., final: bool = ..., truncated: bool = ...) -> None: ...

class CallLogs(_message.Message):
    __slots__ = ["logs", "truncated"]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    logs: bytes
    truncated: bool
    def __init__(self, logs: _Optional[bytes] = ..., truncated: bool = ...) -> None: ...

class CallStats(_message.Message):
    __slots__ = ["calls", "cold", "dependencies", "execution", "failed", "function", "function_load", "policy", "prewarm_function", "prewarm_runtime", "queue", "result_return", "runtime_load", "succeeded", "timed_out", "total"]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    COLD_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_LOAD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREWARM_FUNCTION_FIELD_NUMBER: _ClassVar[int]
    PREWARM_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    RESULT_RETURN_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_LOAD_FIELD_NUMBER: _ClassVar[int]
    SUCCEEDED_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    calls: int
    cold: int
    dependencies: PhaseStats
    execution: PhaseStats
    failed: int
    function: str
    function_load: PhaseStats
    policy: str
    prewarm_function: int
    prewarm_runtime: int
    queue: PhaseStats
    result_return: PhaseStats
    runtime_load: PhaseStats
    succeeded: int
    timed_out: int
    total: PhaseStats
    def __init__(self, function: _Optional[str] = ..., policy: _Optional[str] = ..., calls: _Optional[int] = ..., succeeded: _Optional[int] = ..., failed: _Optional[int] = ..., timed_out: _Optional[int] = ..., cold: _Optional[int] = ..., prewarm_runtime: _Optional[int] = ..., prewarm_function: _Optional[int] = ..., queue: _Optional[_Union[PhaseStats, _Mapping]] = ..., runtime_load: _Optional[_Union[PhaseStats, _Mapping]] = ..., function_load: _Optional[_Union[PhaseStats, _Mapping]] = ..., dependencies: _Optional[_Union[PhaseStats, _Mapping]] = ..., execution: _Optional[_Union[PhaseStats, _Mapping]] = ..., result_return: _Optional[_Union[PhaseStats, _Mapping]] = ..., total: _Optional[_Union[PhaseStats, _Mapping]] = ...) -> None: ...

class CancelCallRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CreateJoinTokenRequest(_message.Message):
    __slots__ = ["description", "ttl_ms", "uses"]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    description: str
    ttl_ms: int
    uses: int
    def __init__(self, ttl_ms: _Optional[int] = ..., description: _Optional[str] = ..., uses: _Optional[int] = ...) -> None: ...

class CreateJoinTokenResponse(_message.Message):
    __slots__ = ["ca_hash", "expires_at_ms", "token"]
    CA_HASH_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ca_hash: str
    expires_at_ms: int
    token: str
    def __init__(self, token: _Optional[str] = ..., ca_hash: _Optional[str] = ..., expires_at_ms: _Optional[int] = ...) -> None: ...

class CreateNamespaceRequest(_message.Message):
    __slots__ = ["name", "quota"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    quota: NamespaceQuota
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[_Union[NamespaceQuota, _Mapping]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ["description", "namespaces", "role", "ttl_ms"]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    description: str
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    role: Role
    ttl_ms: int
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., description: _Optional[str] = ..., ttl_ms: _Optional[int] = ..., namespaces: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ["record", "token"]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    record: ApiToken
    token: str
    def __init__(self, token: _Optional[str] = ..., record: _Optional[_Union[ApiToken, _Mapping]] = ...) -> None: ...

class DeleteAliasRequest(_message.Message):
    __slots__ = ["alias", "function", "namespace"]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    alias: str
    function: str
    namespace: str
    def __init__(self, function: _Optional[str] = ..., namespace: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class DeleteAliasResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteFunctionRequest(_message.Message):
    __slots__ = ["name", "namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteFunctionResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteJoinTokenRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteJoinTokenResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteLayerRequest(_message.Message):
    __slots__ = ["name", "namespace", "version"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    version: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DeleteLayerResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteNamespaceRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteNamespaceResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteRuntimeRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteRuntimeResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteSecretRequest(_message.Message):
    __slots__ = ["name", "namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class DeleteSecretResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DeleteTokenRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteTokenResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class DependencyBuild(_message.Message):
    __slots__ = ["build_ms", "dependencies_cached", "dependencies_digest", "has_dependencies", "node", "skipped"]
    BUILD_MS_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_CACHED_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HAS_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    build_ms: float
    dependencies_cached: bool
    dependencies_digest: str
    has_dependencies: bool
    node: str
    skipped: str
    def __init__(self, has_dependencies: bool = ..., dependencies_cached: bool = ..., dependencies_digest: _Optional[str] = ..., build_ms: _Optional[float] = ..., node: _Optional[str] = ..., skipped: _Optional[str] = ...) -> None: ...

class DeployFunctionRequest(_message.Message):
    __slots__ = ["chunk", "spec"]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    spec: FunctionSpec
    def __init__(self, spec: _Optional[_Union[FunctionSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class DeployProgress(_message.Message):
    __slots__ = ["build_log", "build_started_on", "function"]
    BUILD_LOG_FIELD_NUMBER: _ClassVar[int]
    BUILD_STARTED_ON_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    build_log: bytes
    build_started_on: str
    function: Function
    def __init__(self, build_started_on: _Optional[str] = ..., build_log: _Optional[bytes] = ..., function: _Optional[_Union[Function, _Mapping]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ["name", "undrain"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    undrain: bool
    def __init__(self, name: _Optional[str] = ..., undrain: bool = ...) -> None: ...

class FollowCallLogsRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class Function(_message.Message):
    __slots__ = ["build", "created_at_ms", "env", "handler", "http", "idempotent", "layers", "memory_bytes", "name", "namespace", "network", "package_digest", "package_size", "runtime", "secrets", "timeout_ms", "tmp_bytes", "updated_at_ms", "version"]
    class EnvEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BUILD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TMP_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    build: DependencyBuild
    created_at_ms: int
    env: _containers.ScalarMap[str, str]
    handler: str
    http: HttpAccess
    idempotent: bool
    layers: _containers.RepeatedCompositeFieldContainer[LayerRef]
    memory_bytes: int
    name: str
    namespace: str
    network: NetworkPolicy
    package_digest: str
    package_size: int
    runtime: str
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    timeout_ms: int
    tmp_bytes: int
    updated_at_ms: int
    version: int
    def __init__(self, name: _Optional[str] = ..., runtime: _Optional[str] = ..., handler: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., package_digest: _Optional[str] = ..., package_size: _Optional[int] = ..., version: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ..., idempotent: bool = ..., namespace: _Optional[str] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., network: _Optional[_Union[NetworkPolicy, _Mapping]] = ..., http: _Optional[_Union[HttpAccess, str]] = ..., build: _Optional[_Union[DependencyBuild, _Mapping]] = ..., tmp_bytes: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerRef, _Mapping]]] = ...) -> None: ...

class FunctionAlias(_message.Message):
    __slots__ = ["additional_version", "additional_weight", "created_at_ms", "function", "name", "namespace", "updated_at_ms", "version"]
    ADDITIONAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    additional_version: int
    additional_weight: float
    created_at_ms: int
    function: str
    name: str
    namespace: str
    updated_at_ms: int
    version: int
    def __init__(self, name: _Optional[str] = ..., function: _Optional[str] = ..., namespace: _Optional[str] = ..., version: _Optional[int] = ..., additional_version: _Optional[int] = ..., additional_weight: _Optional[float] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class FunctionSpec(_message.Message):
    __slots__ = ["env", "handler", "http", "idempotent", "layers", "memory_bytes", "name", "namespace", "network", "runtime", "secrets", "timeout_ms", "tmp_bytes", "update_mask"]
    class EnvEntry(_message.Message):
        __slots__ = ["key", "value"]
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENV_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    HTTP_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TMP_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    env: _containers.ScalarMap[str, str]
    handler: str
    http: HttpAccess
    idempotent: bool
    layers: _containers.RepeatedScalarFieldContainer[str]
    memory_bytes: int
    name: str
    namespace: str
    network: NetworkPolicy
    runtime: str
    secrets: _containers.RepeatedCompositeFieldContainer[SecretRef]
    timeout_ms: int
    tmp_bytes: int
    update_mask: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., runtime: _Optional[str] = ..., handler: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., env: _Optional[_Mapping[str, str]] = ..., idempotent: bool = ..., namespace: _Optional[str] = ..., secrets: _Optional[_Iterable[_Union[SecretRef, _Mapping]]] = ..., network: _Optional[_Union[NetworkPolicy, _Mapping]] = ..., http: _Optional[_Union[HttpAccess, str]] = ..., tmp_bytes: _Optional[int] = ..., layers: _Optional[_Iterable[str]] = ..., update_mask: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCallLogsRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetCallRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetCallStatsRequest(_message.Message):
    __slots__ = ["function", "last", "namespace"]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    function: str
    last: int
    namespace: str
    def __init__(self, function: _Optional[str] = ..., last: _Optional[int] = ..., namespace: _Optional[str] = ...) -> None: ...

class GetCallStatsResponse(_message.Message):
    __slots__ = ["groups", "overall", "policy"]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    OVERALL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[CallStats]
    overall: CallStats
    policy: str
    def __init__(self, groups: _Optional[_Iterable[_Union[CallStats, _Mapping]]] = ..., overall: _Optional[_Union[CallStats, _Mapping]] = ..., policy: _Optional[str] = ...) -> None: ...

class GetFunctionRequest(_message.Message):
    __slots__ = ["name", "namespace", "qualifier"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUALIFIER_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    qualifier: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., qualifier: _Optional[str] = ...) -> None: ...

class GetNamespaceRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetRuntimeRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetSecretRequest(_message.Message):
    __slots__ = ["name", "namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class InvokeRequest(_message.Message):
    __slots__ = ["client_context", "function", "namespace", "params_json"]
    CLIENT_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    client_context: str
    function: str
    namespace: str
    params_json: str
    def __init__(self, function: _Optional[str] = ..., params_json: _Optional[str] = ..., namespace: _Optional[str] = ..., client_context: _Optional[str] = ...) -> None: ...

class JoinToken(_message.Message):
    __slots__ = ["created_at_ms", "description", "expires_at_ms", "id", "uses_left"]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    created_at_ms: int
    description: str
    expires_at_ms: int
    id: str
    uses_left: int
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., uses_left: _Optional[int] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ["created_at_ms", "description", "digest", "directories", "name", "namespace", "size", "version"]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIRECTORIES_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created_at_ms: int
    description: str
    digest: str
    directories: _containers.RepeatedScalarFieldContainer[str]
    name: str
    namespace: str
    size: int
    version: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., version: _Optional[int] = ..., description: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., directories: _Optional[_Iterable[str]] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class LayerRef(_message.Message):
    __slots__ = ["digest", "directories", "name", "version"]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    DIRECTORIES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    digest: str
    directories: _containers.RepeatedScalarFieldContainer[str]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., digest: _Optional[str] = ..., directories: _Optional[_Iterable[str]] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ["description", "name", "namespace"]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    description: str
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ListAliasesRequest(_message.Message):
    __slots__ = ["function", "namespace"]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    function: str
    namespace: str
    def __init__(self, function: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListAliasesResponse(_message.Message):
    __slots__ = ["aliases"]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    aliases: _containers.RepeatedCompositeFieldContainer[FunctionAlias]
    def __init__(self, aliases: _Optional[_Iterable[_Union[FunctionAlias, _Mapping]]] = ...) -> None: ...

class ListCallsRequest(_message.Message):
    __slots__ = ["function", "namespace", "page_size", "page_token", "status"]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    function: str
    namespace: str
    page_size: int
    page_token: str
    status: CallStatus
    def __init__(self, function: _Optional[str] = ..., status: _Optional[_Union[CallStatus, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListCallsResponse(_message.Message):
    __slots__ = ["calls", "next_page_token"]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[Call]
    next_page_token: str
    def __init__(self, calls: _Optional[_Iterable[_Union[Call, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListFunctionVersionsRequest(_message.Message):
    __slots__ = ["name", "namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListFunctionVersionsResponse(_message.Message):
    __slots__ = ["versions"]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[Function]
    def __init__(self, versions: _Optional[_Iterable[_Union[Function, _Mapping]]] = ...) -> None: ...

class ListFunctionsRequest(_message.Message):
    __slots__ = ["namespace", "runtime"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    runtime: str
    def __init__(self, runtime: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class ListFunctionsResponse(_message.Message):
    __slots__ = ["functions"]
    FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    functions: _containers.RepeatedCompositeFieldContainer[Function]
    def __init__(self, functions: _Optional[_Iterable[_Union[Function, _Mapping]]] = ...) -> None: ...

class ListJoinTokensRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListJoinTokensResponse(_message.Message):
    __slots__ = ["tokens"]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[JoinToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[JoinToken, _Mapping]]] = ...) -> None: ...

class ListLayersRequest(_message.Message):
    __slots__ = ["name", "namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ListLayersResponse(_message.Message):
    __slots__ = ["layers"]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    def __init__(self, layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ...) -> None: ...

class ListNamespacesRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListNamespacesResponse(_message.Message):
    __slots__ = ["namespaces"]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[Namespace]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[Namespace, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ["leader", "nodes", "policy", "replica_version"]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_VERSION_FIELD_NUMBER: _ClassVar[int]
    leader: str
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    policy: str
    replica_version: str
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ..., policy: _Optional[str] = ..., leader: _Optional[str] = ..., replica_version: _Optional[str] = ...) -> None: ...

class ListRuntimesRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListRuntimesResponse(_message.Message):
    __slots__ = ["runtimes"]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    runtimes: _containers.RepeatedCompositeFieldContainer[Runtime]
    def __init__(self, runtimes: _Optional[_Iterable[_Union[Runtime, _Mapping]]] = ...) -> None: ...

class ListSecretsRequest(_message.Message):
    __slots__ = ["namespace"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class ListSecretsResponse(_message.Message):
    __slots__ = ["secrets"]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    secrets: _containers.RepeatedCompositeFieldContainer[Secret]
    def __init__(self, secrets: _Optional[_Iterable[_Union[Secret, _Mapping]]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ["tokens"]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[ApiToken]
    def __init__(self, tokens: _Optional[_Iterable[_Union[ApiToken, _Mapping]]] = ...) -> None: ...

class Namespace(_message.Message):
    __slots__ = ["created_at_ms", "name", "quota", "updated_at_ms"]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    created_at_ms: int
    name: str
    quota: NamespaceQuota
    updated_at_ms: int
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[_Union[NamespaceQuota, _Mapping]] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class NamespaceQuota(_message.Message):
    __slots__ = ["max_concurrent_calls", "max_functions", "max_queued_calls", "submit_burst", "submit_rate"]
    MAX_CONCURRENT_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_CALLS_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_BURST_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_RATE_FIELD_NUMBER: _ClassVar[int]
    max_concurrent_calls: int
    max_functions: int
    max_queued_calls: int
    submit_burst: float
    submit_rate: float
    def __init__(self, max_functions: _Optional[int] = ..., max_queued_calls: _Optional[int] = ..., max_concurrent_calls: _Optional[int] = ..., submit_rate: _Optional[float] = ..., submit_burst: _Optional[float] = ...) -> None: ...

class NetworkPolicy(_message.Message):
    __slots__ = ["allow", "mode"]
    class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = []
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    MODE_EGRESS: NetworkPolicy.Mode
    MODE_FIELD_NUMBER: _ClassVar[int]
    MODE_NONE: NetworkPolicy.Mode
    allow: _containers.RepeatedScalarFieldContainer[str]
    mode: NetworkPolicy.Mode
    def __init__(self, mode: _Optional[_Union[NetworkPolicy.Mode, str]] = ..., allow: _Optional[_Iterable[str]] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ["connected", "connected_at_ms", "draining", "name", "spots", "version"]
    CONNECTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPOTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    connected: bool
    connected_at_ms: int
    draining: bool
    name: str
    spots: _containers.RepeatedCompositeFieldContainer[Spot]
    version: str
    def __init__(self, name: _Optional[str] = ..., connected: bool = ..., spots: _Optional[_Iterable[_Union[Spot, _Mapping]]] = ..., connected_at_ms: _Optional[int] = ..., draining: bool = ..., version: _Optional[str] = ...) -> None: ...

class PhaseStats(_message.Message):
    __slots__ = ["max_ms", "mean_ms", "p50_ms", "p99_ms"]
    MAX_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_MS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    max_ms: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    def __init__(self, mean_ms: _Optional[float] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., max_ms: _Optional[float] = ...) -> None: ...

class PublishLayerRequest(_message.Message):
    __slots__ = ["chunk", "spec"]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    spec: LayerSpec
    def __init__(self, spec: _Optional[_Union[LayerSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class PutSecretRequest(_message.Message):
    __slots__ = ["name", "namespace", "replace", "value"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    replace: bool
    value: bytes
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., value: _Optional[bytes] = ..., replace: bool = ...) -> None: ...

class RegisterRuntimeRequest(_message.Message):
    __slots__ = ["chunk", "spec"]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    spec: RuntimeSpec
    def __init__(self, spec: _Optional[_Union[RuntimeSpec, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RollbackFunctionRequest(_message.Message):
    __slots__ = ["name", "namespace", "version"]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    namespace: str
    version: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class Runtime(_message.Message):
    __slots__ = ["build", "build_only_with_dependencies", "created_at_ms", "default_handler", "dependencies", "image", "image_digest", "name", "path", "run"]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    BUILD_ONLY_WITH_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HANDLER_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    build: str
    build_only_with_dependencies: bool
    created_at_ms: int
    default_handler: str
    dependencies: str
    image: str
    image_digest: str
    name: str
    path: str
    run: str
    def __init__(self, name: _Optional[str] = ..., image: _Optional[str] = ..., path: _Optional[str] = ..., dependencies: _Optional[str] = ..., run: _Optional[str] = ..., image_digest: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., default_handler: _Optional[str] = ..., build: _Optional[str] = ..., build_only_with_dependencies: bool = ...) -> None: ...

class RuntimeSpec(_message.Message):
    __slots__ = ["build", "build_only_with_dependencies", "default_handler", "dependencies", "image_ref", "name", "path", "replace", "run"]
    BUILD_FIELD_NUMBER: _ClassVar[int]
    BUILD_ONLY_WITH_DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HANDLER_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCIES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    RUN_FIELD_NUMBER: _ClassVar[int]
    build: str
    build_only_with_dependencies: bool
    default_handler: str
    dependencies: str
    image_ref: str
    name: str
    path: str
    replace: bool
    run: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ..., dependencies: _Optional[str] = ..., run: _Optional[str] = ..., image_ref: _Optional[str] = ..., replace: bool = ..., default_handler: _Optional[str] = ..., build: _Optional[str] = ..., build_only_with_dependencies: bool = ...) -> None: ...

class Secret(_message.Message):
    __slots__ = ["created_at_ms", "name", "namespace", "size", "updated_at_ms", "version"]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created_at_ms: int
    name: str
    namespace: str
    size: int
    updated_at_ms: int
    version: int
    def __init__(self, name: _Optional[str] = ..., namespace: _Optional[str] = ..., size: _Optional[int] = ..., version: _Optional[int] = ..., created_at_ms: _Optional[int] = ..., updated_at_ms: _Optional[int] = ...) -> None: ...

class SecretRef(_message.Message):
    __slots__ = ["env", "name", "version"]
    ENV_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    env: str
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., env: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ["additional_version", "additional_weight", "alias", "function", "namespace", "version"]
    ADDITIONAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    additional_version: int
    additional_weight: float
    alias: str
    function: str
    namespace: str
    version: int
    def __init__(self, function: _Optional[str] = ..., namespace: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., additional_version: _Optional[int] = ..., additional_weight: _Optional[float] = ...) -> None: ...

class Spot(_message.Message):
    __slots__ = ["call_id", "function", "index", "runtime", "state"]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    function: str
    index: int
    runtime: str
    state: SpotState
    def __init__(self, index: _Optional[int] = ..., state: _Optional[_Union[SpotState, str]] = ..., runtime: _Optional[str] = ..., function: _Optional[str] = ..., call_id: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ["call_id"]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ["dependencies_ms", "execution_ms", "function_load_ms", "queue_ms", "result_return_ms", "runtime_load_ms", "start_kind", "total_ms"]
    DEPENDENCIES_MS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_MS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_RETURN_MS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    START_KIND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    dependencies_ms: float
    execution_ms: float
    function_load_ms: float
    queue_ms: float
    result_return_ms: float
    runtime_load_ms: float
    start_kind: StartKind
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., runtime_load_ms: _Optional[float] = ..., function_load_ms: _Optional[float] = ..., dependencies_ms: _Optional[float] = ..., execution_ms: _Optional[float] = ..., result_return_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., start_kind: _Optional[_Union[StartKind, str]] = ...) -> None: ...

class UpdateNamespaceRequest(_message.Message):
    __slots__ = ["name", "quota"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    name: str
    quota: NamespaceQuota
    def __init__(self, name: _Optional[str] = ..., quota: _Optional[_Union[NamespaceQuota, _Mapping]] = ...) -> None: ...

class WaitCallRequest(_message.Message):
    __slots__ = ["id", "timeout_ms"]
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    timeout_ms: int
    def __init__(self, id: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ["namespaces", "role", "token_id"]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedScalarFieldContainer[str]
    role: Role
    token_id: str
    def __init__(self, token_id: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., namespaces: _Optional[_Iterable[str]] = ...) -> None: ...

class HttpAccess(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class CallStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class StartKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class SpotState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = []
