"""What a call sees of its io directory, by file type (issue 16: a cold
call saw /faas/io/input.json as a regular file, a preloaded one as a FIFO)."""
import os
import stat

KINDS = [(stat.S_ISREG, "file"), (stat.S_ISFIFO, "fifo"), (stat.S_ISDIR, "dir"),
         (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "char"), (stat.S_ISSOCK, "socket")]


def kind(path):
    try:
        st = os.lstat(path)
    except OSError as err:
        return err.strerror
    return next((name for test, name in KINDS if test(st.st_mode)), oct(st.st_mode))


def handler(event, context):
    io = os.environ["FAAS_INPUT"].rsplit("/", 1)[0]
    return {
        "input": kind(os.environ["FAAS_INPUT"]),
        "io": {name: kind(os.path.join(io, name)) for name in sorted(os.listdir(io))},
    }
