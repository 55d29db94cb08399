"""Fills every writable place until it refuses: the scratch /tmp, /dev/shm,
the call's own /faas/io; tries the function directory and the root too.
Cleans up (so the result can still be written) and reports the sizes."""
import os

CHUNK = b"\0" * (1 << 20)


def fill(directory, limit_bytes):
    path = os.path.join(directory, "faas-isolation-fill")
    written = 0
    try:
        with open(path, "wb") as f:
            while written < limit_bytes:
                f.write(CHUNK)
                f.flush()
                written += len(CHUNK)
        outcome = "no limit hit"
    except OSError as err:
        outcome = err.strerror
    try:
        os.unlink(path)
    except OSError:
        pass
    return {"bytes": written, "outcome": outcome}


def handler(event, context):
    limit = int(event.get("limit_mb", 512)) << 20
    here = os.path.dirname(os.path.abspath(__file__))
    return {d: fill(d, limit) for d in ["/tmp", "/dev/shm", "/faas/io", here, "/"]}
