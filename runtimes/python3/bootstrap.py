"""faas python3 runtime bootstrap (the Runtime side of docs/contract.md).

Runs an AWS-Lambda-style handler(event, context) once: import the handler
named by $FAAS_HANDLER from the function directory, only then read the call's
input (under preloading it is a FIFO that yields when the call arrives),
call the handler, write the JSON result to $FAAS_OUTPUT. On failure the
traceback goes to stderr (the call's log) and {"type", "message"} to
$FAAS_ERROR, and the process exits 1.
"""

import os
import sys
import time


def _write_file(path, text):
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def _fail(error_type, message, exc=None):
    """Reports a failed call and exits 1, without running atexit hooks or
    waiting for threads the function may have left behind."""
    import json
    import traceback

    if exc is not None:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    else:
        print(f"{error_type}: {message}", file=sys.stderr)
    path = os.environ.get("FAAS_ERROR")
    if path:
        try:
            _write_file(path, json.dumps({"type": error_type, "message": message}))
        except OSError as write_error:
            print(f"faas: cannot write {path}: {write_error}", file=sys.stderr)
    _exit(1)


# The call's id, once known: Lambda's log lines carry it.
_request_id = ""


def _configure_logging(logging):
    """Lambda's root handler: lines `[LEVEL]\t<UTC time>Z\t<request id>\t<message>`
    (or JSON objects with AWS_LAMBDA_LOG_FORMAT=JSON) on stdout, the root
    level from AWS_LAMBDA_LOG_LEVEL (else logging's own WARNING, as on
    Lambda: `logger.setLevel(logging.INFO)` is what handlers do)."""
    env = os.environ
    json_format = env.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"

    class _RequestId(logging.Filter):
        def filter(self, record):
            record.aws_request_id = _request_id
            return True

    class _JsonFormatter(logging.Formatter):
        def format(self, record):
            import json

            entry = {
                "timestamp": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                "level": record.levelname,
                "message": record.getMessage(),
                "logger": record.name,
                "requestId": _request_id,
            }
            if record.exc_info:
                entry["stackTrace"] = self.formatException(record.exc_info).splitlines()
            return json.dumps(entry, default=str)

    class _Handler(logging.Handler):
        def emit(self, record):
            try:
                line = self.format(record) + "\n"
                sys.stdout.write(line)
            except Exception:  # noqa: BLE001 - logging never fails the call
                self.handleError(record)

    if json_format:
        formatter = _JsonFormatter()
    else:
        formatter = logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    formatter.converter = time.gmtime
    handler = _Handler()
    handler.setFormatter(formatter)
    handler.addFilter(_RequestId())
    root = logging.getLogger()
    root.addHandler(handler)
    level = env.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in ("TRACE", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "FATAL", "CRITICAL"):
        root.setLevel({"TRACE": "DEBUG", "WARN": "WARNING", "FATAL": "CRITICAL"}.get(level, level))


class _ConfigureLoggingOnImport:
    """A meta path finder that configures `logging` right after its first
    import. Importing it eagerly costs every call ~3 ms of a ~13 ms start,
    and most functions never log through it."""

    def find_spec(self, name, path=None, target=None):
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        spec.loader = _LoaderThen(spec.loader, _configure_logging)
        return spec


class _LoaderThen:
    def __init__(self, loader, then):
        self._loader = loader
        self._then = then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        self._then(module)


def _install_logging():
    if "logging" in sys.modules:
        _configure_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, _ConfigureLoggingOnImport())


def _exit(code):
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


class CognitoIdentity:
    """Lambda's context.identity: set for calls from its mobile SDK only,
    so both ids are None (code reads the attributes unguarded)."""

    def __init__(self):
        self.cognito_identity_id = None
        self.cognito_identity_pool_id = None

    def __repr__(self):
        return "CognitoIdentity(cognito_identity_id=None, cognito_identity_pool_id=None)"


class Client:
    """context.client_context.client, from the caller's client context."""

    def __init__(self, client):
        self.installation_id = client.get("installation_id")
        self.app_title = client.get("app_title")
        self.app_version_name = client.get("app_version_name")
        self.app_version_code = client.get("app_version_code")
        self.app_package_name = client.get("app_package_name")


class ClientContext:
    """context.client_context: what the caller passed (faasctl invoke
    --client-context, InvokeRequest.client_context), as Lambda shapes it."""

    def __init__(self, value):
        client = value.get("client")
        self.client = Client(client) if isinstance(client, dict) else None
        self.custom = value.get("custom")
        self.env = value.get("env")

    def __repr__(self):
        return f"ClientContext(client={self.client!r}, custom={self.custom!r}, env={self.env!r})"


class LambdaContext:
    """The attributes AWS Lambda's Python context offers."""

    def __init__(self, call_id, deadline_ms, env, client_context=None):
        self.aws_request_id = call_id
        self.function_name = env.get("FAAS_FUNCTION_NAME", "")
        self.function_version = env.get("FAAS_FUNCTION_VERSION", "$LATEST")
        # A string, as in Lambda (code does int(context.memory_limit_in_mb)).
        self.memory_limit_in_mb = env.get("FAAS_MEMORY_MB", "")
        self.invoked_function_arn = f"arn:faas:function:{self.function_name}:{self.function_version}"
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME") or f"/faas/{self.function_name}"
        self.log_stream_name = call_id
        self.identity = CognitoIdentity()
        self.client_context = ClientContext(client_context) if isinstance(client_context, dict) else None
        # The call's W3C trace context (also $TRACEPARENT), or None.
        self.traceparent = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        if not self._deadline_ms:
            return 0
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self):
        return f"LambdaContext(aws_request_id={self.aws_request_id!r}, function_name={self.function_name!r})"


def _set_trace(env, context, traceparent):
    """The call's trace for the function's own telemetry: W3C's TRACEPARENT
    (OpenTelemetry SDKs read it) and X-Ray's _X_AMZN_TRACE_ID, as Lambda
    sets it."""
    context.traceparent = traceparent
    env["TRACEPARENT"] = traceparent
    parts = traceparent.split("-")
    if len(parts) == 4 and len(parts[1]) == 32:
        trace, span = parts[1], parts[2]
        sampled = int(parts[3], 16) & 1
        env["_X_AMZN_TRACE_ID"] = f"Root=1-{trace[:8]}-{trace[8:]};Parent={span};Sampled={sampled}"


def _load_handler(function_dir, handler_setting):
    """'lambda_function.lambda_handler', 'pkg.mod.fn' or 'src/app.handler'."""
    import importlib

    module_name, sep, function_name = handler_setting.rpartition(".")
    if not sep or not module_name or not function_name:
        _fail("Runtime.MalformedHandlerName", f"Bad handler '{handler_setting}': expected 'module.function'")
    module_name = module_name.replace("/", ".")
    # The function directory first, like Lambda's /var/task: its modules and
    # the packages vendored into it (pip install -t .) are importable.
    # The bootstrap's own directory is not.
    bootstrap_dir = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != bootstrap_dir]
    # Then the layers' directories, as on Lambda (/opt holds the layers).
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    # (Only those that exist: a missing one would cost a stat per import.)
    layers = [p for p in (f"/opt/python/lib/{version}/site-packages", "/opt/python") if os.path.isdir(p)]
    sys.path[0:0] = [function_dir, *layers]
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure fails the call
        _fail("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}", exc)
    handler = getattr(module, function_name, None)
    if handler is None:
        _fail("Runtime.HandlerNotFound", f"Handler '{function_name}' missing on module '{module_name}'")
    if not callable(handler):
        _fail("Runtime.HandlerNotFound", f"Handler '{function_name}' on module '{module_name}' is not callable")
    return handler


class _JsonCodec:
    """json.loads / json.dumps (default settings) through CPython's _json
    accelerator alone. `import json` pulls in re, enum, functools and
    collections: ~5 ms of a ~13 ms Python start, paid by every call (each
    runs in a fresh process). Falls back to the json module without _json."""

    def __init__(self):
        import _json

        # The attributes _json.make_scanner reads (json.decoder.JSONDecoder's).
        self.strict = True
        self.object_hook = None
        self.object_pairs_hook = None
        self.parse_float = float
        self.parse_int = int
        self.parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__
        self.memo = {}
        self._scan = _json.make_scanner(self)
        self._make_encoder = _json.make_encoder
        self._encode_string = _json.encode_basestring_ascii

    def loads(self, data):
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        start = len(text) - len(text.lstrip(" \t\n\r"))
        try:
            value, end = self._scan(text, start)
        except StopIteration as stop:
            raise ValueError(f"Expecting value at char {stop.value}") from None
        finally:
            self.memo.clear()
        if text[end:].strip(" \t\n\r"):
            raise ValueError(f"Extra data at char {end}")
        return value

    def dumps(self, value, default):
        if isinstance(value, str):
            return self._encode_string(value)
        # json.JSONEncoder's defaults: check_circular, allow_nan, ensure_ascii.
        encode = self._make_encoder({}, default, self._encode_string, None, ": ", ", ", False, False, True)
        return "".join(encode(value, 0))


def _json_codec():
    try:
        return _JsonCodec()
    except (ImportError, AttributeError):
        import json

        class _Std:
            loads = staticmethod(json.loads)

            @staticmethod
            def dumps(value, default):
                return json.dumps(value, default=default)

        return _Std()


def _json_default(value):
    # Lambda's encoder accepts Decimal (boto3's DynamoDB numbers) and bytes.
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def main():
    env = os.environ
    function_dir = env.get("FAAS_FUNCTION_DIR") or os.getcwd()
    handler_setting = env.get("FAAS_HANDLER") or "handler.handler"
    # Variables some Lambda code and libraries read (the agent sets the
    # rest: docs/contract.md).
    env.setdefault("LAMBDA_TASK_ROOT", function_dir)
    env.setdefault("AWS_LAMBDA_FUNCTION_NAME", env.get("FAAS_FUNCTION_NAME", ""))
    env.setdefault("AWS_LAMBDA_FUNCTION_VERSION", env.get("FAAS_FUNCTION_VERSION", "$LATEST"))
    env.setdefault("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", env.get("FAAS_MEMORY_MB", ""))
    env.setdefault("AWS_EXECUTION_ENV", f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}")
    _install_logging()

    handler = _load_handler(function_dir, handler_setting)
    json = _json_codec()

    input_path = env.get("FAAS_INPUT")
    output_path = env.get("FAAS_OUTPUT")
    if not input_path or not output_path:
        _fail("Runtime.InvalidEnvironment", "FAAS_INPUT and FAAS_OUTPUT must be set")
    try:
        with open(input_path, "rb") as source:
            envelope = json.loads(source.read())
        event = envelope.get("event")
        call_id = str(envelope.get("call_id", ""))
        deadline_ms = envelope.get("deadline_ms") or 0
    except Exception as exc:  # noqa: BLE001
        _fail("Runtime.InvalidInput", f"Cannot read the input {input_path}: {exc}", exc)

    global _request_id
    _request_id = call_id
    env["AWS_LAMBDA_LOG_STREAM_NAME"] = call_id
    context = LambdaContext(call_id, deadline_ms, env, envelope.get("client_context"))
    traceparent = envelope.get("traceparent")
    if isinstance(traceparent, str) and traceparent:
        _set_trace(env, context, traceparent)
    try:
        result = handler(event, context)
        if hasattr(result, "__await__"):
            import asyncio

            result = asyncio.run(result)
    except Exception as exc:  # noqa: BLE001 - the function's own failure
        _fail(type(exc).__name__, str(exc), exc)

    # Bytes go as base64, marked so: the agent passes the flag on
    # (Call.result_base64) and the HTTP gateway answers with the bytes.
    encoding_path = env.get("FAAS_OUTPUT_ENCODING")
    if encoding_path and isinstance(result, (bytes, bytearray, memoryview)):
        import binascii

        try:
            _write_file(encoding_path, "base64")
        except OSError as exc:
            _fail("Runtime.OutputError", f"Cannot write {encoding_path}: {exc}", exc)
        result = binascii.b2a_base64(bytes(result), newline=False).decode("ascii")
    try:
        text = json.dumps(result, _json_default)
    except (TypeError, ValueError) as exc:
        _fail("Runtime.MarshalError", f"Unable to marshal response: {exc}", exc)
    try:
        _write_file(output_path, text)
    except OSError as exc:
        _fail("Runtime.OutputError", f"Cannot write the output {output_path}: {exc}", exc)
    _exit(0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:
        # sys.exit() in a handler: a failure unless it is a plain exit(0)
        # before any output (then there is no result, so still a failure).
        _fail("Runtime.ExitError", f"The function called sys.exit({exc.code!r})")
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt etc.
        _fail(type(exc).__name__, str(exc), exc)
