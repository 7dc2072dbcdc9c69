# A startup file for `lswsgi -m`: state created at load time is visible to
# every request, and the callable name can be chosen on the command line.
import os

LOADED_IN = os.getpid()


def application(environ, start_response):
    body = ("preloaded %s %s|%s" % (LOADED_IN, environ["SCRIPT_NAME"], environ["PATH_INFO"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"named callable"]
