# One WSGI application with a route per behaviour the worker tests check.
# Module globals survive between requests in one worker process, so
# /stats reports how often close() ran.
import hashlib
import io
import json
import os
import sys
from urllib.parse import parse_qs

STATS = {"close": 0, "requests": 0}


def qs(environ):
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


class Closing:
    """An iterable whose close() is counted."""

    def __init__(self, blocks, fail_at=None):
        self.blocks = blocks
        self.fail_at = fail_at

    def __iter__(self):
        for i, b in enumerate(self.blocks):
            if i == self.fail_at:
                raise RuntimeError("failure after headers")
            yield b

    def close(self):
        STATS["close"] += 1


def read_body(environ, style, chunk):
    inp = environ["wsgi.input"]
    parts = []
    if style == "all":
        parts.append(inp.read())
    elif style == "none":
        parts.append(inp.read(None) if False else inp.read(-1))
    elif style == "n":
        while True:
            b = inp.read(chunk)
            if not b:
                break
            parts.append(b)
    elif style == "line":
        while True:
            b = inp.readline()
            if not b:
                break
            parts.append(b)
    elif style == "linen":
        while True:
            b = inp.readline(chunk)
            if not b:
                break
            assert len(b) <= chunk
            parts.append(b)
    elif style == "lines":
        parts.extend(inp.readlines())
    elif style == "iter":
        for line in inp:
            parts.append(line)
    else:
        raise ValueError(style)
    return b"".join(parts)


def ok(start_response, body, ctype="text/plain"):
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    STATS["requests"] += 1
    path = environ.get("PATH_INFO", "")
    q = qs(environ)

    if path == "/read":
        data = read_body(environ, q.get("style", "all"), int(q.get("chunk", "65536")))
        extra = environ["wsgi.input"].read(10)  # at the end: always empty
        out = "%d %s %d" % (len(data), hashlib.sha256(data).hexdigest(), len(extra))
        return ok(start_response, out.encode())
    if path == "/hash":
        h = hashlib.sha256()
        n = 0
        while True:
            b = environ["wsgi.input"].read(65536)
            if not b:
                break
            n += len(b)
            h.update(b)
        return ok(start_response, ("%d %s" % (n, h.hexdigest())).encode())
    if path == "/echo":
        return ok(start_response, environ["wsgi.input"].read())
    if path == "/partial":
        return ok(start_response, environ["wsgi.input"].read(int(q.get("n", "10"))))
    if path == "/ignore":
        return ok(start_response, b"ignored")
    if path == "/overread":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        return ok(start_response, environ["wsgi.input"].read(n + 100))
    if path == "/stats":
        return ok(start_response, json.dumps(STATS).encode(), "application/json")
    if path == "/environ":
        env = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple))}
        return ok(start_response, json.dumps(env).encode(), "application/json")
    if path == "/gen":
        n, size = int(q.get("n", "3")), int(q.get("size", "5"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            yield b""
            for i in range(n):
                yield bytes([65 + i % 26]) * size

        return gen()
    if path == "/big":
        size = int(q.get("size", str(10 << 20)))
        body = bytes(i % 251 for i in range(251)) * (size // 251) + b"x" * (size % 251)
        return ok(start_response, body, "application/octet-stream")
    if path == "/many":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"a", b"", b"bc", b"d" * 20000]
    if path == "/file":
        f = open(q["path"], "rb")
        f.seek(int(q.get("pos", "0")))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/filelike":
        data = io.BytesIO(b"0123456789" * 5000)

        class NoFileno:
            def read(self, n):
                return data.read(n)

            def close(self):
                STATS["close"] += 1

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](NoFileno(), 1000)
    if path == "/closing":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"one", b"two"])
    if path == "/closing_slow":
        size = int(q.get("size", str(1 << 20)))
        n = int(q.get("n", "64"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Closing([b"z" * size] * n)
    if path == "/raise_before":
        raise RuntimeError("failure before headers")
    if path == "/raise_in_iter":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"", b"x"], fail_at=1)
    if path == "/raise_after":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Closing([b"first block", b"second"], fail_at=1)
    if path == "/bad_status":
        start_response(q.get("s", "OK"), [])
        return [b"x"]
    if path == "/status_bytes":
        start_response(b"200 OK", [])
        return [b"x"]
    if path == "/bad_header_type":
        start_response("200 OK", [("X-Num", 5)])
        return [b"x"]
    if path == "/bad_header_crlf":
        start_response("200 OK", [("X-Evil", "a\r\nSet-Cookie: pwned=1")])
        return [b"x"]
    if path == "/bad_header_name":
        start_response("200 OK", [("X Evil", "a")])
        return [b"x"]
    if path == "/bad_header_nul":
        start_response("200 OK", [("X-Nul", "a\0b")])
        return [b"x"]
    if path == "/many_headers":
        n = int(q.get("n", "1001"))
        start_response("200 OK", [("X-H%d" % i, "v") for i in range(n)])
        return [b"x"]
    if path == "/huge_header":
        start_response("200 OK", [("X-Big", "v" * 70000)])
        return [b"x"]
    if path == "/no_start":
        return [b"forgot start_response"]
    if path == "/str_body":
        start_response("200 OK", [])
        return ["text, not bytes"]
    if path == "/twice":
        start_response("200 OK", [])
        start_response("200 OK", [])
        return [b"x"]
    if path == "/exc_info":
        start_response("200 OK", [("X-First", "1")])
        try:
            raise ValueError("boom")
        except ValueError:
            start_response("503 Service Unavailable", [("X-Second", "1")], sys.exc_info())
        return [b"replaced"]
    if path == "/exc_info_late":
        write = start_response("200 OK", [])
        write(b"sent")
        try:
            raise ValueError("late boom")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        return [b"never"]
    if path == "/exc_info_none":
        start_response("200 OK", [("X-First", "1")])
        start_response("202 Accepted", [("X-Second", "1")], (None, None, None))
        return [b"replaced without an error"]
    if path == "/exc_info_none_late":
        write = start_response("200 OK", [])
        write(b"sent")
        start_response("500 Oops", [], (None, None, None))
        return [b"never"]
    if path == "/write":
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"hello ")
        write(b"")
        write(b"world")
        return Closing([b"!"])
    if path == "/print":
        print("stray print to stdout")
        sys.stdout.flush()
        print("stray print to stderr", file=sys.stderr)
        return ok(start_response, b"printed")
    if path == "/errors":
        err = environ["wsgi.errors"]
        err.write("logged through wsgi.errors\n")
        err.writelines(["line two\n"])
        err.flush()
        return ok(start_response, b"logged")
    if path == "/stdin":
        data = sys.stdin.read()
        return ok(start_response, ("stdin:%d" % len(data)).encode())
    if path == "/abort":
        os.abort()
    if path == "/pid":
        return ok(start_response, str(os.getpid()).encode())
    if path == "/empty":
        start_response("204 No Content", [])
        return []
    if path == "/head_only":
        start_response("200 OK", [("X-Only", "head")])
        return iter([])
    return ok(start_response, ("path=%s" % path).encode())


def other_app(environ, start_response):
    return ok(start_response, b"other callable")


not_callable = 42
