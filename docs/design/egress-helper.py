#!/usr/bin/env python3
"""Tiny test servers/clients for proto.sh (stdlib only).

  helper.py tcp  BIND PORT [PORT...]   TCP: answer every connection with "HTTP/1.0 200 OK ... ok <port>"
  helper.py udplog BIND PORT FILE      UDP: append every datagram's payload to FILE
  helper.py dns  BIND ANSWER_IP        UDP DNS: answer any A query with ANSWER_IP
  helper.py udpsend SRC DST PORT MSG   send one datagram from SRC (may be "")
"""
import os, socket, struct, sys, threading


def tcp(bind, ports):
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    def serve(port):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        s.bind((bind, port)); s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(2)
                try: c.recv(4096)
                except OSError: pass
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\nok %d\n" % (len(b"ok %d\n" % port), port))
            finally:
                c.close()
    ts = [threading.Thread(target=serve, args=(int(p),), daemon=True) for p in ports]
    for t in ts: t.start()
    for t in ts: t.join()


def udplog(bind, port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, int(port)))
    while True:
        data, addr = s.recvfrom(2048)
        with open(path, "ab") as f:
            f.write(data + b" from %s\n" % addr[0].encode())


def dns(bind, answer):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind, 53))
    ans = socket.inet_aton(answer)
    while True:
        q, addr = s.recvfrom(512)
        if len(q) < 12: continue
        tid, flags, qd = struct.unpack("!HHH", q[:6])
        # question section ends after the qname's zero byte + qtype + qclass
        i = 12
        while i < len(q) and q[i] != 0: i += q[i] + 1
        qend = i + 5
        qtype = struct.unpack("!H", q[i+1:i+3])[0] if qend <= len(q) else 0
        question = q[12:qend]
        if qtype == 1:
            hdr = struct.pack("!HHHHHH", tid, 0x8180, 1, 1, 0, 0)
            rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ans
        else:  # NOERROR, no answers (AAAA etc.)
            hdr = struct.pack("!HHHHHH", tid, 0x8180, 1, 0, 0, 0); rr = b""
        s.sendto(hdr + question + rr, addr)


def udpsend(src, dst, port, msg):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if src: s.bind((src, 0))
    s.sendto(msg.encode(), (dst, int(port)))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"tcp": lambda: tcp(args[0], args[1:]),
     "udplog": lambda: udplog(*args),
     "dns": lambda: dns(*args),
     "udpsend": lambda: udpsend(*args)}[cmd]()
