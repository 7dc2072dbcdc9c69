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
    elif path == "/touch":
        # Reads every BULK string: on a mortal heap each read writes a count.
        lines.append("bulk=%d" % sum(len(s) for s in BULK))
    lines.append("events=%s" % ",".join(EVENTS))
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
