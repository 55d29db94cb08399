"""The client: connects as faasctl does and wraps the call verbs."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable, Iterator, Literal, Optional, Sequence, TypeVar, Union, overload

import grpc

from . import config as _config
from ._proto import api_pb2, api_pb2_grpc
from .errors import ConfigError, FaasError, Unavailable, Unreachable, WaitEnded, from_rpc_error
from .types import Call, CallStatus, Function, Logs

#: How long invoke and submit are sent again while the control plane
#: answers UNAVAILABLE marked retry-safe (a leader change: nothing recorded).
SAFE_RETRY_FOR = 8.0
#: How long one endpoint may take to accept a connection.
CONNECT_TIMEOUT = 5.0
#: Replies (results, logs) may exceed gRPC's 4 MiB default.
MAX_RECEIVE_BYTES = 64 << 20
#: Namespace that lists every namespace the token may read.
ALL_NAMESPACES = "*"

T = TypeVar("T")


def _target(endpoint: str) -> tuple[str, bool]:
    """(host:port, tls) of an endpoint; host:port alone means https."""
    endpoint = endpoint.strip()
    if endpoint.startswith("https://"):
        return endpoint[len("https://") :].rstrip("/"), True
    if endpoint.startswith("http://"):
        return endpoint[len("http://") :].rstrip("/"), False
    if "://" in endpoint:
        raise ConfigError(f"invalid endpoint {endpoint!r}: use https://HOST:PORT")
    return endpoint, True


class Client:
    """A connection to a faas cluster, acting in one namespace.

    Connects on the first request to the first endpoint that accepts.
    Thread-safe; use as a context manager or call `close()`.
    """

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]],
        *,
        ca_pem: Union[bytes, str, None] = None,
        token: Optional[str] = None,
        namespace: str = _config.DEFAULT_NAMESPACE,
        timeout: Optional[float] = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self.endpoints = [e.strip() for e in endpoints if e.strip()]
        if not self.endpoints:
            raise ConfigError("no endpoint given")
        self._ca_pem = ca_pem.encode() if isinstance(ca_pem, str) else ca_pem
        self._metadata: tuple[tuple[str, str], ...] = ()
        if token:
            token = token.strip()
            if not token.isascii() or not token.isprintable():
                raise ConfigError("a token must be printable ASCII")
            self._metadata = (("authorization", f"Bearer {token}"),)
        self.namespace = namespace
        self.timeout = timeout
        self._lock = threading.Lock()
        self._channel: Optional[grpc.Channel] = None
        self._calls: Optional[api_pb2_grpc.CallServiceStub] = None

    @classmethod
    def from_context(
        cls,
        name: Optional[str] = None,
        *,
        config_file: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> "Client":
        """The named context of faasctl's file (None: the current one), with
        the FAAS_* variables over it, as faasctl reads them."""
        import pathlib

        overrides = _config.Overrides.from_env()
        if name:
            overrides.context = name
        settings = _config.resolve(overrides, pathlib.Path(config_file) if config_file else None)
        return cls(
            settings.endpoints,
            ca_pem=settings.ca_pem,
            token=settings.token,
            namespace=settings.namespace,
            timeout=timeout,
        )

    # ---------------------------------------------------------- connection

    def _open(self, endpoints: Sequence[str]) -> grpc.Channel:
        attempts = []
        options = [("grpc.max_receive_message_length", MAX_RECEIVE_BYTES)]
        for endpoint in endpoints:
            target, tls = _target(endpoint)
            if self._metadata and not tls:
                raise ConfigError(
                    f"invalid endpoint {endpoint!r}: an API token is never sent over plain "
                    "http: use an https:// endpoint"
                )
            if tls:
                credentials = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
                channel = grpc.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.insecure_channel(target, options=options)
            try:
                grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
            except grpc.FutureTimeoutError:
                channel.close()
                attempts.append(f"{endpoint}: not ready within {CONNECT_TIMEOUT:g} s")
                continue
            return channel
        raise Unreachable(attempts)

    def _stub(self) -> api_pb2_grpc.CallServiceStub:
        with self._lock:
            if self._calls is None:
                self._channel = self._open(self.endpoints)
                self._calls = api_pb2_grpc.CallServiceStub(self._channel)
            return self._calls

    @property
    def channel(self) -> grpc.Channel:
        """The gRPC channel, for the generated stubs of the other services
        (`faas_client.api_pb2_grpc.FunctionServiceStub(client.channel)`;
        pass `metadata=client.metadata`)."""
        self._stub()
        assert self._channel is not None
        return self._channel

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The request metadata carrying the token."""
        return self._metadata

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = None
            self._calls = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rpc(self, method: Callable[..., T], request: Any, timeout: Optional[float] = None) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _retry_when_safe(self, name: str, request: Any) -> Any:
        """Sends `request` with CallService.`name`, again on the next
        endpoints while the answer is a retry-safe UNAVAILABLE (up to
        SAFE_RETRY_FOR); nothing else is resent."""
        deadline = time.monotonic() + SAFE_RETRY_FOR
        stub = self._stub()
        attempt = 0
        while True:
            try:
                return self._rpc(getattr(stub, name), request)
            except Unavailable as e:
                if not e.retry_safe or time.monotonic() >= deadline:
                    raise
            attempt += 1
            time.sleep(0.1 * min(attempt, 5))
            n = attempt % len(self.endpoints)
            rotated = self.endpoints[n:] + self.endpoints[:n]
            try:
                channel = self._open(rotated)
            except FaasError:
                continue
            with self._lock:
                old, self._channel = self._channel, channel
                self._calls = stub = api_pb2_grpc.CallServiceStub(channel)
            if old is not None:
                old.close()

    # --------------------------------------------------------------- calls

    def _invoke_request(
        self,
        function: str,
        params: Any,
        params_json: Optional[str],
        namespace: Optional[str],
        client_context: Optional[dict] = None,
    ) -> api_pb2.InvokeRequest:
        if params_json is None:
            params_json = "{}" if params is None else json.dumps(params)
        return api_pb2.InvokeRequest(
            function=function,
            params_json=params_json,
            namespace=namespace or self.namespace,
            client_context="" if client_context is None else json.dumps(client_context),
        )

    def invoke(
        self,
        function: str,
        params: Any = None,
        *,
        params_json: Optional[str] = None,
        namespace: Optional[str] = None,
        client_context: Optional[dict] = None,
    ) -> Call:
        """Runs `function` with `params` (JSON-serializable; or the JSON text
        `params_json`) and returns the final record. A function that fails
        is not an exception: see `Call.status`, `Call.error`, or
        `Call.raise_for_status()`. `client_context`: Lambda's client context
        (a dict; the function's context.client_context)."""
        request = self._invoke_request(function, params, params_json, namespace, client_context)
        return Call.from_proto(self._retry_when_safe("Invoke", request))

    def submit(
        self,
        function: str,
        params: Any = None,
        *,
        params_json: Optional[str] = None,
        namespace: Optional[str] = None,
        client_context: Optional[dict] = None,
    ) -> str:
        """Records a call of `function` durably and returns its id at once."""
        request = self._invoke_request(function, params, params_json, namespace, client_context)
        return str(self._retry_when_safe("Submit", request).call_id)

    def wait(self, call_id: str, timeout: Optional[float] = None) -> Call:
        """Follows call `call_id` to its final record; with `timeout`
        (seconds) gives up after it with DeadlineExceeded."""
        timeout_ms = 0 if timeout is None else max(1, int(timeout * 1000))
        request = api_pb2.WaitCallRequest(id=call_id, timeout_ms=timeout_ms)
        stub = self._stub()
        last: Optional[api_pb2.Call] = None
        try:
            for update in stub.WaitCall(request, metadata=self._metadata, timeout=self.timeout):
                last = update
                if Call.from_proto(update).status.final:
                    break
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        if last is None:
            raise WaitEnded(f"the server ended the wait for call {call_id} without a record")
        call = Call.from_proto(last)
        if not call.status.final:
            raise WaitEnded(
                f"the server ended the wait for call {call_id} while it was {call.status.name.lower()}"
            )
        return call

    def get_call(self, call_id: str) -> Call:
        """The record of call `call_id` as it is now."""
        return Call.from_proto(self._rpc(self._stub().GetCall, api_pb2.GetCallRequest(id=call_id)))

    def cancel(self, call_id: str) -> Call:
        """Cancels call `call_id`: queued, it never runs; running, its
        container is killed. Returns its record, CANCELLED; a call that has
        ended is refused (FailedPrecondition)."""
        return Call.from_proto(
            self._rpc(self._stub().CancelCall, api_pb2.CancelCallRequest(id=call_id))
        )

    @overload
    def logs(self, call_id: str, *, follow: Literal[False] = ...) -> Logs: ...

    @overload
    def logs(self, call_id: str, *, follow: Literal[True]) -> Iterator[Logs]: ...

    def logs(self, call_id: str, *, follow: bool = False) -> Union[Logs, Iterator[Logs]]:
        """The logs of call `call_id` as recorded so far (a running call has
        none yet).

        With `follow=True`, an iterator of log pieces as the call writes
        them (FollowCallLogs), ending with the call: a queued call's once it
        runs, then the rest of its final log. Pieces a slow follower missed
        are marked in the text.
        """
        if follow:
            return self._follow_logs(call_id)
        reply = self._rpc(self._stub().GetCallLogs, api_pb2.GetCallLogsRequest(id=call_id))
        return Logs(data=bytes(reply.logs), truncated=reply.truncated)

    def _follow_logs(self, call_id: str) -> Iterator[Logs]:
        request = api_pb2.FollowCallLogsRequest(id=call_id)
        expected = 0
        try:
            # As long as the call runs (its own timeout bounds it).
            for chunk in self._stub().FollowCallLogs(request, metadata=self._metadata):
                data = bytes(chunk.data)
                if not chunk.final and chunk.offset > expected:
                    gap = f"\n[... {chunk.offset - expected} bytes not followed ...]\n"
                    data = gap.encode() + data
                expected = chunk.offset + len(chunk.data)
                yield Logs(data=data, truncated=chunk.truncated)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def list_calls(
        self,
        function: Optional[str] = None,
        *,
        status: Optional[CallStatus] = None,
        limit: int = 0,
        namespace: Optional[str] = None,
    ) -> list[Call]:
        """Calls, newest first, without params and results (see get_call);
        `limit` 0: all of them; namespace "*": every one the token may read."""
        calls: list[Call] = []
        page_token = ""
        stub = self._stub()
        while True:
            wanted = 1000 if limit == 0 else min(limit - len(calls), 1000)
            request = api_pb2.ListCallsRequest(
                function=function or "",
                status=int(status) if status is not None else 0,
                page_size=wanted,
                page_token=page_token,
                namespace=namespace or self.namespace,
            )
            page = self._rpc(stub.ListCalls, request)
            calls.extend(Call.from_proto(c) for c in page.calls)
            if limit and len(calls) >= limit:
                return calls[:limit]
            if not page.next_page_token:
                return calls
            page_token = page.next_page_token

    def list_functions(
        self, runtime: Optional[str] = None, *, namespace: Optional[str] = None
    ) -> list[Function]:
        """The functions of the namespace; only `runtime`'s if given."""
        stub = api_pb2_grpc.FunctionServiceStub(self.channel)
        request = api_pb2.ListFunctionsRequest(
            runtime=runtime or "", namespace=namespace or self.namespace
        )
        return [Function.from_proto(f) for f in self._rpc(stub.ListFunctions, request).functions]
