# Sends the request body back byte for byte (any method, any content), so a
# deployment can check that request and response bodies survive the whole
# path, binary data included. X-Echo-Method and X-Echo-Length describe what
# arrived; the Content-Type is the request's, or application/octet-stream.
def application(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [
        ("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream"),
        ("Content-Length", str(len(body))),
        ("X-Echo-Method", environ["REQUEST_METHOD"]),
        ("X-Echo-Length", str(len(body))),
    ])
    return [body]
