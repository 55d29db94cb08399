// Lambda-style Node.js handlers, one per behaviour tests/tests/e2e/conformance.rs
// checks. The default handler (index.handler) is the one deployed without
// --handler.

const VARIABLES = [
  'AWS_REGION', 'AWS_EXECUTION_ENV', 'AWS_LAMBDA_FUNCTION_NAME', 'AWS_LAMBDA_LOG_GROUP_NAME',
  'AWS_LAMBDA_LOG_STREAM_NAME', '_HANDLER', 'TZ', 'LAMBDA_TASK_ROOT', 'NODE_PATH',
];

exports.handler = async (event, context) => ({
  env: Object.fromEntries(VARIABLES.map((name) => [name, process.env[name] ?? null])),
  awsRequestId: context.awsRequestId,
  logStreamName: context.logStreamName,
  clientContext: context.clientContext ?? null,
});

// Code after callback() runs, and so does the work it leaves pending: the
// result goes once the event loop is empty.
exports.callback = (event, context, callback) => {
  const seen = [];
  setTimeout(() => {
    seen.push('timer');
    console.log('timer ran before the result went');
  }, 100);
  callback(null, { seen });
  seen.push('after callback');
  console.log('code after callback ran');
};

// With callbackWaitsForEmptyEventLoop = false the result goes at once and
// pending work is dropped with the container.
exports.noWait = (event, context, callback) => {
  context.callbackWaitsForEmptyEventLoop = false;
  setTimeout(() => console.log('this timer must not run'), 3000);
  callback(null, 'sent without waiting');
};

// A callback-style error.
exports.callbackError = (event, context, callback) => {
  callback(new TypeError('bad input'));
};

// Response streaming, buffered into a function URL response.
exports.stream = awslambda.streamifyResponse(async (event, responseStream, context) => {
  const stream = awslambda.HttpResponseStream.from(responseStream, {
    statusCode: 201,
    headers: { 'x-streamed': 'yes' },
  });
  stream.write('first ');
  await new Promise((resolve) => setTimeout(resolve, 20));
  stream.write(JSON.stringify({ id: context.awsRequestId }));
  stream.end();
});

// Bytes: a Buffer, and a typed array's view into a larger buffer.
exports.buffer = async () => Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x00, 0xff]);
exports.view = async () => new Uint8Array(new Uint8Array([9, 1, 2, 3, 9]).buffer, 1, 3);

// Lambda's console: one line per call, with time, request id and level.
console.log('at init');
exports.logs = async (event) => {
  console.log('log', { n: 1 });
  console.info('info %s', event.word);
  console.warn('warn');
  console.error('error');
  console.debug('debug');
  return 'logged';
};
