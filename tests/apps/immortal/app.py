"""Preloaded with `lswsgi -m` in ProcessGroup mode: reports, per request,
whether objects the parent created are immortal in the child that serves it,
and uses, mutates and drops them (PATH_INFO selects; key=value lines)."""
import gc
import importlib
import os
import sys
import weakref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helper  # noqa: E402

LOADED_IN = os.getpid()
# A count of 2**32 - 1: CPython 3.12/3.13's immortal value (64-bit builds).
IMMORTAL = 0xFFFFFFFF
EVENTS = []


class Noisy:
    def __init__(self, tag):
        self.tag = tag

    def __del__(self):
        EVENTS.append("del-" + self.tag)


SHARED = {"items": ["item-%d" % i for i in range(100)], "big": 10**30, "f": 2.5, "b": b"bytes" * 3,
          "drop_me": ["x"] * 3}
DOOMED = Noisy("preloaded")
_TARGET = Noisy("weak-target")
WEAK = weakref.ref(_TARGET, lambda r: EVENTS.append("weakref-callback"))
# Many small objects, to measure the pages a child copies by reading them.
BULK = ["bulk-%d" % i for i in range(int(os.environ.get("IMMORTAL_TEST_BULK", "0")))]
# Every second one of many 64-byte strings freed again: free blocks scattered
# over the parent's object pools, where a child's new objects could land.
SPARSE = ["sparse-%08d" % i for i in range(int(os.environ.get("IMMORTAL_TEST_SPARSE", "0")))][::2]
# What /alloc makes in a child (the list itself is the parent's).
KEPT = []
# Classes changed after their creation, which resets their version tag: the
# first attribute lookup assigns a new one, writing the class object.
CLASSES = [type("C%d" % i, (), {}) for i in range(int(os.environ.get("IMMORTAL_TEST_CLASSES", "0")))]
for _c in CLASSES:
    _c.x = 1


# Classes to look names up on: the attribute cache's slot for a lookup
# depends on the class's version tag and the name's address, so many
# classes spread the names over all of its slots.
PROBES = [type("P%d" % i, (), {}) for i in range(256)]


def cache_names(n, tag):
    # n lookups of fresh names (not interned, 97 characters: the attribute
    # cache keeps names of up to 100): its slots end up holding a few
    # thousand of them, which nothing else holds.
    for i in range(n):
        getattr(PROBES[i % len(PROBES)], "%s-%090d" % (tag, i), None)


cache_names(int(os.environ.get("IMMORTAL_TEST_CACHE_NAMES", "0")), "parent")
# Every second one of many 2 000-byte bytes objects (malloc'd, above
# pymalloc's 512) freed again: free chunks between live ones on the heap.
HOLES = [bytes(2000) for _ in range(int(os.environ.get("IMMORTAL_TEST_HOLES", "0")))][::2]


def immortal(o):
    # getrefcount adds its argument's own reference to a mortal object.
    return sys.getrefcount(o) >= IMMORTAL


def state():
    code = application.__code__
    probes = {
        "shared": SHARED,
        "item": SHARED["items"][7],
        "big": SHARED["big"],
        "float": SHARED["f"],
        "bytes": SHARED["b"],
        "function": application,
        "code": code,
        "const": code.co_consts,
        "class": Noisy,
        "module": helper,
        "helper_table": helper.TABLE,
        "os": os,
        # A builtin static type's method: CPython makes those mortal.
        "str_join": str.__dict__["join"],
    }
    out = ["immortal_%s=%d" % (k, immortal(v)) for k, v in sorted(probes.items())]
    out.append("refcnt_shared=%d" % sys.getrefcount(SHARED))
    out.append("refcnt_new=%d" % sys.getrefcount([]))
    return out


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    lines = [
        "pid=%d" % os.getpid(),
        "loaded_in=%d" % LOADED_IN,
        "python=%d.%d" % sys.version_info[:2],
    ]
    if path == "/state":
        lines += state()
    elif path == "/mutate":
        SHARED["items"].append("child-%d" % os.getpid())
        SHARED.setdefault("counter", 0)
        SHARED["counter"] += 1
        SHARED["items"][0] = SHARED["items"][0] + "!"
        lines += ["items=%d" % len(SHARED["items"]), "counter=%d" % SHARED["counter"],
                  "first=%s" % SHARED["items"][0]]
    elif path == "/drop":
        global DOOMED, _TARGET
        DOOMED = None
        _TARGET = None
        SHARED.pop("drop_me", None)
        gc.collect()
        lines.append("weak_alive=%d" % (WEAK() is not None))
    elif path == "/fresh":
        Noisy("child")
        gc.collect()
    elif path == "/gc":
        gc.collect()
        gc.unfreeze()
        lines.append("frozen_after_unfreeze=%d" % gc.get_freeze_count())
        gc.collect()
        lines.append("frozen_after_collect=%d" % gc.get_freeze_count())
        lines.append("sum=%d" % sum(len(s) for s in helper.TABLE))
    elif path == "/reload":
        mod = importlib.reload(helper)
        lines += ["reloaded_in=%d" % mod.LOADED_IN, "lookup=%s" % mod.lookup("k7"),
                  "immortal_module=%d" % immortal(mod), "immortal_table=%d" % immortal(mod.TABLE)]
    elif path == "/alloc":
        # As many new 64-byte strings as SPARSE lost, kept.
        KEPT.extend("new-%012d" % i for i in range(len(SPARSE)))
        lines.append("kept=%d" % len(KEPT))
    elif path == "/classes":
        lines.append("classes=%d" % sum(c.x for c in CLASSES))
    elif path == "/names":
        n = 4 * int(os.environ.get("IMMORTAL_TEST_CACHE_NAMES", "0"))
        cache_names(n, "child")
        lines.append("kept=%d" % n)
    elif path == "/bigalloc":
        # As many new 2 000-byte objects as HOLES lost, kept.
        KEPT.extend(bytes(2000) for _ in range(len(HOLES)))
        lines.append("kept=%d" % len(KEPT))
    elif path == "/hash":
        # Hashes every BULK string: CPython caches a str's hash in the object.
        lines.append("hashed=%d" % sum(hash(s) & 1 for s in BULK))
    elif path == "/touch":
        # Reads every BULK string: on a mortal heap each read writes a count.
        lines.append("bulk=%d" % sum(len(s) for s in BULK))
    lines.append("events=%s" % ",".join(EVENTS))
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
