# Sends the request body back byte for byte (any method, any content), so a
# deployment can check that request and response bodies survive the whole
# path, binary data included. X-Echo-Method and X-Echo-Length describe what
# arrived; the Content-Type is the request's, or application/octet-stream.
# With the query "sized" it reads CONTENT_LENGTH bytes (what every WSGI
# server supports) instead of calling read() without a size.
def application(environ, start_response):
    if environ.get("QUERY_STRING") == "sized":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    else:
        body = environ["wsgi.input"].read()
    start_response("200 OK", [
        ("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Echo-Method", environ["REQUEST_METHOD"]),
        ("X-Echo-Length", str(len(body))),
    ])
    return [body]
