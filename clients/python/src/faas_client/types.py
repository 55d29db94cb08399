"""The records the client returns: thin, typed views of the API's messages
(the message itself is kept in `raw`)."""

from __future__ import annotations

import base64
import enum
import json
from dataclasses import dataclass
from typing import Any, Optional

from ._proto import api_pb2


class CallStatus(enum.IntEnum):
    UNSPECIFIED = api_pb2.CALL_STATUS_UNSPECIFIED
    QUEUED = api_pb2.CALL_STATUS_QUEUED
    RUNNING = api_pb2.CALL_STATUS_RUNNING
    SUCCEEDED = api_pb2.CALL_STATUS_SUCCEEDED
    FAILED = api_pb2.CALL_STATUS_FAILED
    TIMEOUT = api_pb2.CALL_STATUS_TIMEOUT
    CANCELLED = api_pb2.CALL_STATUS_CANCELLED

    @property
    def final(self) -> bool:
        """SUCCEEDED, FAILED, TIMEOUT or CANCELLED: the call is over."""
        return self in (
            CallStatus.SUCCEEDED,
            CallStatus.FAILED,
            CallStatus.TIMEOUT,
            CallStatus.CANCELLED,
        )


class StartKind(enum.IntEnum):
    UNSPECIFIED = api_pb2.START_KIND_UNSPECIFIED
    COLD = api_pb2.START_KIND_COLD
    PREWARM_RUNTIME = api_pb2.START_KIND_PREWARM_RUNTIME
    PREWARM_FUNCTION = api_pb2.START_KIND_PREWARM_FUNCTION


def _status(value: int) -> CallStatus:
    try:
        return CallStatus(value)
    except ValueError:
        return CallStatus.UNSPECIFIED


def _json(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


@dataclass(frozen=True)
class Timings:
    """Time spent in each phase of a call, ms."""

    queue_ms: float
    runtime_load_ms: float
    function_load_ms: float
    dependencies_ms: float
    execution_ms: float
    result_return_ms: float
    total_ms: float
    start_kind: StartKind


@dataclass(frozen=True)
class CallError:
    """Why a call did not succeed: `reason` is machine-readable ("error",
    "timeout", "oom", ...), `log_tail` the end of its logs."""

    reason: str
    message: str
    log_tail: str


class CallFailed(Exception):
    """Raised by `Call.raise_for_status()` for a call that did not succeed."""

    def __init__(self, call: "Call") -> None:
        error = call.error
        detail = f"{error.reason}: {error.message}" if error else call.status.name.lower()
        super().__init__(f"call {call.id} {call.status.name.lower()}: {detail}")
        self.call = call


@dataclass(frozen=True)
class Call:
    """An invocation: its status, result (parsed JSON; bytes when the function returned bytes), error and timings."""

    id: str
    function: str
    namespace: str
    function_version: int
    status: CallStatus
    params: Any
    result: Any
    error: Optional[CallError]
    timings: Optional[Timings]
    node: str
    spot: int
    created_at_ms: int
    finished_at_ms: int
    attempts: int
    policy: str
    logs_truncated: bool
    raw: api_pb2.Call

    @property
    def succeeded(self) -> bool:
        return self.status == CallStatus.SUCCEEDED

    def raise_for_status(self) -> "Call":
        """The call itself if it succeeded, else CallFailed."""
        if not self.succeeded:
            raise CallFailed(self)
        return self

    @classmethod
    def from_proto(cls, m: api_pb2.Call) -> "Call":
        error = None
        if m.HasField("error") and (m.error.reason or m.error.message):
            error = CallError(m.error.reason, m.error.message, m.error.log_tail)
        timings = None
        if m.HasField("timings"):
            t = m.timings
            try:
                kind = StartKind(t.start_kind)
            except ValueError:
                kind = StartKind.UNSPECIFIED
            timings = Timings(
                t.queue_ms,
                t.runtime_load_ms,
                t.function_load_ms,
                t.dependencies_ms,
                t.execution_ms,
                t.result_return_ms,
                t.total_ms,
                kind,
            )
        return cls(
            id=m.id,
            function=m.function,
            namespace=m.namespace or "default",
            function_version=m.function_version,
            status=_status(m.status),
            params=_json(m.params_json),
            # Bytes the function returned come back as bytes.
            result=base64.b64decode(_json(m.result_json)) if m.result_base64 else _json(m.result_json),
            error=error,
            timings=timings,
            node=m.node,
            spot=m.spot,
            created_at_ms=m.created_at_ms,
            finished_at_ms=m.finished_at_ms,
            attempts=m.attempts,
            policy=m.policy,
            logs_truncated=m.logs_truncated,
            raw=m,
        )


@dataclass(frozen=True)
class Logs:
    """A call's stdout and stderr, interleaved as written; `truncated`: cut
    at the platform's limit."""

    data: bytes
    truncated: bool

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Function:
    """A deployed function."""

    name: str
    namespace: str
    runtime: str
    version: int
    raw: api_pb2.Function

    @classmethod
    def from_proto(cls, m: api_pb2.Function) -> "Function":
        return cls(
            name=m.name,
            namespace=m.namespace or "default",
            runtime=m.runtime,
            version=m.version,
            raw=m,
        )
