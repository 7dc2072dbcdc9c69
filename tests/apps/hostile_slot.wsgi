"""A tenant that attacks its group's shared status (tests/supervision.rs).

It finds the shared mappings in /proc/self/maps and writes them: in a layout
where a 64-byte line holds this process's pid (pid, state, ...), its own
line; otherwise every 64-byte line it can reach. PATH_INFO picks the attack;
QUERY_STRING is `a,b,hold`: write int32 a at +0 and uint32 b at +4, then
hold the request `hold` seconds.
"""
import ctypes
import os
import threading
import time


def shared_lines():
    lines = []
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) >= 6 and f[1].startswith("rw-s") and ("/dev/zero" in line or "memfd:" in line):
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            lines.extend(range(lo, hi, 64))
    return lines


def own_line():
    me = os.getpid()
    for off in shared_lines():
        if ctypes.c_int32.from_address(off).value == me:
            return off
    return None


def plant(a, b):
    own = own_line()
    targets = [own] if own is not None else shared_lines()
    for off in targets:
        ctypes.c_int32.from_address(off).value = a
        ctypes.c_uint32.from_address(off + 4).value = b
    return len(targets), own is not None


def say_idle():
    """Claims Idle (1) in whichever layout this is."""
    own = own_line()
    if own is not None:
        ctypes.c_uint32.from_address(own + 4).value = 1
        return 1
    lines = shared_lines()
    for off in lines:
        ctypes.c_uint32.from_address(off).value = 1
    return len(lines)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = [x for x in environ.get("QUERY_STRING", "").split(",") if x]
    body = "pid=%d\n" % os.getpid()
    if path == "/plant":
        n, old = plant(int(q[0]), int(q[1]))
        body += "planted=%d old_layout=%s\n" % (n, old)
        time.sleep(float(q[2]) if len(q) > 2 else 0)
    elif path == "/idle":
        body += "planted=%d\n" % say_idle()
        time.sleep(float(q[0]) if q else 0)
    elif path == "/hang":
        # An honest request that runs far past any limit.
        time.sleep(float(q[0]) if q else 3600)
    elif path == "/thread":
        # A non-daemon thread the exit path will wait for.
        threading.Thread(target=time.sleep, args=(3600,)).start()
    body = body.encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
