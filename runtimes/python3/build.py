"""faas python3 runtime build step (runtime.toml `build`, runtimes/README.md).

Run once per deploy in a build container of this image, with the function's
directory (a writable copy of the upload) as the working directory:

1. if requirements.txt exists and $FAAS_DEPS_CACHED is not 1, pip installs
   it into /faas/deps, which the platform then merges into the function's
   directory (so /faas/deps/x/y.py becomes <task root>/x/y.py);
2. byte-compiles what was installed and the function's own files, so that
   no call compiles them: at run time the function's directory is read-only
   and CPython would recompile every import of a file without bytecode.

Standard library only. Output is the deploy's build log; a non-zero exit
fails the deploy.
"""

import compileall
import os
import py_compile
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

DEPS_DIR = "/faas/deps"
# Hash-based bytecode that is never checked against its source: valid
# whatever mtimes the platform gives the merged files, and no stat per import.
# The function's files cannot change after the build (the directory is
# read-only at run time), so never re-validating is safe.
INVALIDATION = py_compile.PycInvalidationMode.UNCHECKED_HASH
# Below this many files a process pool costs more than it saves.
PARALLEL_MIN_FILES = 200


def log(message):
    # Flushed: pip's output goes straight to the same stdout in between.
    print(f"faas build: {message}", flush=True)


def fail(message):
    print(f"faas build: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def has_requirements(path):
    """Whether requirements.txt names anything: pip refuses a file holding
    only comments, which is a fine thing to deploy."""
    with open(path, encoding="utf-8", errors="replace") as requirements:
        return any(line.split("#", 1)[0].strip() for line in requirements)


def pip_install(requirements):
    command = [
        sys.executable, "-I", "-m", "pip", "install",
        "--no-cache-dir",               # HOME is a tmpfs; nothing would reuse it
        "--disable-pip-version-check",  # the network reaches only the index
        "--no-input",
        "--no-compile",                 # compiled below, with the final paths
        "--target", DEPS_DIR,
        "-r", requirements,
    ]
    # cwd /tmp: -I keeps the cwd off pip's own sys.path, but not off that of
    # the subprocesses pip starts (build backends, setup.py), where a module
    # of the function named like a standard or build module (`logging.py`,
    # a vendored `setuptools`) would shadow it. pip's stderr is merged so the
    # log reads in order.
    started = time.monotonic()
    result = subprocess.run(command, cwd="/tmp", stdout=sys.stdout, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        fail(f"pip install -r requirements.txt failed with exit code {result.returncode} (its output is above)")
    distributions = [name for name in os.listdir(DEPS_DIR) if name.endswith((".dist-info", ".egg-info"))]
    log(f"installed {len(distributions)} distributions in {(time.monotonic() - started) * 1000:.0f} ms")


def python_files(root):
    files = []
    for directory, dirs, names in os.walk(root):
        # Bytecode directories hold no sources; sorted for a stable log.
        dirs[:] = sorted(name for name in dirs if name != "__pycache__")
        files.extend(os.path.join(directory, name) for name in sorted(names) if name.endswith(".py"))
    return files


def _compile(path, source_root, final_root):
    # The recorded file name is where the file will be at run time, which is
    # what tracebacks and inspect show.
    return compileall.compile_file(path, force=True, quiet=2, invalidation_mode=INVALIDATION,
                                   stripdir=source_root, prependdir=final_root)


def compile_tree(source_root, final_root):
    """Byte-compiles every .py under source_root as if it were under
    final_root. A file that does not compile (a vendored Python 2 test, a
    template) does not fail the build: it would fail only if imported, as it
    would without bytecode. Returns (compiled, failed paths)."""
    files = python_files(source_root)
    results = None
    workers = len(os.sched_getaffinity(0))
    if workers > 1 and len(files) >= PARALLEL_MIN_FILES:
        try:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(_compile, files, [source_root] * len(files),
                                        [final_root] * len(files), chunksize=64))
        except (NotImplementedError, OSError, BrokenProcessPool) as error:
            # No usable semaphores (no /dev/shm), or a worker killed (memory
            # limit): compile in this process.
            log(f"no process pool ({type(error).__name__}: {error}), compiling in one process")
    if results is None:
        results = [_compile(path, source_root, final_root) for path in files]
    failed = [path for path, ok in zip(files, results) if not ok]
    return len(files) - len(failed), failed


def compile_and_report(source_root, final_root):
    started = time.monotonic()
    compiled, failed = compile_tree(source_root, final_root)
    log(f"compiled {compiled} files in {source_root} in {(time.monotonic() - started) * 1000:.0f} ms")
    if failed:
        shown = ", ".join(os.path.relpath(path, source_root) for path in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        log(f"{len(failed)} files did not compile (left as source): {shown}{more}")


def main():
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
    requirements = os.path.join(task_root, "requirements.txt")
    if os.path.isfile(requirements):
        if os.environ.get("FAAS_DEPS_CACHED") == "1":
            # Installed and compiled by an earlier build of the same
            # requirements; the platform kept /faas/deps.
            log("dependencies cached, not installing")
        elif not has_requirements(requirements):
            log("requirements.txt names nothing, not installing")
        else:
            pip_install(requirements)
            compile_and_report(DEPS_DIR, task_root)
    compile_and_report(task_root, task_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
