"""A shell fork bomb left raging in the background: the pids limit must
stop it, and it must die with the call. Meanwhile this process keeps trying
to fork, and counts how often the kernel refuses (EAGAIN: the limit)."""
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
                os._exit(0)
            os.waitpid(pid, 0)
            forked += 1
        except OSError as err:
            if err.errno != errno.EAGAIN:
                raise
            refused += 1
        time.sleep(0.02)
    return {"forks_refused": refused, "forks_done": forked}
