# An application wrapped in wsgiref.validate.validator, which asserts every
# PEP 3333 rule on both sides: environ contents and types, the input and
# errors streams, start_response, and the result iterable.
from wsgiref.validate import validator


def app(environ, start_response):
    inp = environ["wsgi.input"]
    path = environ["PATH_INFO"]
    if path == "/lines":
        first = inp.readline()
        rest = inp.readlines()
        body = b"%d lines" % (len(rest) + (1 if first else 0))
    elif path == "/iter":
        body = b"".join(line for line in inp)
    else:
        body = inp.read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.errors"].write("validated request\n")
    environ["wsgi.errors"].flush()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = validator(app)
