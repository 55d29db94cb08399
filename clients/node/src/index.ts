/**
 * faas-client: the Node.js client of faas. Connects as faasctl does (its
 * contexts file, FAAS_* over it, the endpoint list in order, TLS with the
 * cluster CA, the API token) and wraps the call verbs of proto/faas/v1/api.proto.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { parse as parseToml } from "smol-toml";

export const DEFAULT_ENDPOINT = "https://127.0.0.1:7070";
export const DEFAULT_NAMESPACE = "default";
/** In listings: every namespace the token may read. */
export const ALL_NAMESPACES = "*";
/** How long invoke and submit are resent on a retry-safe UNAVAILABLE. */
export const SAFE_RETRY_FOR_MS = 8000;
const CONNECT_TIMEOUT_MS = 5000;
const MAX_RECEIVE_BYTES = 64 << 20;
const RETRY_SAFE_METADATA = "faas-retry-safe";
const RETRY_AFTER_METADATA = "retry-after-ms";

// ------------------------------------------------------------------ types

export type CallStatus = "QUEUED" | "RUNNING" | "SUCCEEDED" | "FAILED" | "TIMEOUT" | "CANCELLED" | "UNSPECIFIED";
export type StartKind = "COLD" | "PREWARM_RUNTIME" | "PREWARM_FUNCTION" | "UNSPECIFIED";

export interface Timings {
  queueMs: number;
  runtimeLoadMs: number;
  functionLoadMs: number;
  dependenciesMs: number;
  executionMs: number;
  resultReturnMs: number;
  totalMs: number;
  startKind: StartKind;
}

export interface CallError {
  /** "error", "timeout", "oom", "no_output", "invalid_output", "dependencies", "platform", "node_lost". */
  reason: string;
  message: string;
  logTail: string;
}

/** An invocation; `params` and `result` parsed from their JSON text. */
export interface Call {
  id: string;
  function: string;
  namespace: string;
  functionVersion: number;
  status: CallStatus;
  params: unknown;
  result: unknown;
  error: CallError | null;
  timings: Timings | null;
  node: string;
  spot: number;
  createdAtMs: number;
  finishedAtMs: number;
  attempts: number;
  policy: string;
  logsTruncated: boolean;
}

export interface Logs {
  data: Buffer;
  truncated: boolean;
  text(): string;
}

export interface FunctionInfo {
  name: string;
  namespace: string;
  runtime: string;
  version: number;
}

export function isFinal(status: CallStatus): boolean {
  return status === "SUCCEEDED" || status === "FAILED" || status === "TIMEOUT" || status === "CANCELLED";
}

// ----------------------------------------------------------------- errors

export class FaasError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}
export class ConfigError extends FaasError {}
export class Unreachable extends FaasError {
  constructor(public readonly attempts: string[]) {
    super(`cannot reach the control plane: ${attempts.join("; ")}`);
  }
}
export class WaitEnded extends FaasError {}
/** The server's answer: `code` is the gRPC status code. */
export class ApiError extends FaasError {
  constructor(public readonly code: grpc.status, public readonly details: string) {
    super(`${grpc.status[code]}: ${details}`);
  }
}
export class NotFound extends ApiError {}
export class InvalidArgument extends ApiError {}
export class AlreadyExists extends ApiError {}
export class FailedPrecondition extends ApiError {}
export class Unauthenticated extends ApiError {}
export class PermissionDenied extends ApiError {}
export class DeadlineExceeded extends ApiError {}
export class ResourceExhausted extends ApiError {
  /** Seconds to wait before submitting again (admission bounds), else null. */
  retryAfter: number | null = null;
}
export class Unavailable extends ApiError {
  /** Nothing was recorded: sending again is safe. */
  retrySafe = false;
}
/** Raised by `raiseForStatus` for a call that did not succeed. */
export class CallFailed extends FaasError {
  constructor(public readonly call: Call) {
    const e = call.error;
    super(`call ${call.id} ${call.status.toLowerCase()}${e ? `: ${e.reason}: ${e.message}` : ""}`);
  }
}

/** The call itself if it succeeded, else CallFailed. */
export function raiseForStatus(call: Call): Call {
  if (call.status !== "SUCCEEDED") throw new CallFailed(call);
  return call;
}

function fromServiceError(e: grpc.ServiceError): ApiError {
  const byCode: Partial<Record<grpc.status, new (c: grpc.status, d: string) => ApiError>> = {
    [grpc.status.NOT_FOUND]: NotFound,
    [grpc.status.INVALID_ARGUMENT]: InvalidArgument,
    [grpc.status.OUT_OF_RANGE]: InvalidArgument,
    [grpc.status.ALREADY_EXISTS]: AlreadyExists,
    [grpc.status.FAILED_PRECONDITION]: FailedPrecondition,
    [grpc.status.ABORTED]: FailedPrecondition,
    [grpc.status.UNAUTHENTICATED]: Unauthenticated,
    [grpc.status.PERMISSION_DENIED]: PermissionDenied,
    [grpc.status.DEADLINE_EXCEEDED]: DeadlineExceeded,
  };
  const details = e.details ?? e.message;
  if (e.code === grpc.status.RESOURCE_EXHAUSTED) {
    const error = new ResourceExhausted(e.code, details);
    const hint = e.metadata?.get(RETRY_AFTER_METADATA)[0];
    if (hint !== undefined && !Number.isNaN(Number(hint))) error.retryAfter = Number(hint) / 1000;
    return error;
  }
  if (e.code === grpc.status.UNAVAILABLE) {
    const error = new Unavailable(e.code, details);
    error.retrySafe = (e.metadata?.get(RETRY_SAFE_METADATA).length ?? 0) > 0;
    return error;
  }
  const Kind = byCode[e.code] ?? ApiError;
  return new Kind(e.code, details);
}

// ----------------------------------------------------------------- config

export interface Overrides {
  context?: string;
  endpoints?: string[];
  token?: string;
  tokenFile?: string;
  caFile?: string;
  namespace?: string;
}

export interface Settings {
  endpoints: string[];
  caPem: Buffer | null;
  token: string | null;
  namespace: string;
}

/** faasctl's contexts file: $FAASCTL_CONFIG, else $XDG_CONFIG_HOME/faas/config.toml, else ~/.config/faas/config.toml. */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FAASCTL_CONFIG) return env.FAASCTL_CONFIG;
  const base = env.XDG_CONFIG_HOME || path.join(env.HOME || os.homedir(), ".config");
  return path.join(base, "faas", "config.toml");
}

/** FAAS_CONTEXT, FAAS_ENDPOINT (comma-separated), FAAS_TOKEN, FAAS_TOKEN_FILE, FAAS_CA_FILE, FAAS_NAMESPACE. */
export function overridesFromEnv(env: NodeJS.ProcessEnv = process.env): Overrides {
  const v = (name: string) => env[name] || undefined;
  return {
    context: v("FAAS_CONTEXT"),
    endpoints: v("FAAS_ENDPOINT")?.split(","),
    token: v("FAAS_TOKEN"),
    tokenFile: v("FAAS_TOKEN_FILE"),
    caFile: v("FAAS_CA_FILE"),
    namespace: v("FAAS_NAMESPACE"),
  };
}

function readFile(file: string, what: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new ConfigError(`reading the ${what} ${file}: ${(e as Error).message}`);
  }
}

/** Settings from `overrides` over the chosen context over the defaults, as faasctl resolves them. */
export function resolve(overrides: Overrides, file: string = configPath()): Settings {
  let data: Record<string, any> = {};
  if (fs.existsSync(file)) {
    try {
      data = parseToml(fs.readFileSync(file, "utf8"));
    } catch (e) {
      throw new ConfigError(`parsing ${file}: ${(e as Error).message}`);
    }
  }
  const name = overrides.context || data.current_context;
  let chosen: Record<string, string> = {};
  if (name) {
    chosen = data.contexts?.[name];
    if (!chosen) throw new ConfigError(`no context ${JSON.stringify(name)} in ${file} (faasctl context ls)`);
  }
  const endpoints = overrides.endpoints?.length
    ? overrides.endpoints
    : chosen.endpoint
      ? chosen.endpoint.split(",")
      : [DEFAULT_ENDPOINT];
  let token: string | null = null;
  if (overrides.token) token = overrides.token;
  else if (overrides.tokenFile) token = readFile(overrides.tokenFile, "token file").toString().trim();
  else if (chosen.token) token = chosen.token;
  else if (chosen.token_file) token = readFile(chosen.token_file, "token file").toString().trim();
  const caFile = overrides.caFile || chosen.ca_file;
  return {
    endpoints,
    caPem: caFile ? readFile(caFile, "CA certificate") : null,
    token,
    namespace: overrides.namespace || chosen.namespace || DEFAULT_NAMESPACE,
  };
}

// ----------------------------------------------------------------- client

function loadApi(): any {
  const candidates = [
    path.join(__dirname, "proto"), // the published package (dist/proto)
    path.join(__dirname, "..", "..", "..", "proto"), // the repository
    path.join(__dirname, "..", "..", "..", "..", "proto"), // the repository, from dist-test/src
  ];
  const root = candidates.find((dir) => fs.existsSync(path.join(dir, "faas", "v1", "api.proto")));
  if (!root) throw new ConfigError("api.proto not found beside the package");
  const definition = protoLoader.loadSync("faas/v1/api.proto", {
    includeDirs: [root],
    longs: Number,
    enums: String,
    defaults: true,
  });
  return (grpc.loadPackageDefinition(definition) as any).faas.v1;
}

let api: any = null;

function parseJson(text: string): unknown {
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function strip(value: string, prefix: string): string {
  return value.startsWith(prefix) ? value.slice(prefix.length) : value;
}

function toCall(m: any): Call {
  const t = m.timings;
  return {
    id: m.id,
    function: m.function,
    namespace: m.namespace || DEFAULT_NAMESPACE,
    functionVersion: m.functionVersion,
    status: strip(m.status, "CALL_STATUS_") as CallStatus,
    params: parseJson(m.paramsJson),
    // Bytes the function returned come back as a Buffer.
    result: m.resultBase64 ? Buffer.from(parseJson(m.resultJson) as string, "base64") : parseJson(m.resultJson),
    error: m.error && (m.error.reason || m.error.message) ? { reason: m.error.reason, message: m.error.message, logTail: m.error.logTail } : null,
    timings: t
      ? {
          queueMs: t.queueMs,
          runtimeLoadMs: t.runtimeLoadMs,
          functionLoadMs: t.functionLoadMs,
          dependenciesMs: t.dependenciesMs,
          executionMs: t.executionMs,
          resultReturnMs: t.resultReturnMs,
          totalMs: t.totalMs,
          startKind: strip(t.startKind, "START_KIND_") as StartKind,
        }
      : null,
    node: m.node,
    spot: m.spot,
    createdAtMs: m.createdAtMs,
    finishedAtMs: m.finishedAtMs,
    attempts: m.attempts,
    policy: m.policy,
    logsTruncated: m.logsTruncated,
  };
}

export interface ClientOptions {
  /** The cluster CA (PEM) that signed the control plane's certificate. */
  caPem?: Buffer | string | null;
  /** The API token ("<id>.<secret>"). */
  token?: string | null;
  namespace?: string;
  /** Deadline of each RPC, ms; none by default. */
  timeoutMs?: number;
}

export interface InvokeOptions {
  namespace?: string;
  /** The params as JSON text, instead of `params`. */
  paramsJson?: string;
  /** Lambda's client context (an object of at most 3583 bytes as JSON): the function's context.clientContext / context.client_context. */
  clientContext?: Record<string, unknown>;
}

export interface CallFilter {
  function?: string;
  status?: CallStatus;
  /** At most this many, newest first; 0: all. */
  limit?: number;
  namespace?: string;
}

/** A connection to a faas cluster, acting in one namespace; connects on the first request. */
export class Client {
  readonly endpoints: string[];
  readonly namespace: string;
  private readonly metadata = new grpc.Metadata();
  private readonly caPem: Buffer | null;
  private readonly timeoutMs?: number;
  private readonly hasToken: boolean;
  private calls: any = null;
  private functions: any = null;

  constructor(endpoints: string | string[], options: ClientOptions = {}) {
    const list = typeof endpoints === "string" ? endpoints.split(",") : endpoints;
    this.endpoints = list.map((e) => e.trim()).filter((e) => e);
    if (this.endpoints.length === 0) throw new ConfigError("no endpoint given");
    this.caPem = typeof options.caPem === "string" ? Buffer.from(options.caPem) : options.caPem ?? null;
    this.hasToken = !!options.token;
    if (options.token) {
      const token = options.token.trim();
      if (!/^[\x20-\x7e]+$/.test(token)) throw new ConfigError("a token must be printable ASCII");
      this.metadata.set("authorization", `Bearer ${token}`);
    }
    this.namespace = options.namespace || DEFAULT_NAMESPACE;
    this.timeoutMs = options.timeoutMs;
  }

  /** The named context of faasctl's file (undefined: the current one), FAAS_* over it. */
  static fromContext(name?: string, options: { configFile?: string; timeoutMs?: number } = {}): Client {
    const overrides = overridesFromEnv();
    if (name) overrides.context = name;
    const s = resolve(overrides, options.configFile ?? configPath());
    return new Client(s.endpoints, { caPem: s.caPem, token: s.token, namespace: s.namespace, timeoutMs: options.timeoutMs });
  }

  close(): void {
    this.calls?.close();
    this.functions?.close();
    this.calls = this.functions = null;
  }

  private async open(endpoints: string[]): Promise<{ calls: any; functions: any }> {
    api ??= loadApi();
    const attempts: string[] = [];
    const options = { "grpc.max_receive_message_length": MAX_RECEIVE_BYTES };
    for (const endpoint of endpoints) {
      let target = endpoint;
      let tls = true;
      if (endpoint.startsWith("https://")) target = endpoint.slice(8);
      else if (endpoint.startsWith("http://")) [target, tls] = [endpoint.slice(7), false];
      else if (endpoint.includes("://")) throw new ConfigError(`invalid endpoint ${endpoint}: use https://HOST:PORT`);
      if (this.hasToken && !tls) {
        throw new ConfigError(`invalid endpoint ${endpoint}: an API token is never sent over plain http: use an https:// endpoint`);
      }
      const credentials = tls ? grpc.credentials.createSsl(this.caPem) : grpc.credentials.createInsecure();
      const calls = new api.CallService(target.replace(/\/$/, ""), credentials, options);
      const ready = await new Promise<Error | undefined>((done) =>
        calls.waitForReady(Date.now() + CONNECT_TIMEOUT_MS, (e?: Error) => done(e)),
      );
      if (ready) {
        calls.close();
        attempts.push(`${endpoint}: ${ready.message}`);
        continue;
      }
      const functions = new api.FunctionService(target.replace(/\/$/, ""), credentials, options);
      return { calls, functions };
    }
    throw new Unreachable(attempts);
  }

  private async stubs(): Promise<{ calls: any; functions: any }> {
    if (!this.calls) Object.assign(this, await this.open(this.endpoints));
    return { calls: this.calls, functions: this.functions };
  }

  private options(): grpc.CallOptions {
    return this.timeoutMs ? { deadline: Date.now() + this.timeoutMs } : {};
  }

  private unary<T>(stub: any, method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) =>
      stub[method](request, this.metadata, this.options(), (e: grpc.ServiceError | null, reply: T) =>
        e ? reject(fromServiceError(e)) : resolve(reply),
      ),
    );
  }

  /** Sends a call RPC again, on the next endpoints, while the answer is a retry-safe UNAVAILABLE (up to 8 s). */
  private async retryWhenSafe<T>(method: string, request: object): Promise<T> {
    const deadline = Date.now() + SAFE_RETRY_FOR_MS;
    let { calls } = await this.stubs();
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.unary<T>(calls, method, request);
      } catch (e) {
        if (!(e instanceof Unavailable) || !e.retrySafe || Date.now() >= deadline) throw e;
      }
      await new Promise((r) => setTimeout(r, 100 * Math.min(attempt, 5)));
      const n = attempt % this.endpoints.length;
      try {
        const opened = await this.open([...this.endpoints.slice(n), ...this.endpoints.slice(0, n)]);
        this.close();
        Object.assign(this, opened);
        calls = opened.calls;
      } catch {
        // try again on the next round
      }
    }
  }

  private invokeRequest(fn: string, params: unknown, options: InvokeOptions) {
    return {
      function: fn,
      paramsJson: options.paramsJson ?? (params === undefined ? "{}" : JSON.stringify(params)),
      namespace: options.namespace || this.namespace,
      clientContext: options.clientContext === undefined ? "" : JSON.stringify(options.clientContext),
    };
  }

  /** Runs `fn` with `params` and resolves to the final record; a failing function is a record (status FAILED/TIMEOUT), not a rejection. */
  async invoke(fn: string, params?: unknown, options: InvokeOptions = {}): Promise<Call> {
    return toCall(await this.retryWhenSafe("Invoke", this.invokeRequest(fn, params, options)));
  }

  /** Records a call of `fn` durably and resolves to its id at once. */
  async submit(fn: string, params?: unknown, options: InvokeOptions = {}): Promise<string> {
    const reply = await this.retryWhenSafe<{ callId: string }>("Submit", this.invokeRequest(fn, params, options));
    return reply.callId;
  }

  /** Follows call `id` to its final record; with `timeoutMs`, rejects with DeadlineExceeded after it. */
  async wait(id: string, options: { timeoutMs?: number } = {}): Promise<Call> {
    const { calls } = await this.stubs();
    const stream = calls.WaitCall({ id, timeoutMs: options.timeoutMs ? Math.max(1, Math.round(options.timeoutMs)) : 0 }, this.metadata, this.options());
    let last: Call | null = null;
    try {
      for await (const update of stream) {
        last = toCall(update);
        if (isFinal(last.status)) {
          stream.cancel();
          break;
        }
      }
    } catch (e) {
      throw fromServiceError(e as grpc.ServiceError);
    }
    if (!last) throw new WaitEnded(`the server ended the wait for call ${id} without a record`);
    if (!isFinal(last.status)) throw new WaitEnded(`the server ended the wait for call ${id} while it was ${last.status.toLowerCase()}`);
    return last;
  }

  /** The record of call `id` as it is now. */
  async getCall(id: string): Promise<Call> {
    return toCall(await this.unary((await this.stubs()).calls, "GetCall", { id }));
  }

  /** Cancels call `id`: queued, it never runs; running, its container is killed. Resolves to its record, CANCELLED; a call that has ended is refused (FAILED_PRECONDITION). */
  async cancel(id: string): Promise<Call> {
    return toCall(await this.unary((await this.stubs()).calls, "CancelCall", { id }));
  }

  /** The logs of call `id` as recorded so far (a running call has none yet). */
  async logs(id: string): Promise<Logs> {
    const reply = await this.unary<{ logs: Buffer; truncated: boolean }>((await this.stubs()).calls, "GetCallLogs", { id });
    const data = Buffer.from(reply.logs);
    return { data, truncated: reply.truncated, text: () => data.toString("utf8") };
  }

  /**
   * The logs of call `id` as the call writes them (FollowCallLogs), ending with
   * the call: a queued call's once it runs, then the rest of its final log.
   * Pieces a slow follower missed are marked in the text.
   */
  async *followLogs(id: string): AsyncIterable<Logs> {
    const { calls } = await this.stubs();
    const stream = calls.FollowCallLogs({ id }, this.metadata);
    let expected = 0;
    try {
      for await (const chunk of stream as AsyncIterable<{ data: Buffer; offset: number; final: boolean; truncated: boolean }>) {
        let data = Buffer.from(chunk.data);
        const offset = Number(chunk.offset);
        if (!chunk.final && offset > expected) {
          data = Buffer.concat([Buffer.from(`\n[... ${offset - expected} bytes not followed ...]\n`), data]);
        }
        expected = offset + chunk.data.length;
        const piece = data;
        yield { data: piece, truncated: chunk.truncated, text: () => piece.toString("utf8") };
      }
    } catch (e) {
      throw fromServiceError(e as grpc.ServiceError);
    }
  }

  /** Calls, newest first, without params and results (see getCall); pages through ListCalls. */
  async listCalls(filter: CallFilter = {}): Promise<Call[]> {
    const { calls: stub } = await this.stubs();
    const limit = filter.limit ?? 0;
    const out: Call[] = [];
    let pageToken = "";
    for (;;) {
      const page = await this.unary<{ calls: any[]; nextPageToken: string }>(stub, "ListCalls", {
        function: filter.function ?? "",
        status: filter.status ? `CALL_STATUS_${filter.status}` : "CALL_STATUS_UNSPECIFIED",
        pageSize: limit === 0 ? 1000 : Math.min(limit - out.length, 1000),
        pageToken,
        namespace: filter.namespace || this.namespace,
      });
      out.push(...page.calls.map(toCall));
      if (limit && out.length >= limit) return out.slice(0, limit);
      if (!page.nextPageToken) return out;
      pageToken = page.nextPageToken;
    }
  }

  /** The functions of the namespace; only `runtime`'s if given. */
  async listFunctions(options: { runtime?: string; namespace?: string } = {}): Promise<FunctionInfo[]> {
    const reply = await this.unary<{ functions: any[] }>((await this.stubs()).functions, "ListFunctions", {
      runtime: options.runtime ?? "",
      namespace: options.namespace || this.namespace,
    });
    return reply.functions.map((f) => ({ name: f.name, namespace: f.namespace || DEFAULT_NAMESPACE, runtime: f.runtime, version: f.version }));
  }
}
