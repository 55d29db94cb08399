"""A shell fork bomb left raging in the background: the pids limit must
stop it, and it must die with the call. Meanwhile this process keeps
forking children that live until the end of the call, and counts how often
the kernel refuses (EAGAIN: the limit). Its children are held, so it meets
the limit by itself even when the shell bomb's processes come and go (a
child that exited at once left a free slot the next fork could take: in
one run of 150 forks none was refused)."""
import errno
import os
import subprocess
import time


def handler(event, context):
    subprocess.Popen(["/bin/sh", "-c", "bomb() { bomb | bomb & }; bomb"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    refused = 0
    forked = 0
    deadline = time.time() + float(event.get("seconds", 3))
    while time.time() < deadline:
        try:
            pid = os.fork()
            if pid == 0:
                time.sleep(max(0.0, deadline - time.time()))
                os._exit(0)
            forked += 1
        except OSError as err:
            if err.errno != errno.EAGAIN:
                raise
            refused += 1
        time.sleep(0.01)
    return {"forks_refused": refused, "forks_done": forked}
