"""Reports everything a call can observe about its environment, in a stable
order, so that two calls can be compared byte for byte: the file tree with a
sha256 of every readable file, the environment variables, hostname, ids,
processes, limits, mounts and network interfaces.

Left out on purpose, each because it legitimately changes between calls:
- /proc and /sys file contents (counters, clocks, pids of the host kernel);
  only the shape of /proc/self is reported.
- /faas/io: the call's own input (call id, deadline), output and logs.
- the values of TRACEPARENT and _X_AMZN_TRACE_ID: the call's own trace ids
  (docs/tracing.md), and of AWS_LAMBDA_LOG_STREAM_NAME: the call's id
  (docs/contract.md). Their presence and form are reported.
- host paths in /proc/self/mountinfo: the source of each mount and the
  overlay root's lowerdir/upperdir/workdir options name the host's
  directories of this container (its snapshot), which differ per call by
  construction. Mount points, types and all other options are reported.
- processes' start times and CPU counters.
- pid numbers: faas-init's helper threads and the dependencies shell take
  pids before the runtime starts, and how many depends on timing (observed:
  the runtime is pid 8 in one call, 10 in the next). Processes are reported
  by rank instead (0 = PID 1), with the parent's rank: the same tree, the
  same commands."""
import hashlib
import json
import os
import re
import resource
import socket
import stat

SKIP = ("/proc", "/sys", "/faas/io")


def file_tree():
    tree = []
    for root, dirs, files in os.walk("/", onerror=lambda e: None):
        if root.startswith(SKIP) or root in SKIP:
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            if path in SKIP:
                tree.append([path, "skipped"])
                continue
            try:
                st = os.lstat(path)
            except OSError as err:
                tree.append([path, err.strerror])
                continue
            entry = [path, oct(st.st_mode), st.st_uid, st.st_gid]
            if stat.S_ISREG(st.st_mode):
                entry.append(st.st_size)
                try:
                    h = hashlib.sha256()
                    with open(path, "rb") as f:
                        for chunk in iter(lambda: f.read(1 << 20), b""):
                            h.update(chunk)
                    entry.append(h.hexdigest())
                except OSError as err:
                    entry.append(err.strerror)
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry.append([os.major(st.st_rdev), os.minor(st.st_rdev)])
            tree.append(entry)
    return tree


def processes():
    out = []
    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    rank = {pid: i for i, pid in enumerate(pids)}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                stat_line = f.read()
            fields = stat_line[stat_line.rfind(")") + 2:].split()
            with open(f"/proc/{pid}/status") as f:
                status = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        out.append({
            "rank": rank[pid],
            "parent_rank": rank.get(int(fields[1]), -1),
            "cmdline": [a.decode(errors="replace") for a in cmdline if a],
            "uid": status["Uid"].split(),
            "gid": status["Gid"].split(),
            "groups": status["Groups"].split(),
            "threads": int(status["Threads"]),
            "caps": [status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
            "no_new_privs": status["NoNewPrivs"].strip(),
            "seccomp": status["Seccomp"].strip(),
        })
    return out


def mounts():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, right = line.split(" - ")
            l, r = left.split(), right.split()
            # l[3] (root within the source) and r[1] (source) are host-side
            # names; so are option values that are absolute paths.
            super_options = ",".join(
                o.split("=", 1)[0] + "=<host path>" if "=/" in o else o for o in r[2].split(","))
            out.append({"point": l[4], "options": l[5], "type": r[0], "super": super_options})
    return out


def interfaces():
    out = {}
    for name in sorted(os.listdir("/sys/class/net")):
        info = {}
        for attr in ("address", "mtu", "flags", "operstate", "type"):
            try:
                with open(f"/sys/class/net/{name}/{attr}") as f:
                    info[attr] = f.read().strip()
            except OSError as err:
                info[attr] = err.strerror
        out[name] = info
    with open("/proc/net/dev") as f:
        out["/proc/net/dev names"] = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
    return out


def rlimits():
    return {name: resource.getrlimit(getattr(resource, name))
            for name in sorted(dir(resource)) if name.startswith("RLIMIT_")}


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as err:
        return err.strerror


def own_ids_named(value, ids):
    """Every container runs under its own host uid/gid (the agent's pool):
    the number is expected to differ between calls, what it owns is not.
    Replaces the call's own uid/gid, as numbers or words in text, by a name."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return ids.get(value, value)
    if isinstance(value, str):
        return re.sub(r"\b\d+\b", lambda m: ids.get(int(m.group()), m.group()), value)
    if isinstance(value, (list, tuple)):
        return [own_ids_named(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: own_ids_named(v, ids) for k, v in value.items()}
    return value


# The per-call variables, by form only.
TRACE_FORMS = {
    "AWS_LAMBDA_LOG_STREAM_NAME": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "TRACEPARENT": re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}"),
    "_X_AMZN_TRACE_ID": re.compile(r"Root=1-[0-9a-f]{8}-[0-9a-f]{24};Parent=[0-9a-f]{16};Sampled=[01]"),
}


def environment():
    env = []
    for key, value in sorted(os.environ.items()):
        form = TRACE_FORMS.get(key)
        if form is not None:
            value = f"<{key} of this call>" if form.fullmatch(value) else f"<malformed {key}: {value!r}>"
        env.append((key, value))
    return env


def handler(event, context):
    report = {
        "env": environment(),
        "hostname": socket.gethostname(),
        "uname": list(os.uname()),
        "ids": {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "egid": os.getegid(),
                "groups": os.getgroups()},
        "cwd": os.getcwd(),
        "umask": os.umask(0o022),
        "processes": processes(),
        "rlimits": rlimits(),
        "cgroup": read("/proc/self/cgroup"),
        "cgroup_fs": sorted(os.listdir("/sys/fs/cgroup")) if os.path.isdir("/sys/fs/cgroup") else None,
        "mounts": mounts(),
        "interfaces": interfaces(),
        "proc_self": sorted(os.listdir("/proc/self")),
        "nproc_visible": os.cpu_count(),
        "sched_affinity": sorted(os.sched_getaffinity(0)),
        "files": file_tree(),
    }
    report = own_ids_named(report, {os.getuid(): "<own uid>", os.getgid(): "<own gid>"})
    # The file tree is too large for a result (256 KiB): its hash stands for
    # it, with a hash per top-level directory to tell where two calls differ.
    files = report.pop("files")
    by_top = {}
    for entry in files:
        top = "/" + entry[0].split("/")[1]
        by_top.setdefault(top, []).append(entry)
    digest = lambda value: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()
    report["files"] = {"entries": len(files), "sha256": digest(files),
                       "by_top_dir": {top: digest(entries) for top, entries in sorted(by_top.items())}}
    report["sha256"] = digest(report)
    return report
