"""Two roles. As the holder ({"hold": seconds}) it keeps its input, which
carries a secret, alive for a while. As the snoop it looks for that secret
everywhere it can read (files, other processes, the io directory) and tries
the host's paths it is given (the stack's directory, the agent's state,
containerd's socket)."""
import os
import time

SKIP_TREES = ("/proc", "/sys", "/dev")


def search_files(needle):
    hits = []
    for root, dirs, files in os.walk("/", onerror=lambda e: None):
        if root.startswith(SKIP_TREES):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.isfile(path) or os.path.getsize(path) > (4 << 20):
                    continue
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
    return hits


def search_processes(needle):
    hits = []
    pids = [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in pids:
        for item in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{item}", "rb") as f:
                    if needle in f.read():
                        hits.append(f"/proc/{pid}/{item}")
            except OSError:
                pass
        # Another container's files through /proc/<pid>/root, if it were visible.
        try:
            for name in os.listdir(f"/proc/{pid}/root/faas/io"):
                path = f"/proc/{pid}/root/faas/io/{name}"
                if os.path.isfile(path):
                    with open(path, "rb") as f:
                        if needle in f.read():
                            hits.append(path)
        except OSError:
            pass
    return hits, sorted(int(p) for p in pids)


def try_path(path):
    try:
        if os.path.isdir(path):
            return "listed: " + ",".join(sorted(os.listdir(path))[:10])
        with open(path, "rb") as f:
            f.read(16)
        return "read"
    except OSError as err:
        return err.strerror


def handler(event, context):
    if "hold" in event:
        time.sleep(float(event["hold"]))
        return {"held": True}
    needle = "".join(event["needle_parts"]).encode()
    own_input = open(os.environ["FAAS_INPUT"], "rb").read() if os.path.isfile(os.environ["FAAS_INPUT"]) else b""
    file_hits = search_files(needle)
    process_hits, pids = search_processes(needle)
    return {
        "file_hits": file_hits,
        "process_hits": process_hits,
        "own_input_has_needle": needle in own_input,
        "pids": pids,
        "io_files": sorted(os.listdir("/faas/io")),
        "host_paths": {p: try_path(p) for p in event.get("host_paths", [])},
    }
