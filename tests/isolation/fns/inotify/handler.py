"""Kernel limits counted per uid (issue 10, finding 11).

{"mode": "hog", "hold_s": S}: creates inotify instances until refused and
holds them for S seconds (fs.inotify.max_user_instances counts them per
host uid, across containers). {"mode": "probe"}: creates one instance;
"ok" or the errno's name. Both report the uid they run as."""
import ctypes
import errno
import os
import time

libc = ctypes.CDLL(None, use_errno=True)


def inotify():
    ctypes.set_errno(0)
    fd = libc.inotify_init1(0)
    if fd < 0:
        return None, errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    return fd, "ok"


def handler(event, context):
    if event.get("mode") == "hog":
        fds, last = [], "ok"
        while len(fds) < 4096:
            fd, last = inotify()
            if fd is None:
                break
            fds.append(fd)
        time.sleep(float(event.get("hold_s", 3)))
        for fd in fds:
            os.close(fd)
        return {"held": len(fds), "stopped_by": last, "uid": os.getuid()}
    fd, outcome = inotify()
    if fd is not None:
        os.close(fd)
    return {"probe": outcome, "uid": os.getuid()}
