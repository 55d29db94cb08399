"""The python3 bootstrap's start, before and after a change: runs it n times
per round on the host's /usr/bin/python3 (the same Python 3.11 as the
image), for a handler that never imports logging and one that logs, and
prints p50/p90 of the whole process. Setup (as in docs/benchmarks.md):
  mkdir -p /tmp/bb/plain /tmp/bb/logs; cd /tmp/bb
  git show REV:runtimes/python3/bootstrap.py > before.py
  cp runtimes/python3/bootstrap.py after.py   # plus the two handlers, in.json
"""
import os, subprocess, sys, time, statistics
py = "/usr/bin/python3"
def run(boot, fdir, n=150):
    env = dict(os.environ, FAAS_INPUT="/tmp/bb/in.json", FAAS_OUTPUT="/tmp/bb/out.json", FAAS_ERROR="/tmp/bb/err.json", FAAS_FUNCTION_DIR=fdir)
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([py, "-u", boot], env=env, stdout=subprocess.DEVNULL, check=True)
        ts.append((time.perf_counter() - t) * 1000)
    ts.sort()
    return statistics.median(ts), ts[int(len(ts)*0.9)]
for rnd in range(2):
    for fn in ("plain", "logs"):
        for boot in ("before.py", "after.py"):
            p50, p90 = run(f"/tmp/bb/{boot}", f"/tmp/bb/{fn}")
            print(f"round {rnd} {fn:5} {boot:9} p50 {p50:6.2f} ms  p90 {p90:6.2f} ms")
