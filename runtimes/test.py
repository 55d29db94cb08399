#!/usr/bin/env python3
"""Runs the runtime images for real, without the platform.

usage: test.py FAAS_INIT FNS_DIR NAME=ARCHIVE...

Each archive's rootfs is unpacked and run with `runc run` (test-only use of
runc) on a generated bundle that follows docs/contract.md exactly: read-only
root, tmpfs /tmp, the function at the runtime's path, an io dir at /faas/io,
faas-init at /faas/bin/faas-init as the process, uid 65534. faas-init itself
is also checked as PID 1 in a busybox root (reaping, SIGTERM, the gate).
Prints one line per check and closes with "N passed, N failed".
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import tomllib

RUNTIMES_DIR = os.path.dirname(os.path.abspath(__file__))
WORK = tempfile.mkdtemp(prefix="faas-runtimes-test-")
RUNC_ROOT = os.path.join(WORK, "runc-state")
PASSED, FAILED = [], []
SEQUENCE = iter(range(1, 1 << 30))


def check(label, condition, detail=""):
    (PASSED if condition else FAILED).append(label)
    print(f"{'ok  ' if condition else 'FAIL'} {label}" + ("" if condition else f"  -- {detail}"), flush=True)
    return condition


def unpack_image(archive, destination):
    """OCI archive -> (rootfs dir, image config)."""
    layout = os.path.join(destination, "layout")
    with tarfile.open(archive) as tar:
        tar.extractall(layout)
    with open(os.path.join(layout, "index.json")) as f:
        index = json.load(f)
    descriptor = index["manifests"][0]
    assert descriptor["annotations"]["org.opencontainers.image.ref.name"]

    def blob(digest):
        return os.path.join(layout, "blobs", *digest.split(":", 1))

    with open(blob(descriptor["digest"])) as f:
        manifest = json.load(f)
    with open(blob(manifest["config"]["digest"])) as f:
        config = json.load(f)
    rootfs = os.path.join(destination, "rootfs")
    os.makedirs(rootfs)
    for layer in manifest["layers"]:
        subprocess.run(["tar", "-xzf", blob(layer["digest"]), "--numeric-owner", "-C", rootfs], check=True)
    return rootfs, config, manifest


def bundle_config(rootfs, process_args, env, cwd, mounts, user=(65534, 65534)):
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": user[0], "gid": user[1]},
            "args": process_args,
            "env": env,
            "cwd": cwd,
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "fn",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
            *mounts,
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def bind(source, destination, readonly=False):
    return {"destination": destination, "type": "bind", "source": source,
            "options": ["rbind", "ro" if readonly else "rw", "nosuid", "nodev"]}


class Spot:
    """One container's host side: fn/ and io/ plus a bundle, as the agent makes them."""

    def __init__(self, runtime, function_src, event, handler=None, gate=False, fifo_input=False,
                 extra_args=None, rootfs=None, env=None):
        self.id = f"faas-rt-test-{os.getpid()}-{next(SEQUENCE)}"
        self.dir = os.path.join(WORK, "spots", self.id)
        self.fn = os.path.join(self.dir, "fn")
        self.io = os.path.join(self.dir, "io")
        os.makedirs(self.io)
        shutil.copytree(function_src, self.fn)
        spec = runtime["spec"]
        self.input = os.path.join(self.io, "input.json")
        self.envelope = {"call_id": self.id, "deadline_ms": int(time.time() * 1000) + 30000, "event": event}
        if fifo_input:
            os.mkfifo(self.input, 0o644)
        else:
            with open(self.input, "w") as f:
                json.dump(self.envelope, f)
        args = ["/faas/bin/faas-init", "--status", "/faas/io/status.json", "--cwd", spec["path"]]
        if spec.get("dependencies"):
            args += ["--deps", spec["dependencies"]]
        args += ["--run", spec["run"]]
        if gate:
            os.mkfifo(os.path.join(self.io, "gate"), 0o622)
            args += ["--gate", "/faas/io/gate"]
        args += extra_args or []
        container_env = list(runtime["config"]["config"]["Env"]) + [
            "FAAS_INPUT=/faas/io/input.json", "FAAS_OUTPUT=/faas/io/output.json", "FAAS_ERROR=/faas/io/error.json",
            f"FAAS_FUNCTION_NAME={os.path.basename(function_src)}", "FAAS_FUNCTION_VERSION=1",
            f"FAAS_FUNCTION_DIR={spec['path']}", "FAAS_MEMORY_MB=256", "FAAS_TIMEOUT_MS=30000",
        ] + (env or [])
        if handler:
            container_env.append(f"FAAS_HANDLER={handler}")
        config = bundle_config(rootfs or runtime["rootfs"], args, container_env, spec["path"], [
            bind(self.fn, spec["path"]),
            bind(self.io, "/faas/io"),
            bind(runtime["faas_init"], "/faas/bin/faas-init", readonly=True),
        ])
        with open(os.path.join(self.dir, "config.json"), "w") as f:
            json.dump(config, f)
        # The function runs as nobody: its files, io dir and FIFOs are its own
        # (and writable: the sample functions may come without write bits).
        for directory in (self.fn, self.io):
            subprocess.run(["chown", "-R", "65534:65534", directory], check=True)
            subprocess.run(["chmod", "-R", "u+w", directory], check=True)

    def write_fifo(self, name, text, timeout=20):
        """Writes to a FIFO in io/ once the container opened it for reading;
        gives up (False) if the container ended first."""
        path = os.path.join(self.io, name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                time.sleep(0.005)
                continue
            os.set_blocking(fd, True)
            with os.fdopen(fd, "w") as fifo:
                fifo.write(text)
            return True
        return False

    def start(self):
        self.started = time.monotonic()
        self.proc = subprocess.Popen(["runc", "--root", RUNC_ROOT, "run", "--bundle", self.dir, self.id],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        return self

    def wait(self, timeout=60):
        if hasattr(self, "exit"):
            return self
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            subprocess.run(["runc", "--root", RUNC_ROOT, "kill", self.id, "KILL"])
            out, err = self.proc.communicate()
        self.wall_ms = (time.monotonic() - self.started) * 1000
        self.exit = self.proc.returncode
        self.stdout, self.stderr = out.decode(errors="replace"), err.decode(errors="replace")
        subprocess.run(["runc", "--root", RUNC_ROOT, "delete", "--force", self.id],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def run(self):
        return self.start().wait()

    def read_json(self, name):
        path = os.path.join(self.io, name)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def status(self):
        return self.read_json("status.json")

    def wait_for_status(self, phase, timeout=20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except (json.JSONDecodeError, OSError):
                status = None  # must not happen: status.json is renamed into place
                check("status.json is never torn", False)
            if status and status.get("phase") == phase:
                return status
            time.sleep(0.005)
        return None

    def describe(self):
        if not hasattr(self, "exit"):
            self.wait(timeout=10)
        return f"exit={self.exit} status={self.status()} stdout={self.stdout[-500:]!r} stderr={self.stderr[-1500:]!r}"


def write_function(files):
    directory = tempfile.mkdtemp(prefix="fn-", dir=WORK)
    for name, content in files.items():
        path = os.path.join(directory, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(content))
    return directory


def expect_success(label, spot, output, log_text=None):
    ok = check(f"{label}: exit 0", spot.exit == 0, spot.describe())
    check(f"{label}: output.json", spot.read_json("output.json") == output, spot.describe())
    status = spot.status() or {}
    check(f"{label}: status.json done, run_exit 0",
          status.get("phase") == "done" and status.get("run_exit") == 0 and status.get("run_signal") is None
          and isinstance(status.get("run_ms"), float), status)
    if log_text is not None:
        check(f"{label}: log has {log_text!r}", log_text in spot.stdout, spot.describe())
    return ok


# ------------------------------------------------------------------ runtimes

def test_python(runtime, fns):
    spot = Spot(runtime, os.path.join(fns, "py-hello"), {"name": "faas"}).run()
    expect_success("python3 py-hello", spot, {"greeting": "hello faas"}, "greeting faas")
    check("python3 py-hello: deps ran (exit 0), the import cached bytecode",
          (spot.status() or {}).get("deps_exit") == 0 and os.path.isdir(os.path.join(spot.fn, "__pycache__")),
          spot.describe())

    spot = Spot(runtime, os.path.join(fns, "py-fail"), {"why": "testing"}).run()
    check("python3 py-fail: exit 1", spot.exit == 1, spot.describe())
    check("python3 py-fail: error.json", spot.read_json("error.json") == {"type": "RuntimeError", "message": "boom: testing"},
          spot.read_json("error.json"))
    check("python3 py-fail: no output.json", spot.read_json("output.json") is None)
    check("python3 py-fail: log has print and traceback",
          "about to fail" in spot.stdout and "Traceback" in spot.stderr and "RuntimeError: boom" in spot.stderr,
          spot.describe())
    check("python3 py-fail: status run_exit 1", (spot.status() or {}).get("run_exit") == 1, spot.status())

    # An unchanged AWS Lambda function: lambda_function.lambda_handler, a
    # vendored package next to it, the context API, LAMBDA_TASK_ROOT.
    lambda_fn = write_function({
        "lambda_function.py": """
            import os, json
            import vendored_pkg
            from decimal import Decimal
            def lambda_handler(event, context):
                remaining = context.get_remaining_time_in_millis()
                return {"statusCode": 200, "body": json.dumps(event), "lib": vendored_pkg.VALUE,
                        "request": context.aws_request_id, "fn": context.function_name,
                        "mem": int(context.memory_limit_in_mb), "remaining_ok": 0 < remaining <= 30000,
                        "root": os.environ["LAMBDA_TASK_ROOT"], "price": Decimal("1.5"),
                        "tmp_writable": open("/tmp/x", "w").write("x") == 1}
        """,
        "vendored_pkg/__init__.py": "VALUE = 'vendored'\n",
        "vendored_pkg/never_imported.py": "X = 1\n",
    })
    spot = Spot(runtime, lambda_fn, {"a": 1}, handler="lambda_function.lambda_handler").run()
    check("python3 deps precompile vendored packages",
          os.path.exists(os.path.join(spot.fn, "vendored_pkg/__pycache__/never_imported.cpython-311.pyc")),
          spot.describe())
    out = spot.read_json("output.json") or {}
    check("python3 lambda handler unchanged", spot.exit == 0 and out.get("lib") == "vendored"
          and out.get("body") == '{"a": 1}' and out.get("request") == spot.id and out.get("mem") == 256
          and out.get("remaining_ok") and out.get("root") == "/var/task" and out.get("price") == 1.5
          and out.get("tmp_writable") and out.get("fn") == os.path.basename(lambda_fn), spot.describe())

    none_fn = write_function({"app/main.py": "def handle(event, context):\n    return None\n", "app/__init__.py": ""})
    spot = Spot(runtime, none_fn, {}, handler="app/main.handle").run()
    check("python3 None result -> null, 'dir/module.fn' handler", spot.exit == 0 and
          open(os.path.join(spot.io, "output.json")).read() == "null", spot.describe())

    spot = Spot(runtime, none_fn, {}, handler="app/main.missing").run()
    check("python3 missing handler -> Runtime.HandlerNotFound",
          spot.exit == 1 and (spot.read_json("error.json") or {}).get("type") == "Runtime.HandlerNotFound", spot.describe())

    spot = Spot(runtime, none_fn, {}, handler="nosuchmodule.handler").run()
    check("python3 import failure -> Runtime.ImportModuleError",
          spot.exit == 1 and (spot.read_json("error.json") or {}).get("type") == "Runtime.ImportModuleError",
          spot.describe())

    rootfs_check = write_function({"handler.py": """
        import os
        def handler(event, context):
            try:
                open("/usr/x", "w")
                ro = False
            except OSError:
                ro = True
            return {"uid": os.getuid(), "ro": ro}
    """})
    spot = Spot(runtime, rootfs_check, {}).run()
    check("python3 runs as 65534 on a read-only root",
          spot.read_json("output.json") == {"uid": 65534, "ro": True}, spot.describe())

    # Preloading: the handler is imported before the input exists (a FIFO
    # that yields only when the call arrives).
    slow_import = write_function({"handler.py": """
        import time
        IMPORTED_AT = time.time()
        def handler(event, context):
            return {"imported_at": IMPORTED_AT}
    """})
    spot = Spot(runtime, slow_import, {}, fifo_input=True).start()
    time.sleep(1.0)
    sent_at = time.time()
    check("python3 input FIFO opened", spot.write_fifo("input.json", json.dumps(spot.envelope)), spot.describe())
    spot.wait()
    out = spot.read_json("output.json") or {}
    check("python3 imports the handler before reading the input FIFO",
          spot.exit == 0 and out.get("imported_at", sent_at) < sent_at - 0.5, spot.describe())


def test_node(runtime, fns):
    spot = Spot(runtime, os.path.join(fns, "node-hello"), {"name": "faas"}).run()
    expect_success("node node-hello", spot, {"greeting": "hello faas"}, "greeting faas")

    callback_fn = write_function({
        "index.js": """
            const lib = require('left-pad-ish');
            exports.handler = function (event, context, callback) {
              console.log('callback style');
              setTimeout(() => callback(null, { padded: lib.pad(event.n), id: context.awsRequestId,
                remainingOk: context.getRemainingTimeInMillis() > 0, fn: context.functionName }), 10);
            };
        """,
        "node_modules/left-pad-ish/package.json": '{"name": "left-pad-ish", "main": "lib.js"}',
        "node_modules/left-pad-ish/lib.js": "exports.pad = (n) => String(n).padStart(4, '0');\n",
    })
    spot = Spot(runtime, callback_fn, {"n": 7}).run()
    out = spot.read_json("output.json") or {}
    check("node callback handler + node_modules", spot.exit == 0 and out.get("padded") == "0007"
          and out.get("id") == spot.id and out.get("remainingOk") is True, spot.describe())

    esm_fn = write_function({"app.mjs": "export const handler = async (event) => ({ esm: true, event });\n"})
    spot = Spot(runtime, esm_fn, [1, 2], handler="app.handler").run()
    check("node ES module handler", spot.read_json("output.json") == {"esm": True, "event": [1, 2]}, spot.describe())

    cjs_fn = write_function({"main.cjs": "module.exports.go = (event, context) => ({ cjs: event.v });\n"})
    spot = Spot(runtime, cjs_fn, {"v": 3}, handler="main.go").run()
    check("node .cjs module, synchronous handler", spot.read_json("output.json") == {"cjs": 3}, spot.describe())

    fail_fn = write_function({"index.js": """
        exports.handler = async () => { console.log('about to fail'); throw new TypeError('bad thing'); };
    """})
    spot = Spot(runtime, fail_fn, {}).run()
    check("node failure: exit 1 + error.json",
          spot.exit == 1 and spot.read_json("error.json") == {"type": "TypeError", "message": "bad thing"}, spot.describe())
    check("node failure: log has console.log and stack",
          "about to fail" in spot.stdout and "TypeError: bad thing" in spot.stderr, spot.describe())

    undefined_fn = write_function({"src/handler.js": "exports.main = async () => undefined;\n"})
    spot = Spot(runtime, undefined_fn, {}, handler="src/handler.main").run()
    check("node undefined result -> null", spot.exit == 0 and
          open(os.path.join(spot.io, "output.json")).read() == "null", spot.describe())


# ------------------------------------------------------------------ faas-init as PID 1

def busybox_rootfs():
    rootfs = os.path.join(WORK, "busybox-rootfs")
    os.makedirs(os.path.join(rootfs, "bin"))
    shutil.copy("/bin/busybox", os.path.join(rootfs, "bin/busybox"))
    for applet in ("sh", "sleep", "ps", "echo", "cat", "grep", "wc", "true"):
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    for directory in ("proc", "sys", "dev", "tmp", "work", "faas/io", "faas/bin"):
        os.makedirs(os.path.join(rootfs, directory), exist_ok=True)
    return rootfs


def test_faas_init(faas_init):
    rootfs = busybox_rootfs()
    runtime = {"spec": {"path": "/work", "dependencies": "", "run": ""}, "config": {"config": {"Env": ["PATH=/bin"]}},
               "rootfs": rootfs, "faas_init": faas_init}
    empty = write_function({"README": "x"})

    def spot_with(run, deps="", **kwargs):
        runtime["spec"]["run"] = run
        runtime["spec"]["dependencies"] = deps
        return Spot(runtime, empty, {}, **kwargs)

    # Orphans from double forks in deps and run are reaped: no zombie is left.
    spot = spot_with(
        "sh -c 'sleep 0.3; echo zombies=$(ps -o stat | grep -c Z); exit 7'",
        deps="(sleep 0.05 &) ; (sleep 0.1 &) ; echo deps-ran",
    ).run()
    status = spot.status() or {}
    check("faas-init: exit code is the run's", spot.exit == 7, spot.describe())
    check("faas-init: reaps double-forked orphans (no zombies)", "zombies=0" in spot.stdout, spot.describe())
    check("faas-init: status.json timings and codes",
          status.get("phase") == "done" and status.get("deps_exit") == 0 and status.get("run_exit") == 7
          and status.get("deps_ms", 0) > 0 and status.get("run_ms", 0) >= 300, status)
    check("faas-init: runs as PID 1, run process is exec'd", "deps-ran" in spot.stdout, spot.describe())

    spot = spot_with("echo never", deps="echo failing; exit 3").run()
    status = spot.status() or {}
    check("faas-init: failing deps stop the container",
          spot.exit == 3 and "never" not in spot.stdout and status.get("deps_exit") == 3
          and status.get("run_exit") is None and status.get("run_ms") is None, spot.describe())

    # SIGTERM to the container (PID 1) is forwarded to the run process.
    spot = spot_with("sleep 30").start()
    time.sleep(0.5)
    subprocess.run(["runc", "--root", RUNC_ROOT, "kill", spot.id, "TERM"], check=False)
    spot.wait(timeout=10)
    status = spot.status() or {}
    check("faas-init: forwards SIGTERM, exits 128+15",
          spot.exit == 143 and status.get("run_signal") == 15 and status.get("run_exit") is None
          and spot.wall_ms < 5000, spot.describe())

    # The gate: "ready" after deps, the run starts only after a line arrives.
    spot = spot_with("echo released; cat /faas/io/input.json", deps="echo deps", gate=True).start()
    ready = spot.wait_for_status("ready")
    check("faas-init: gate writes phase ready after deps",
          ready is not None and ready.get("deps_exit") == 0 and ready.get("run_exit") is None, ready)
    time.sleep(0.3)
    check("faas-init: run waits at the gate", spot.proc.poll() is None and "released" not in (spot.stdout if hasattr(spot, "stdout") else ""))
    check("faas-init: gate opened", spot.write_fifo("gate", "go\n"))
    spot.wait(timeout=10)
    check("faas-init: gate released -> run", spot.exit == 0 and "released" in spot.stdout
          and (spot.status() or {}).get("phase") == "done", spot.describe())

    spot = spot_with("sleep 30", gate=True).start()
    spot.wait_for_status("ready")
    subprocess.run(["runc", "--root", RUNC_ROOT, "kill", spot.id, "TERM"], check=False)
    spot.wait(timeout=10)
    check("faas-init: SIGTERM at the gate ends the container", spot.exit == 143
          and "gate" in (spot.status() or {}).get("error", ""), spot.describe())

    spot = spot_with("nosuchcommand").run()
    check("faas-init: unknown run command -> 127", spot.exit == 127
          and (spot.status() or {}).get("run_exit") == 127, spot.describe())


# ------------------------------------------------------------------ timing

def measure(runtime, function_dir, runs=5):
    """Container start (runc run) to output written, hello function."""
    walls, runs_ms = [], []
    for _ in range(runs):
        spot = Spot(runtime, function_dir, {"name": "bench"}).run()
        if spot.exit != 0:
            return None
        walls.append(spot.wall_ms)
        runs_ms.append(spot.status()["run_ms"] + spot.status()["deps_ms"])
    return statistics.median(walls), statistics.median(runs_ms)


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    faas_init, fns = os.path.abspath(argv[0]), os.path.abspath(argv[1])
    runtimes = {}
    for item in argv[2:]:
        name, archive = item.split("=", 1)
        with open(os.path.join(RUNTIMES_DIR, name, "runtime.toml"), "rb") as f:
            spec = tomllib.load(f)
        rootfs, config, manifest = unpack_image(archive, os.path.join(WORK, "images", name))
        check(f"{name}: image config runs as 65534 with PATH",
              config["config"]["User"] == "65534:65534" and any(e.startswith("PATH=") for e in config["config"]["Env"])
              and config["rootfs"]["diff_ids"] and len(manifest["layers"]) == 1, config)
        runtimes[name] = {"spec": spec, "config": config, "rootfs": rootfs, "faas_init": faas_init}
    try:
        test_faas_init(faas_init)
        if "python3" in runtimes:
            test_python(runtimes["python3"], fns)
        if "node" in runtimes:
            test_node(runtimes["node"], fns)
        for name, fn in (("python3", "py-hello"), ("node", "node-hello")):
            if name in runtimes:
                result = measure(runtimes[name], os.path.join(fns, fn))
                if check(f"{name}: timing runs succeed", result is not None):
                    print(f"timing {name} {fn}: runc run start->exit median {result[0]:.1f} ms, "
                          f"faas-init deps+run median {result[1]:.1f} ms", flush=True)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
