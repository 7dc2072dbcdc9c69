"""ProcessGroup test app: says which process served the request and how it
was loaded; sleeps, crashes or holds memory on demand (PATH_INFO selects)."""
import gc
import os
import time

LOADED_BY = os.getpid()
HELD = []


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if path == "/abort":
        os.abort()
    if path == "/sleep":
        time.sleep(float(query or "1"))
    if path == "/alloc":
        HELD.append(b"x" * (int(query) << 20))
    lines = [
        "pid=%d" % os.getpid(),
        "ppid=%d" % os.getppid(),
        "loaded_by=%d" % LOADED_BY,
        "multiprocess=%s" % environ["wsgi.multiprocess"],
        "lsapi_env=%s" % ",".join(sorted(k for k in os.environ if k.startswith("LSAPI_"))),
        "frozen=%d" % (gc.get_freeze_count() if hasattr(gc, "get_freeze_count") else -1),
    ]
    body = ("\n".join(lines) + "\n").encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
