# Response-path edge cases (tests/respond.rs). One route per case.
import gzip


class CloseRaises:
    """An empty body whose close() raises (like a failing teardown)."""

    def __iter__(self):
        return iter(())

    def close(self):
        raise RuntimeError("close failed on purpose")


class S(str):
    pass


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    qs = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    if path == "/close-raises":
        start_response("204 No Content", [])
        return CloseRaises()
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"hello"]
    if path == "/fw-gzip":
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](gzip.open(qs["path"], "rb"))
    if path == "/fw-len":
        f = open(qs["path"], "rb")
        f.seek(int(qs.get("pos", "0")))
        start_response("200 OK", [("Content-Length", qs["len"])])
        return environ["wsgi.file_wrapper"](f)
    if path == "/fw-raw":
        f = open(qs["path"], "rb", buffering=0)
        f.seek(int(qs.get("pos", "0")))
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](f)
    if path == "/read1":
        inp = environ["wsgi.input"]
        n = 0
        while inp.read(1):
            n += 1
        start_response("200 OK", [])
        return [str(n).encode()]
    if path == "/lines":
        n = 0
        for line in environ["wsgi.input"]:
            n += len(line)
        start_response("200 OK", [])
        return [str(n).encode()]
    if path == "/strsub":
        hs = [(S("X-Sub"), S("yes"))]
        try:
            import enum

            class E(enum.StrEnum):
                V = "enum-value"

            hs.append(("X-Enum", E.V))
        except AttributeError:
            hs.append(("X-Enum", "enum-value"))
        start_response(S("200 OK"), hs)
        return [b"ok"]
    if path == "/sr-kw":
        start_response(status="200 OK", response_headers=[("X-Kw", "1")], exc_info=None)
        return [b"kw"]
    if path == "/sr-badkw":
        try:
            start_response("200 OK", [], bogus=1)
        except TypeError:
            start_response("200 OK", [])
            return [b"TypeError"]
        return [b"accepted"]
    if path == "/gil":
        # A thread counts while the request blocks reading a slow body.
        import threading
        import time

        ticks = [0]
        stop = threading.Event()

        def count():
            while not stop.is_set():
                ticks[0] += 1
                time.sleep(0.001)

        t = threading.Thread(target=count)
        t.start()
        time.sleep(0.05)
        start = ticks[0]
        environ["wsgi.input"].read()
        during = ticks[0] - start
        stop.set()
        t.join()
        start_response("200 OK", [])
        return [str(during).encode()]
    start_response("404 Not Found", [])
    return [b"no route"]
