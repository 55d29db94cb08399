"""Prints gigabytes to stdout (the logs), or returns a result far over the
size limit."""
import sys


def handler(event, context):
    line = (b"flood " * 170 + b"\n")
    block = line * ((1 << 20) // len(line))
    for _ in range(int(event.get("log_mb", 0))):
        sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return {"padding": "p" * (int(event.get("result_kb", 0)) << 10)}
