"""Tries to reach anything over the network: the control plane, etcd, the
registry and the host (on loopback and on the host's own addresses), the
internet, DNS. Reports the interfaces it sees and how each attempt ended.

With `listen` (egress tests), it is instead a server other calls try to
reach: it listens on every address for `seconds` and reports its address,
whether it could reach itself, and whom it accepted."""
import errno
import socket
import time
from concurrent.futures import ThreadPoolExecutor


def attempt(host, port, timeout=1.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    finally:
        s.close()


def own_address():
    # A UDP "connect" only picks the route and source address; it sends nothing.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()


def listen(port, seconds):
    own = own_address()
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(64)
    # Reaching itself on its own address proves the listener is up, so
    # that nobody else reaching it means something.
    itself = attempt(own, port) if own else "no address"
    srv.settimeout(0.2)
    accepted = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, peer = srv.accept()
        except socket.timeout:
            continue
        accepted.append(peer[0])
        conn.close()
    # Its own connection came from its own address; count only the others.
    others = [a for a in accepted if a != own]
    return {"address": own, "itself": itself, "accepted_from": others}


def raw_sockets():
    # Forging source addresses takes a raw socket (or CAP_NET_ADMIN).
    out = {}
    for name, family, kind in [
        ("inet_raw", socket.AF_INET, socket.SOCK_RAW),
        ("packet", socket.AF_PACKET, socket.SOCK_RAW),
    ]:
        try:
            socket.socket(family, kind, socket.IPPROTO_RAW if family == socket.AF_INET else 0).close()
            out[name] = "opened"
        except OSError as err:
            out[name] = errno.errorcode.get(err.errno, str(err.errno))
    return out


def handler(event, context):
    if "listen" in event:
        return listen(int(event["listen"]), float(event.get("seconds", 5)))
    # Tries only after `delay` seconds (egress tests change the node
    # meanwhile).
    time.sleep(float(event.get("delay", 0)))
    timeout = float(event.get("timeout", 1.0))
    targets = [(h, int(p)) for h, p in event.get("targets", [])]
    with ThreadPoolExecutor(max_workers=8) as pool:
        ended = list(pool.map(lambda t: attempt(t[0], t[1], timeout), targets))
    results = {f"{h}:{p}": e for (h, p), e in zip(targets, ended)}
    try:
        socket.getaddrinfo("example.com", 80)
        dns = "resolved"
    except OSError as err:
        dns = type(err).__name__
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.sendto(b"x", ("1.1.1.1", 53))
        internet = "sent"
    except OSError as err:
        internet = errno.errorcode.get(err.errno, str(err.errno))
    # Abstract unix sockets are per network namespace: none of the host's.
    with open("/proc/net/unix") as f:
        unix = [line.split()[-1] for line in f.readlines()[1:] if len(line.split()) > 7]
    with open("/proc/net/route") as f:
        routes = f.read().splitlines()[1:]
    return {
        "targets": results,
        "dns": dns,
        "internet": internet,
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "routes": routes,
        "unix_sockets": unix,
        "raw_sockets": raw_sockets(),
    }
