"""Tries to reach anything over the network: the control plane, etcd, the
registry and the host (on loopback and on the host's own addresses), the
internet, DNS. Reports the interfaces it sees and how each attempt ended."""
import errno
import os
import socket


def attempt(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    finally:
        s.close()


def handler(event, context):
    results = {f"{h}:{p}": attempt(h, p) for h, p in event.get("targets", [])}
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
    }
