# A 1 MiB response (built once at import).
BODY = b"0123456789abcdef" * 65536


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(BODY)))])
    return [BODY]
