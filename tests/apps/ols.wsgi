# The application tests/ols.rs serves through a real OpenLiteSpeed. PATH_INFO
# selects the behaviour; every answer names the serving process, so the test
# can tell workers apart (a new pid after a CONN_CLOSE, a fork per connection).
# OLS_STATE (set in the server's configuration) is a directory the worker's
# user can write: /crash counts its attempts there, since the server retries.
import json
import os
import sys
import time


def reply(start_response, body, status="200 OK", ctype="text/plain"):
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                            ("X-Pid", str(os.getpid()))])
    return [body]


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING", "")
    if path.startswith("/env"):
        env = {k: v for k, v in environ.items() if isinstance(v, (str, bool, tuple))}
        env["process.argv"] = list(sys.argv)
        env["process.cmdline"] = open("/proc/self/cmdline", "rb").read().decode(
            "latin-1").split("\0")[:-1]
        env["process.environ.APP_MARKER"] = os.environ.get("APP_MARKER", "")
        return reply(start_response, json.dumps(env).encode(), ctype="application/json")
    if path == "/echo":
        return reply(start_response, environ["wsgi.input"].read(),
                     ctype="application/octet-stream")
    if path == "/sleep":
        time.sleep(float(query or "1"))
        return reply(start_response, ("slept %s\n" % query).encode())
    if path == "/errors":
        # QUERY_STRING bytes to wsgi.errors in one write, then a marker line.
        n = int(query or "0")
        environ["wsgi.errors"].write("e" * n + "\n")
        environ["wsgi.errors"].write("ols test: %d bytes to wsgi.errors\n" % n)
        return reply(start_response, b"logged\n")
    if path == "/bare":
        # No header at all (a raw app's 204, say): the server must still see
        # a complete response header.
        status = {"204": "204 No Content"}.get(query, "200 OK")
        start_response(status, [])
        return [] if query == "204" else [b"bare body\n"]
    if path == "/pid":
        return reply(start_response, ("%d\n" % os.getpid()).encode())
    if path == "/raise":
        raise RuntimeError("ols test: deliberate failure before the headers")
    if path == "/crash":
        # One line per attempt, then the process dies in the middle of the
        # request (no response at all).
        with open(os.path.join(os.environ["OLS_STATE"], "crash-" + query), "a") as f:
            f.write("%d\n" % os.getpid())
        os._exit(3)
    return reply(start_response, b"Hello from lswsgi!\n")
