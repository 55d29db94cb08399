'use strict';
// faas node runtime bootstrap (the Runtime side of docs/contract.md).
//
// Runs an AWS-Lambda-style handler once: load the module named by
// $FAAS_HANDLER from the function directory (so its node_modules resolve),
// only then read the call's input (under preloading it is a FIFO that yields
// when the call arrives), call handler(event, context) -- awaiting a promise,
// or handler(event, context, callback) -- and write the JSON result to
// $FAAS_OUTPUT. On failure the stack goes to stderr (the call's log) and
// {"type", "message"} to $FAAS_ERROR, and the process exits 1.

const fs = require('fs');
const path = require('path');
const { pathToFileURL } = require('url');

const env = process.env;

// The bootstrap's own messages (a failed load, an uncaught error) go to
// stderr as written; the function's console is Lambda's (patchConsole).
const rawError = console.error.bind(console);

// The call's id once known: Lambda's console lines carry it ("undefined"
// before, as in Lambda's init phase).
let requestId;

// Lambda's console: each console.log/info/warn/error/debug/trace call is
// one line `<ISO time>\t<request id>\t<LEVEL>\t<message>` on stdout, or a
// JSON object with AWS_LAMBDA_LOG_FORMAT=JSON, which alone honours
// AWS_LAMBDA_LOG_LEVEL (as on Lambda).
function patchConsole() {
  const util = require('util');
  const json = (env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
  const order = ['TRACE', 'DEBUG', 'INFO', 'WARN', 'ERROR', 'FATAL'];
  const wanted = (env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase();
  const threshold = json && order.includes(wanted) ? order.indexOf(wanted) : 0;
  const write = (level, args) => {
    if (order.indexOf(level) < threshold) return;
    const timestamp = new Date().toISOString();
    const message = util.format(...args);
    const line = json
      ? JSON.stringify({ timestamp, level, requestId, message })
      : `${timestamp}\t${requestId}\t${level}\t${message}`;
    process.stdout.write(`${line}\n`);
  };
  console.log = (...args) => write('INFO', args);
  console.info = (...args) => write('INFO', args);
  console.warn = (...args) => write('WARN', args);
  console.error = (...args) => write('ERROR', args);
  console.debug = (...args) => write('DEBUG', args);
  console.trace = (...args) => {
    const stack = new Error().stack.split('\n').slice(2).join('\n');
    write('TRACE', [`${util.format(...args)}\n${stack}`]);
  };
}

function exitNow(code) {
  // Do not wait for timers or sockets the function left open: the call is over.
  process.exit(code);
}

function fail(type, message, error) {
  if (error && error.stack) {
    rawError(error.stack);
  } else {
    rawError(`${type}: ${message}`);
  }
  if (env.FAAS_ERROR) {
    try {
      fs.writeFileSync(env.FAAS_ERROR, JSON.stringify({ type, message }));
    } catch (writeError) {
      rawError(`faas: cannot write ${env.FAAS_ERROR}: ${writeError.message}`);
    }
  }
  exitNow(1);
}

function describe(error) {
  if (error instanceof Error) {
    return { type: error.name || 'Error', message: error.message };
  }
  // Lambda code sometimes throws or rejects with plain values.
  let message;
  try {
    message = typeof error === 'string' ? error : JSON.stringify(error);
  } catch (_) {
    message = String(error);
  }
  return { type: 'Error', message: String(message) };
}

// 'index.handler', 'src/app.handler', 'index.nested.handler' (Lambda's rule:
// the file is the part before the first dot of the last path segment).
async function loadHandler(functionDir, setting) {
  const slash = setting.lastIndexOf('/');
  const dirPart = setting.slice(0, slash + 1);
  const base = setting.slice(slash + 1);
  const dot = base.indexOf('.');
  if (dot <= 0 || dot === base.length - 1) {
    fail('Runtime.MalformedHandlerName', `Bad handler '${setting}': expected 'module.function'`);
  }
  const modulePath = path.resolve(functionDir, dirPart + base.slice(0, dot));
  const functionPath = base.slice(dot + 1).split('.');

  let loaded;
  try {
    if (fs.existsSync(modulePath + '.mjs')) {
      loaded = await import(pathToFileURL(modulePath + '.mjs').href);
    } else {
      // require() does not try the .cjs extension by itself.
      const file = fs.existsSync(modulePath + '.cjs') ? modulePath + '.cjs' : modulePath;
      try {
        loaded = require(file);
      } catch (error) {
        if (error && error.code === 'ERR_REQUIRE_ESM') {
          loaded = await import(pathToFileURL(require.resolve(modulePath)).href);
        } else {
          throw error;
        }
      }
    }
  } catch (error) {
    const { message } = describe(error);
    fail('Runtime.ImportModuleError', `Unable to import module '${dirPart}${base.slice(0, dot)}': ${message}`, error);
  }

  let handler = loaded;
  for (const key of functionPath) {
    handler = handler == null ? undefined : handler[key];
  }
  if (handler === undefined && loaded && loaded.default) {
    // An ES module or transpiled code exporting `default = { handler }`.
    handler = loaded.default;
    for (const key of functionPath) {
      handler = handler == null ? undefined : handler[key];
    }
  }
  if (typeof handler !== 'function') {
    fail('Runtime.HandlerNotFound', `${setting} is undefined or not exported`);
  }
  return handler;
}

// The call's trace for the function's own telemetry: W3C's TRACEPARENT
// (OpenTelemetry SDKs read it) and X-Ray's _X_AMZN_TRACE_ID, as Lambda
// sets it.
function setTrace(context, traceparent) {
  context.traceparent = traceparent;
  env.TRACEPARENT = traceparent;
  const parts = traceparent.split('-');
  if (parts.length === 4 && parts[1].length === 32) {
    const [, trace, span, flags] = parts;
    const sampled = parseInt(flags, 16) & 1;
    env._X_AMZN_TRACE_ID = `Root=1-${trace.slice(0, 8)}-${trace.slice(8)};Parent=${span};Sampled=${sampled}`;
  }
}

function makeContext(callId, deadlineMs, clientContext, settle) {
  const functionName = env.FAAS_FUNCTION_NAME || '';
  const functionVersion = env.FAAS_FUNCTION_VERSION || '$LATEST';
  const context = {
    awsRequestId: callId,
    functionName,
    functionVersion,
    // A string, as in Lambda.
    memoryLimitInMB: env.FAAS_MEMORY_MB || '',
    invokedFunctionArn: `arn:faas:function:${functionName}:${functionVersion}`,
    logGroupName: env.AWS_LAMBDA_LOG_GROUP_NAME || `/faas/${functionName}`,
    logStreamName: callId,
    // Lambda's rule for callback-style handlers: the result goes once the
    // event loop is empty, unless the handler sets this to false.
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis() {
      return deadlineMs ? Math.max(0, Math.floor(deadlineMs - Date.now())) : 0;
    },
    // Lambda's legacy completion methods.
    done(error, result) { settle(error, result); },
    succeed(result) { settle(null, result); },
    fail(error) { settle(error || new Error('context.fail called')); },
  };
  // Set only when the caller passed one, as on Lambda.
  if (clientContext && typeof clientContext === 'object') context.clientContext = clientContext;
  return context;
}

// Lambda's global `awslambda`: response streaming. A streaming handler's
// output is buffered into the call's result, shaped as a function URL
// response ({statusCode, headers, cookies, body, isBase64Encoded}).
const STREAMING = Symbol.for('aws.lambda.runtime.handler.streaming');
const STREAM_METADATA = Symbol('faas.response.metadata');

class HttpResponseStream {
  // Records the HTTP status and headers the buffered response carries.
  static from(responseStream, metadata) {
    responseStream[STREAM_METADATA] = metadata || {};
    return responseStream;
  }
}

globalThis.awslambda = {
  streamifyResponse(handler) {
    handler[STREAMING] = true;
    return handler;
  },
  HttpResponseStream,
};

function makeResponseStream() {
  const { Writable } = require('stream');
  const chunks = [];
  let resolveEnded;
  const ended = new Promise((resolve) => { resolveEnded = resolve; });
  const stream = new Writable({
    write(chunk, encoding, callback) {
      chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, encoding));
      callback();
    },
  });
  stream.on('finish', () => resolveEnded());
  stream.setContentType = (type) => {
    const metadata = stream[STREAM_METADATA] || (stream[STREAM_METADATA] = {});
    metadata.headers = Object.assign({}, metadata.headers, { 'content-type': type });
  };
  const result = () => {
    const body = Buffer.concat(chunks);
    const metadata = stream[STREAM_METADATA] || {};
    const text = body.toString('utf8');
    const isText = Buffer.from(text, 'utf8').equals(body);
    const response = {
      statusCode: metadata.statusCode || 200,
      headers: Object.assign({ 'content-type': 'application/octet-stream' }, metadata.headers),
      body: isText ? text : body.toString('base64'),
      isBase64Encoded: !isText,
    };
    if (metadata.cookies) response.cookies = metadata.cookies;
    return response;
  };
  return { stream, ended, result };
}

function writeResult(result) {
  let text;
  // Bytes (a Buffer or any typed array) go as base64, marked so: the
  // agent passes the flag on (Call.result_base64), the gateway decodes.
  if (env.FAAS_OUTPUT_ENCODING && ArrayBuffer.isView(result)) {
    const bytes = Buffer.from(result.buffer, result.byteOffset, result.byteLength);
    try {
      fs.writeFileSync(env.FAAS_OUTPUT_ENCODING, 'base64');
    } catch (error) {
      fail('Runtime.OutputError', `Cannot write ${env.FAAS_OUTPUT_ENCODING}: ${error.message}`, error);
    }
    result = bytes.toString('base64');
  }
  try {
    text = JSON.stringify(result === undefined ? null : result);
    if (text === undefined) text = 'null'; // a function or symbol
  } catch (error) {
    fail('Runtime.MarshalError', `Unable to stringify response body: ${error.message}`, error);
  }
  try {
    fs.writeFileSync(env.FAAS_OUTPUT, text);
  } catch (error) {
    fail('Runtime.OutputError', `Cannot write the output ${env.FAAS_OUTPUT}: ${error.message}`, error);
  }
  exitNow(0);
}

async function main() {
  patchConsole();
  const functionDir = env.FAAS_FUNCTION_DIR || process.cwd();
  const setting = env.FAAS_HANDLER || 'index.handler';
  if (env.AWS_EXECUTION_ENV === undefined) {
    env.AWS_EXECUTION_ENV = `AWS_Lambda_nodejs${process.versions.node.split('.')[0]}.x`;
  }
  if (env.LAMBDA_TASK_ROOT === undefined) env.LAMBDA_TASK_ROOT = functionDir;
  if (env.AWS_LAMBDA_FUNCTION_NAME === undefined) env.AWS_LAMBDA_FUNCTION_NAME = env.FAAS_FUNCTION_NAME || '';
  if (env.AWS_LAMBDA_FUNCTION_VERSION === undefined) env.AWS_LAMBDA_FUNCTION_VERSION = env.FAAS_FUNCTION_VERSION || '$LATEST';
  if (env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE === undefined) env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE = env.FAAS_MEMORY_MB || '';

  const handler = await loadHandler(functionDir, setting);

  if (!env.FAAS_INPUT || !env.FAAS_OUTPUT) {
    fail('Runtime.InvalidEnvironment', 'FAAS_INPUT and FAAS_OUTPUT must be set');
  }
  let envelope;
  try {
    // A blocking read: under preloading this waits on the FIFO for the call.
    envelope = JSON.parse(fs.readFileSync(env.FAAS_INPUT, 'utf8'));
  } catch (error) {
    fail('Runtime.InvalidInput', `Cannot read the input ${env.FAAS_INPUT}: ${error.message}`, error);
  }
  const event = envelope.event === undefined ? null : envelope.event;
  const callId = String(envelope.call_id || '');
  requestId = callId;

  // The call's outcome, settled once: written at once for promises and
  // context.done/succeed/fail; for a callback, once the event loop is
  // empty (or right away if callbackWaitsForEmptyEventLoop is false), so
  // code after callback() and the work it left pending still run.
  let settled = false;
  const settle = (error, result) => {
    if (settled) return;
    settled = true;
    finish(error, result);
  };
  const finish = (error, result) => {
    if (error !== null && error !== undefined) {
      const { type, message } = describe(error);
      fail(type, message, error);
    } else {
      writeResult(result);
    }
  };
  const context = makeContext(callId, envelope.deadline_ms || 0, envelope.client_context, settle);
  env.AWS_LAMBDA_LOG_STREAM_NAME = callId;
  if (typeof envelope.traceparent === 'string' && envelope.traceparent) {
    setTrace(context, envelope.traceparent);
  }

  const failAsync = (error) => settle(error || new Error('unhandled rejection'));
  process.on('uncaughtException', failAsync);
  process.on('unhandledRejection', failAsync);

  const callback = (error, result) => {
    if (settled) return;
    settled = true;
    if (context.callbackWaitsForEmptyEventLoop === false) {
      setImmediate(() => finish(error, result));
    } else {
      process.once('beforeExit', () => finish(error, result));
    }
  };
  // A callback-style handler that never calls back ends with null once
  // nothing is left to run, as on Lambda.
  process.once('beforeExit', () => settle(null, null));

  try {
    if (handler[STREAMING]) {
      const response = makeResponseStream();
      await handler(event, response.stream, context);
      if (!response.stream.writableEnded) response.stream.end();
      await response.ended;
      settle(null, response.result());
    } else if (handler.length >= 3) {
      // Callback style: handler(event, context, callback).
      const returned = handler(event, context, callback);
      if (returned && typeof returned.then === 'function') {
        returned.then((result) => settle(null, result), failAsync);
      }
    } else {
      settle(null, await handler(event, context));
    }
  } catch (error) {
    settle(error);
  }
}

main().catch((error) => fail('Runtime.Error', describe(error).message, error));
