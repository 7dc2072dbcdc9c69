# The smallest WSGI application: what `lsapi-call --spawn` shows a newcomer.
def application(environ, start_response):
    body = b"Hello from lswsgi!\n"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
