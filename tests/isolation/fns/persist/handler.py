"""Tries to leave something behind for the next call: files in every
writable-looking place and processes that outlive the handler (a background
child, a double-forked daemon in its own session). Reports what a previous
call left, and what this one managed to plant."""
import os
import subprocess
import time

MARKER = "faas-isolation-persist"
PLACES = ["/tmp", "/dev/shm", "/faas/io", os.path.dirname(os.path.abspath(__file__)), "/", "/run", "/var/tmp", "/dev"]


def find_processes():
    """Processes of earlier calls: anything whose command line has the marker."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if MARKER in cmdline and int(pid) != os.getpid():
            found.append(cmdline.strip())
    return found


def daemonize():
    """The classic double fork: the grandchild is re-parented to PID 1 and
    keeps a heartbeat file fresh, forever."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/usr/bin/python3", ["python3", "-c",
                "import time\nwhile True:\n    open('/tmp/heartbeat','w').write(str(time.time()))\n    time.sleep(0.1)",
                MARKER + "-daemon"])
        os._exit(0)
    os.wait()


def handler(event, context):
    found_files = [p for p in (os.path.join(d, MARKER) for d in PLACES) if os.path.exists(p)]
    found_processes = find_processes()
    planted = []
    refused = {}
    for directory in PLACES:
        path = os.path.join(directory, MARKER)
        try:
            with open(path, "w") as f:
                f.write(event.get("tag", ""))
            planted.append(path)
        except OSError as err:
            refused[directory] = err.strerror
    # A background child in the same session, and a daemon.
    subprocess.Popen(["python3", "-c", "import time; time.sleep(3600)", MARKER + "-child"],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemonize()
    time.sleep(0.3)
    return {
        "found_files": found_files,
        "found_processes": found_processes,
        "planted": planted,
        "refused": refused,
        "running": find_processes(),
        "heartbeat": os.path.exists("/tmp/heartbeat"),
    }
