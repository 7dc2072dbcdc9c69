# Streams the request body through SHA-256 in 64 KiB reads (upload scenario).
import hashlib


def application(environ, start_response):
    h = hashlib.sha256()
    read = environ["wsgi.input"].read
    while True:
        block = read(65536)
        if not block:
            break
        h.update(block)
    out = h.hexdigest().encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(out)))])
    return [out]
