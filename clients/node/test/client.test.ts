// Offline tests always; cluster tests when FAAS_CLIENT_TEST_CONTEXT names a
// context of $FAASCTL_CONFIG (tests/tests/e2e/clients.rs sets it, and
// FAAS_CLIENT_TEST_HELLO / _FAIL / _SLEEP: functions that greet, raise, sleep).
import { test } from "node:test";
import * as assert from "node:assert/strict";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as faas from "../src/index";

test("contexts resolve as faasctl resolves them", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "faas-node-"));
  fs.writeFileSync(path.join(dir, "ca.crt"), "PEM");
  fs.writeFileSync(path.join(dir, "token"), "id.secret\n");
  const file = path.join(dir, "config.toml");
  fs.writeFileSync(
    file,
    `current_context = "a"\n[contexts.a]\nendpoint = "https://a:1,https://b:2"\nca_file = "${dir}/ca.crt"\ntoken_file = "${dir}/token"\nnamespace = "web"\n[contexts.b]\n`,
  );
  const s = faas.resolve({}, file);
  assert.deepEqual(s.endpoints, ["https://a:1", "https://b:2"]);
  assert.equal(s.caPem?.toString(), "PEM");
  assert.equal(s.token, "id.secret");
  assert.equal(s.namespace, "web");
  const env = faas.overridesFromEnv({ FAAS_ENDPOINT: "c:3", FAAS_TOKEN: "x.y", FAAS_NAMESPACE: "" });
  const o = faas.resolve(env, file);
  assert.deepEqual([o.endpoints, o.token, o.namespace], [["c:3"], "x.y", "web"]);
  assert.equal(faas.resolve({ context: "b" }, file).endpoints[0], faas.DEFAULT_ENDPOINT);
  assert.throws(() => faas.resolve({ context: "nope" }, file), faas.ConfigError);
  assert.equal(faas.configPath({ FAASCTL_CONFIG: "/x.toml" }), "/x.toml");
});

test("a client context travels as JSON text", () => {
  const client = new faas.Client("https://127.0.0.1:1", { namespace: "team" });
  // The request as it goes out (private in the API, checked here).
  const build = (client as unknown as {
    invokeRequest(fn: string, params: unknown, options: faas.InvokeOptions): Record<string, string>;
  }).invokeRequest.bind(client);
  const request = build("f", { a: 1 }, { clientContext: { custom: { t: 1 } } });
  assert.equal(request.clientContext, '{"custom":{"t":1}}');
  assert.equal(request.namespace, "team");
  assert.equal(build("f", undefined, {}).clientContext, "");
});

test("a token never goes over plain http", async () => {
  const client = new faas.Client("http://127.0.0.1:1", { token: "id.secret" });
  await assert.rejects(client.getCall("x"), faas.ConfigError);
  assert.throws(() => new faas.Client([" "]), faas.ConfigError);
});

const context = process.env.FAAS_CLIENT_TEST_CONTEXT;
const HELLO = process.env.FAAS_CLIENT_TEST_HELLO ?? "";
const FAIL = process.env.FAAS_CLIENT_TEST_FAIL ?? "";
const SLEEP = process.env.FAAS_CLIENT_TEST_SLEEP ?? "";

test("against the cluster", { skip: !context && "FAAS_CLIENT_TEST_CONTEXT is not set" }, async (t) => {
  const client = faas.Client.fromContext(context);
  t.after(() => client.close());

  await t.test("invoke returns the result and timings", async () => {
    const call = await client.invoke(HELLO, { name: "ana" });
    assert.equal(call.status, "SUCCEEDED");
    assert.deepEqual(call.result, { greeting: "hello ana" });
    assert.ok((call.timings?.totalMs ?? 0) > 0);
    assert.equal(faas.raiseForStatus(call), call);
    // A client context reaches the server: an object is taken, anything
    // else is refused there.
    const withContext = await client.invoke(HELLO, { name: "ana" }, { clientContext: { custom: { t: 1 } } });
    assert.equal(withContext.status, "SUCCEEDED");
    await assert.rejects(
      client.invoke(HELLO, {}, { clientContext: [1] as unknown as Record<string, unknown> }),
      faas.InvalidArgument,
    );
  });

  await t.test("submit, wait, get, logs, follow", async () => {
    const id = await client.submit(HELLO, { name: "bo" });
    const call = await client.wait(id, { timeoutMs: 60000 });
    assert.deepEqual([call.id, call.result], [id, { greeting: "hello bo" }]);
    assert.deepEqual((await client.getCall(id)).result, { greeting: "hello bo" });
    assert.match((await client.logs(id)).text(), /greeting bo/);
    const id2 = await client.submit(HELLO, { name: "cy" });
    let text = "";
    for await (const piece of client.followLogs(id2)) text += piece.text();
    assert.match(text, /greeting cy/);
  });

  await t.test("listings", async () => {
    const id = await client.submit(HELLO, { name: "di" });
    await client.wait(id);
    assert.ok((await client.listCalls({ function: HELLO })).some((c) => c.id === id));
    assert.equal((await client.listCalls({ limit: 1 })).length, 1);
    const done = await client.listCalls({ status: "SUCCEEDED", namespace: faas.ALL_NAMESPACES });
    assert.ok(done.length > 0 && done.every((c) => c.status === "SUCCEEDED"));
    const names = (await client.listFunctions()).map((f) => f.name);
    assert.ok(names.includes(HELLO) && names.includes(FAIL));
    assert.deepEqual(await client.listFunctions({ runtime: "nope" }), []);
  });

  await t.test("a failing function is a record", async () => {
    const call = await client.invoke(FAIL, { why: "test" });
    assert.equal(call.status, "FAILED");
    assert.equal(call.error?.reason, "error");
    assert.match(call.error?.logTail ?? "", /boom: test/);
    assert.throws(() => faas.raiseForStatus(call), faas.CallFailed);
  });

  await t.test("errors are precise", async () => {
    await assert.rejects(client.invoke("no-such-function", {}), faas.NotFound);
    await assert.rejects(client.invoke(HELLO, undefined, { paramsJson: "{oops" }), faas.InvalidArgument);
    await assert.rejects(client.getCall("0192f1a0-0000-7000-8000-000000000000"), faas.NotFound);
    const slow = await client.submit(SLEEP, { seconds: 2 });
    await assert.rejects(client.wait(slow, { timeoutMs: 200 }), faas.DeadlineExceeded);
    assert.deepEqual((await client.wait(slow)).result, { slept: 2 });
    const settings = faas.resolve({ context });
    const stranger = new faas.Client(client.endpoints, { caPem: settings.caPem, token: "nobody.nothing" });
    await assert.rejects(stranger.invoke(HELLO, {}), faas.Unauthenticated);
    stranger.close();
  });
});
