"""faas_client: the Python client of faas.

    from faas_client import Client

    with Client.from_context() as faas:          # faasctl's current context
        call = faas.invoke("hello", {"name": "ana"})
        print(call.result["greeting"], call.timings.total_ms)

Connects as faasctl does (its contexts file, FAAS_* over it, the endpoint
list in order, TLS with the cluster CA, the API token).
"""

from ._proto import api_pb2, api_pb2_grpc
from .client import ALL_NAMESPACES, Client
from .config import Overrides, Settings, config_path, resolve
from .errors import (
    AlreadyExists,
    ApiError,
    ConfigError,
    DeadlineExceeded,
    FaasError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unreachable,
    WaitEnded,
)
from .types import Call, CallError, CallFailed, CallStatus, Function, Logs, StartKind, Timings

__version__ = "0.1.0"

__all__ = [
    "ALL_NAMESPACES",
    "AlreadyExists",
    "ApiError",
    "Call",
    "CallError",
    "CallFailed",
    "CallStatus",
    "Client",
    "ConfigError",
    "DeadlineExceeded",
    "FaasError",
    "FailedPrecondition",
    "Function",
    "InvalidArgument",
    "Logs",
    "NotFound",
    "Overrides",
    "PermissionDenied",
    "ResourceExhausted",
    "Settings",
    "StartKind",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "Unreachable",
    "WaitEnded",
    "api_pb2",
    "api_pb2_grpc",
    "config_path",
    "resolve",
]
