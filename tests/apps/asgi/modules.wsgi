# A WSGI app that reports whether the worker loaded asyncio or inspect into
# it (a WSGI site must not pay for ASGI support).
import sys


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    loaded = [m for m in ("asyncio", "inspect") if m in sys.modules]
    return [("loaded=%s" % ",".join(loaded)).encode()]
