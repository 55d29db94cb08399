"""Fills every writable place until it refuses: the scratch /tmp, /dev/shm,
the call's own /faas/io; tries the function directory and the root too.
Cleans up (so the result can still be written) and reports the sizes."""
import os

CHUNK = b"\0" * (1 << 20)


def fill(directory, limit_bytes):
    return fill_file(os.path.join(directory, "faas-isolation-fill"), limit_bytes, remove=True)


def fill_file(path, limit_bytes, remove=False):
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
        if remove:
            os.unlink(path)
        else:
            # A file the agent created (the io directory takes no new one).
            open(path, "wb").close()
    except OSError:
        pass
    return {"bytes": written, "outcome": outcome}


def handler(event, context):
    limit = int(event.get("limit_mb", 512)) << 20
    here = os.path.dirname(os.path.abspath(__file__))
    filled = {d: fill(d, limit) for d in ["/tmp", "/dev/shm", "/faas/io", here, "/"]}
    filled["/faas/io/error.json"] = fill_file("/faas/io/error.json", limit)
    return filled
