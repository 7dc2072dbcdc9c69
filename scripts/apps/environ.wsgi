# Dumps the WSGI environ as sorted `key=value` lines, plus the request body
# length, so a deployment can be checked from the outside.
def application(environ, start_response):
    body = environ["wsgi.input"].read()
    lines = []
    for key in sorted(environ):
        value = environ[key]
        if key in ("wsgi.input", "wsgi.errors", "wsgi.file_wrapper"):
            value = type(value).__name__
        lines.append("%s=%s" % (key, value))
    lines.append("body.length=%d" % len(body))
    out = ("\n".join(lines) + "\n").encode("latin-1", "replace")
    start_response("200 OK", [("Content-Type", "text/plain; charset=latin-1"),
                              ("Content-Length", str(len(out)))])
    return [out]
