"""Lambda-style Python handlers, one per behaviour tests/tests/e2e/conformance.rs
checks. Written the way handlers published for AWS Lambda are: module-level
logger, context attributes, vendored native code, the standard library."""

import logging
import os
import subprocess
import time

logger = logging.getLogger()
logger.setLevel(logging.INFO)


def logs(event, context):
    """Lambda's root handler formats these lines; print goes as it is."""
    logger.info("info %s", event.get("word", "x"))
    logging.getLogger("child").warning("two\nlines")
    try:
        raise ValueError("caught")
    except ValueError:
        logger.exception("with a traceback")
    logger.debug("not shown at INFO")
    print("a print line")
    return {"ok": True}


def timeout_logs(event, context):
    """Logs, then runs past the function's timeout."""
    print("printed before the timeout", flush=True)
    logger.warning("logged before the timeout")
    time.sleep(event.get("sleep", 30))
    return {"ok": "never"}


VARIABLES = [
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV", "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME", "_HANDLER", "TZ", "LAMBDA_TASK_ROOT", "LD_LIBRARY_PATH",
]


def context_and_env(event, context):
    client = context.client_context
    return {
        "env": {name: os.environ.get(name) for name in VARIABLES},
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id, context.identity.cognito_identity_pool_id],
        "client_context": None if client is None else {
            "custom": client.custom,
            "env": client.env,
            "app_title": client.client.app_title if client.client else None,
        },
        "remaining_ms": context.get_remaining_time_in_millis(),
    }


def native(event, context):
    """A vendored C++ library in lib/ (it links libstdc++), loaded by name
    through LD_LIBRARY_PATH as a manylinux wheel's would be."""
    import ctypes

    probe = ctypes.CDLL("libfaasprobe.so")
    probe.probe_length.restype = ctypes.c_int
    probe.probe_length.argtypes = [ctypes.c_char_p]
    return {"length": probe.probe_length(event["text"].encode())}


def system(event, context):
    """The standard library and tools Lambda's image has."""
    from zoneinfo import ZoneInfo
    from datetime import datetime

    madrid = datetime(2026, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Madrid"))
    listing = subprocess.run(["ls", "/var/task"], capture_output=True, text=True, check=True).stdout.split()
    copied = subprocess.run(
        ["dd", "if=/dev/zero", "of=/tmp/zeros", "bs=1024", "count=8"], capture_output=True, check=True
    )
    return {
        "madrid_offset_s": madrid.utcoffset().total_seconds(),
        "localtime_zone": time.strftime("%Z", time.localtime()),
        "ls": listing,
        "dd_bytes": os.path.getsize("/tmp/zeros"),
        "dd_rc": copied.returncode,
    }


def big(event, context):
    """A result of `kb` KiB (a benchmark's 570 KB result once failed)."""
    return {"data": "x" * (int(event["kb"]) << 10)}


def raw_bytes(event, context):
    """Bytes that are not UTF-8 (a PNG signature, then every byte value)."""
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def forged_encoding(event, context):
    """Marks its result base64 and writes something else (what an attacker
    would try on the gateway's decoder): refused, not passed on."""
    with open(os.environ["FAAS_OUTPUT_ENCODING"], "w") as marker:
        marker.write("base64")
    with open(os.environ["FAAS_OUTPUT"], "w") as output:
        output.write('"<script>not base64</script>"')
    os._exit(0)


def fill_tmp(event, context):
    """Writes `mb` MiB into /tmp, 1 MiB at a time, until done or full."""
    import errno

    block = b"\0" * (1 << 20)
    written = 0
    error = None
    with open("/tmp/fill", "wb") as out:
        try:
            for _ in range(int(event["mb"])):
                out.write(block)
                out.flush()
                written += 1
        except OSError as exc:
            error = errno.errorcode.get(exc.errno, str(exc.errno))
    os.remove("/tmp/fill")
    return {"written_mb": written, "error": error}


def use_layer(event, context):
    """Uses a layer (tests' layer `pylib`): its python/ module, its bin/ on
    PATH, and /opt read-only."""
    import errno
    import shutil

    import greet_lib

    try:
        with open("/opt/python/written", "w") as out:
            out.write("x")
        write = "written"
    except OSError as exc:
        write = errno.errorcode.get(exc.errno, str(exc.errno))
    return {
        "greeting": greet_lib.greet(event.get("name", "layer")),
        "tool": shutil.which("layer-tool"),
        "write": write,
        "opt": sorted(os.listdir("/opt")),
    }
