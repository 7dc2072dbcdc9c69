# Flask: a 204 whose response close() raises (a call_on_close hook that fails,
# as teardown-style cleanup does). tests/respond.rs.
from flask import Flask

app = Flask(__name__)


def fail_on_close():
    raise RuntimeError("cleanup failed on purpose")


@app.route("/empty")
def empty():
    return "", 204


@app.route("/ok")
def ok():
    return "ok"


@app.after_request
def hook(resp):
    from flask import request

    if request.path == "/empty":
        resp.call_on_close(fail_on_close)
    return resp


application = app
