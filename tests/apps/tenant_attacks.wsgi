"""A hostile tenant of a suEXEC daemon (tests/tenants.rs): each PATH_INFO is
one attack on what its child shares with the root parent. QUERY_STRING
gives the seconds an attack lasts where it matters.

The child's status page is the shared writable mapping in /proc/self/maps
(`rw-s`); a slot holds the state (uint32 at +0: 1 idle, 4 leaving) and the
requests begun (uint64 at +8).
"""
import ctypes
import fcntl
import os
import sys
import threading
import time

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.mremap.restype = ctypes.c_void_p
LIBC.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
PAGE = 4096


def own_page():
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) >= 6 and f[1].startswith("rw-s") and ("/dev/zero" in line or "memfd:" in line):
            if "group-header" in line:
                continue
            lo, hi = (int(x, 16) for x in f[0].split("-"))
            if hi - lo == PAGE:
                return lo
    return None


def lie(addr, state, requests):
    ctypes.c_uint32.from_address(addr).value = state
    ctypes.c_uint64.from_address(addr + 8).value = requests


def seconds(environ, default):
    q = environ.get("QUERY_STRING", "")
    return float(q) if q else default


def escape(secs):
    """A grandchild in a session of its own keeps the page and lies."""
    page = own_page()
    if page is None:
        return "no page"
    if os.fork() == 0:
        try:
            os.setsid()
            os.closerange(3, 4096)
            if os.fork() == 0:
                end = time.time() + secs
                while time.time() < end:
                    lie(page, 4, 1 << 60)
                    time.sleep(0.01)
        finally:
            os._exit(0)
    return "escaped"


def grow(secs):
    """Grows the page's mapping in place over what follows it and lies there."""
    page = own_page()
    if page is None:
        return "no page"
    p = LIBC.mremap(page, PAGE, 4 * PAGE, 0)
    if p in (None, ctypes.c_void_p(-1).value):
        return "mremap failed: errno %d" % ctypes.get_errno()
    end = time.time() + secs
    while time.time() < end:
        for i in range(1, 4):
            # Past a sealed one-page object this is SIGBUS: only we die.
            lie(page + i * PAGE, 4, 1 << 60)
        time.sleep(0.01)
    return "grown"


def crash():
    """Says it never started, then dies before answering."""
    page = own_page()
    if page is not None:
        ctypes.memset(page, 0, 64)
    os._exit(1)


def fake_progress(secs):
    """A long request whose thread keeps saying idle and progressing."""
    page = own_page()
    stop = []

    def liar():
        n = 100
        while not stop:
            n += 1
            lie(page, 1, n)
            time.sleep(0.5)

    if page is not None:
        threading.Thread(target=liar, daemon=True).start()
    time.sleep(secs)
    stop.append(1)
    return "done"


def log_attack():
    """Truncates the log behind fd 2 and clears O_APPEND on it."""
    out = []
    try:
        os.ftruncate(2, 0)
        out.append("truncated")
    except OSError as e:
        out.append("ftruncate: %s" % e.strerror)
    flags = fcntl.fcntl(2, fcntl.F_GETFL)
    fcntl.fcntl(2, fcntl.F_SETFL, flags & ~os.O_APPEND)
    sys.stderr.write("tenant-log-marker %d\n" % os.getpid())
    sys.stderr.flush()
    return " ".join(out)


def flood(secs):
    """Writes to stderr as fast as it can for `secs` (one over-long line first)."""
    err = os.fdopen(os.dup(2), "w", buffering=1 << 16)
    err.write("long-line " + "x" * 5000 + "\n")
    line = "flood " + "y" * 994 + "\n"
    n = 0
    end = time.time() + secs
    # At most 32 MB, so that a worker without a relay fills no disk.
    while time.time() < end and n < 32 << 20:
        err.write(line)
        n += len(line)
    err.flush()
    return "flooded %d" % n


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/escape":
        body = escape(seconds(environ, 10))
    elif path == "/grow":
        body = grow(seconds(environ, 8))
    elif path == "/crash":
        crash()
    elif path == "/fake":
        body = fake_progress(seconds(environ, 30))
    elif path == "/flood":
        body = flood(seconds(environ, 4))
    elif path == "/log":
        body = log_attack()
    elif path == "/say":
        sys.stderr.write(environ.get("QUERY_STRING", "") + "\n")
        sys.stderr.flush()
        body = "said"
    elif path == "/sleep":
        time.sleep(seconds(environ, 1))
        body = "slept"
    else:
        body = "ok"
    body = ("%d %d %s" % (os.getpid(), os.getuid(), body)).encode()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
