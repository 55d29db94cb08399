"""What needs no cluster: the contexts file, errors, records."""

from __future__ import annotations

import os
import pathlib
import tempfile
import unittest

import grpc

import faas_client
from faas_client import api_pb2, config, errors


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, trailers=()):
        self._code, self._details, self._trailers = code, details, trailers

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailers


class ConfigTest(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.addCleanup(self.dir.cleanup)
        d = pathlib.Path(self.dir.name)
        (d / "ca.crt").write_bytes(b"PEM")
        (d / "token").write_text("id.secret\n")
        self.path = d / "config.toml"
        self.path.write_text(
            'current_context = "a"\n'
            "[contexts.a]\n"
            'endpoint = "https://a:1,https://b:2"\n'
            f'ca_file = "{d / "ca.crt"}"\n'
            f'token_file = "{d / "token"}"\n'
            'namespace = "web"\n'
            "[contexts.b]\n"
        )

    def test_the_current_context(self) -> None:
        s = config.resolve(config.Overrides(), self.path)
        self.assertEqual(s.endpoints, ["https://a:1", "https://b:2"])
        self.assertEqual(s.ca_pem, b"PEM")
        self.assertEqual(s.token, "id.secret")
        self.assertEqual(s.namespace, "web")
        self.assertNotIn("id.secret", repr(s))

    def test_the_environment_wins(self) -> None:
        env = {"FAAS_ENDPOINT": "c:3,d:4", "FAAS_TOKEN": "x.y", "FAAS_NAMESPACE": ""}
        s = config.resolve(config.Overrides.from_env(env), self.path)
        self.assertEqual(s.endpoints, ["c:3", "d:4"])
        self.assertEqual(s.token, "x.y")
        self.assertEqual(s.namespace, "web", "an empty variable is unset")

    def test_named_and_missing_contexts(self) -> None:
        s = config.resolve(config.Overrides(context="b"), self.path)
        self.assertEqual((s.endpoints, s.token, s.namespace), ([config.DEFAULT_ENDPOINT], None, "default"))
        with self.assertRaises(faas_client.ConfigError):
            config.resolve(config.Overrides(context="nope"), self.path)
        missing = pathlib.Path(self.dir.name) / "none.toml"
        self.assertEqual(config.resolve(config.Overrides(), missing).endpoints, [config.DEFAULT_ENDPOINT])

    def test_config_path(self) -> None:
        self.assertEqual(config.config_path({"FAASCTL_CONFIG": "/x.toml"}), pathlib.Path("/x.toml"))
        self.assertEqual(
            config.config_path({"HOME": "/home/u"}), pathlib.Path("/home/u/.config/faas/config.toml")
        )

    def test_tokens_never_go_over_http(self) -> None:
        client = faas_client.Client("http://127.0.0.1:1", token="id.secret")
        with self.assertRaises(faas_client.ConfigError):
            client.get_call("x")
        with self.assertRaises(faas_client.ConfigError):
            faas_client.Client([" "])


class ErrorsTest(unittest.TestCase):
    def test_codes_become_precise_classes(self) -> None:
        e = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.NOT_FOUND, "function 'x' not found"))
        self.assertIsInstance(e, faas_client.NotFound)
        self.assertEqual(str(e), "NOT_FOUND: function 'x' not found")
        e = errors.from_rpc_error(
            FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate", (("retry-after-ms", "250"),))
        )
        self.assertIsInstance(e, faas_client.ResourceExhausted)
        self.assertEqual(e.retry_after, 0.25)
        e = errors.from_rpc_error(
            FakeRpcError(grpc.StatusCode.UNAVAILABLE, "no leader", (("faas-retry-safe", "1"),))
        )
        self.assertTrue(isinstance(e, faas_client.Unavailable) and e.retry_safe)
        e = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "etcd"))
        self.assertFalse(e.retry_safe)
        e = errors.from_rpc_error(FakeRpcError(grpc.StatusCode.INTERNAL, "oops"))
        self.assertIs(type(e), faas_client.ApiError)


class RecordsTest(unittest.TestCase):
    def test_a_call_record(self) -> None:
        m = api_pb2.Call(
            id="c1",
            function="f",
            status=api_pb2.CALL_STATUS_FAILED,
            params_json='{"a":1}',
            error=api_pb2.CallError(reason="error", message="boom", log_tail="trace"),
            timings=api_pb2.Timings(total_ms=3.5, start_kind=api_pb2.START_KIND_COLD),
        )
        call = faas_client.Call.from_proto(m)
        self.assertEqual(call.params, {"a": 1})
        self.assertEqual(call.namespace, "default")
        self.assertEqual(call.timings.start_kind, faas_client.StartKind.COLD)
        self.assertTrue(call.status.final)
        with self.assertRaisesRegex(faas_client.CallFailed, "boom"):
            call.raise_for_status()


class RequestsTest(unittest.TestCase):
    def test_a_client_context_travels_as_json(self) -> None:
        client = faas_client.Client("https://127.0.0.1:1", namespace="team")
        try:
            request = client._invoke_request("f", {"a": 1}, None, None, {"custom": {"t": 1}})
            self.assertEqual(request.client_context, '{"custom": {"t": 1}}')
            self.assertEqual(request.namespace, "team")
            self.assertEqual(client._invoke_request("f", None, None, None).client_context, "")
        finally:
            client.close()


if __name__ == "__main__":
    unittest.main()
