"""Against a running cluster: tests/tests/e2e/clients.rs starts one and runs
this with FAAS_CLIENT_TEST_CONTEXT (a context of the file FAASCTL_CONFIG
names), FAAS_CLIENT_TEST_HELLO (a function greeting event["name"] and
printing "greeting NAME"), FAAS_CLIENT_TEST_FAIL (one that raises "boom:
WHY"), FAAS_CLIENT_TEST_SLEEP (one that sleeps event["seconds"]) and
FAAS_CLIENT_TEST_TICKS (one that prints "tick I" event["count"] times,
every event["every"] seconds).
Skipped without them."""

from __future__ import annotations

import os
import unittest

import faas_client
from faas_client import CallStatus, Client

ENV = os.environ
CONTEXT = ENV.get("FAAS_CLIENT_TEST_CONTEXT")
HELLO = ENV.get("FAAS_CLIENT_TEST_HELLO", "")
FAIL = ENV.get("FAAS_CLIENT_TEST_FAIL", "")
SLEEP = ENV.get("FAAS_CLIENT_TEST_SLEEP", "")
TICKS = ENV.get("FAAS_CLIENT_TEST_TICKS", "")


@unittest.skipUnless(CONTEXT, "no cluster: FAAS_CLIENT_TEST_CONTEXT is not set")
class StackTest(unittest.TestCase):
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.client = Client.from_context(CONTEXT)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()

    def test_invoke_returns_the_result_and_timings(self) -> None:
        call = self.client.invoke(HELLO, {"name": "ana"})
        self.assertEqual(call.status, CallStatus.SUCCEEDED, call.error)
        self.assertEqual(call.result, {"greeting": "hello ana"})
        self.assertEqual(call.params, {"name": "ana"})
        self.assertEqual(call.function, HELLO)
        self.assertGreater(call.timings.total_ms, 0)
        self.assertIs(call.raise_for_status(), call)

    def test_submit_wait_get_logs(self) -> None:
        call_id = self.client.submit(HELLO, {"name": "bo"})
        self.assertTrue(call_id)
        call = self.client.wait(call_id, timeout=60)
        self.assertEqual(call.id, call_id)
        self.assertEqual(call.result, {"greeting": "hello bo"})
        self.assertEqual(self.client.get_call(call_id).result, {"greeting": "hello bo"})
        logs = self.client.logs(call_id)
        self.assertIn("greeting bo", logs.text)
        self.assertFalse(logs.truncated)
        pieces = list(self.client.logs(call_id, follow=True))
        self.assertIn("greeting bo", "".join(p.text for p in pieces))

    def test_follow_ends_with_the_call(self) -> None:
        call_id = self.client.submit(HELLO, {"name": "cy"})
        text = b"".join(p.data for p in self.client.logs(call_id, follow=True))
        self.assertIn(b"greeting cy", text)
        self.assertTrue(self.client.get_call(call_id).status.final)

    def test_follow_shows_lines_before_the_call_ends(self) -> None:
        call_id = self.client.submit(TICKS, {"count": 8, "every": 0.4})
        text = b""
        status_at_first_line = None
        for piece in self.client.logs(call_id, follow=True):
            text += piece.data
            if status_at_first_line is None and text.startswith(b"tick 0\n"):
                status_at_first_line = self.client.get_call(call_id).status
        self.assertEqual(status_at_first_line, CallStatus.RUNNING)
        self.assertEqual(text.decode(), "".join(f"tick {i}\n" for i in range(8)))
        self.assertTrue(self.client.get_call(call_id).status.final)

    def test_cancel_ends_a_running_call(self) -> None:
        call_id = self.client.submit(SLEEP, {"seconds": 60})
        call = self.client.cancel(call_id)
        self.assertEqual(call.id, call_id)
        self.assertEqual(call.status, CallStatus.CANCELLED)
        self.assertTrue(call.status.final)
        self.assertEqual(call.error.reason, "cancelled")
        with self.assertRaises(faas_client.FailedPrecondition):
            self.client.cancel(call_id)

    def test_listings(self) -> None:
        call_id = self.client.submit(HELLO, {"name": "di"})
        self.client.wait(call_id)
        calls = self.client.list_calls(HELLO)
        self.assertIn(call_id, [c.id for c in calls])
        self.assertEqual(len(self.client.list_calls(HELLO, limit=1)), 1)
        done = self.client.list_calls(HELLO, status=CallStatus.SUCCEEDED)
        self.assertTrue(done and all(c.succeeded for c in done))
        everywhere = self.client.list_calls(HELLO, namespace=faas_client.ALL_NAMESPACES)
        self.assertIn(call_id, [c.id for c in everywhere])
        names = [f.name for f in self.client.list_functions()]
        self.assertIn(HELLO, names)
        self.assertIn(FAIL, names)
        self.assertEqual([f.name for f in self.client.list_functions(runtime="nope")], [])

    def test_a_failing_function_is_a_record_not_an_exception(self) -> None:
        call = self.client.invoke(FAIL, {"why": "test"})
        self.assertEqual(call.status, CallStatus.FAILED)
        self.assertEqual(call.error.reason, "error")
        self.assertIn("boom: test", call.error.log_tail)
        with self.assertRaises(faas_client.CallFailed):
            call.raise_for_status()

    def test_errors_are_precise(self) -> None:
        with self.assertRaises(faas_client.NotFound):
            self.client.invoke("no-such-function", {})
        with self.assertRaises(faas_client.InvalidArgument):
            self.client.invoke(HELLO, params_json="{oops")
        with self.assertRaises(faas_client.NotFound):
            self.client.get_call("0192f1a0-0000-7000-8000-000000000000")
        slow = self.client.submit(SLEEP, {"seconds": 2})
        with self.assertRaises(faas_client.DeadlineExceeded):
            self.client.wait(slow, timeout=0.2)
        self.assertEqual(self.client.wait(slow).result, {"slept": 2})
        stranger = Client(self.client.endpoints, ca_pem=self._ca(), token="nobody.nothing")
        with stranger, self.assertRaises(faas_client.Unauthenticated):
            stranger.invoke(HELLO, {})

    def _ca(self) -> bytes:
        return faas_client.resolve(faas_client.Overrides(context=CONTEXT)).ca_pem or b""


if __name__ == "__main__":
    unittest.main()
