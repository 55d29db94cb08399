"""Errors: one class per gRPC code the faas API uses, and the client's own."""

from __future__ import annotations

from typing import Optional, cast

import grpc

#: Metadata key of an admission refusal's hint (RESOURCE_EXHAUSTED).
RETRY_AFTER_METADATA = "retry-after-ms"
#: Metadata key of an UNAVAILABLE sent before anything was recorded.
RETRY_SAFE_METADATA = "faas-retry-safe"


class FaasError(Exception):
    """Anything that went wrong talking to faas."""


class ConfigError(FaasError):
    """The contexts file, a CA or token file, or the settings given."""


class Unreachable(FaasError):
    """No endpoint of the list accepted a connection."""

    def __init__(self, attempts: list[str]) -> None:
        super().__init__("cannot reach the control plane: " + "; ".join(attempts))
        self.attempts = attempts


class WaitEnded(FaasError):
    """A wait ended before the call was final."""


class ApiError(FaasError):
    """The server's answer: `code` is the gRPC code, `message` its text."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class NotFound(ApiError):
    """NOT_FOUND: no such function, call, runtime, namespace or secret."""


class InvalidArgument(ApiError):
    """INVALID_ARGUMENT or OUT_OF_RANGE: bad name, params that are not JSON."""


class AlreadyExists(ApiError):
    """ALREADY_EXISTS."""


class FailedPrecondition(ApiError):
    """FAILED_PRECONDITION or ABORTED: e.g. no agent connected."""


class ResourceExhausted(ApiError):
    """RESOURCE_EXHAUSTED: a size limit, or an admission bound with
    `retry_after` (seconds) to wait before submitting again."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after: Optional[float] = None
    ) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


class Unauthenticated(ApiError):
    """UNAUTHENTICATED: no token, or one the cluster does not know."""


class PermissionDenied(ApiError):
    """PERMISSION_DENIED: the token's role or namespaces do not allow it."""


class Unavailable(ApiError):
    """UNAVAILABLE; `retry_safe`: nothing was recorded, sending again is safe
    (the client already did, for up to 8 s, on invoke and submit)."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_safe: bool = False) -> None:
        super().__init__(code, message)
        self.retry_safe = retry_safe


class DeadlineExceeded(ApiError):
    """DEADLINE_EXCEEDED: the RPC's deadline, or a wait's timeout, passed."""


_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: FailedPrecondition,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}


def _trailers(call: grpc.Call) -> dict[str, str]:
    try:
        metadata = call.trailing_metadata() or ()
    except Exception:  # pragma: no cover - a non-call RpcError
        metadata = ()
    return {key: value for key, value in metadata if isinstance(value, str)}


def from_rpc_error(error: grpc.RpcError) -> ApiError:
    """The precise error for a failed RPC."""
    # The errors grpc raises for RPCs are also grpc.Call (code, details,
    # trailing metadata).
    call = cast(grpc.Call, error)
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    trailers = _trailers(call)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = None
        if RETRY_AFTER_METADATA in trailers:
            try:
                retry_after = int(trailers[RETRY_AFTER_METADATA]) / 1000.0
            except ValueError:
                pass
        return ResourceExhausted(code, message, retry_after)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(code, message, RETRY_SAFE_METADATA in trailers)
    return _BY_CODE.get(code, ApiError)(code, message)
