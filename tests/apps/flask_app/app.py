"""A small real Flask application for the framework tests.

Flask has no CSRF protection of its own: every POST must carry the token
kept in the signed session cookie as the form field `csrf_token`.
"""
import hashlib
import hmac
import os
import secrets
import tempfile
import time

from flask import (
    Flask,
    abort,
    redirect,
    request,
    send_file,
    session,
    stream_with_context,
    url_for,
)

app = Flask(__name__)
app.secret_key = "lswsgi-test-secret-not-for-production"


def csrf_token():
    if "csrf" not in session:
        session["csrf"] = secrets.token_hex(16)
    return session["csrf"]


@app.before_request
def check_csrf():
    if request.method == "POST":
        sent = request.form.get("csrf_token", "")
        kept = session.get("csrf", "")
        if not kept or not hmac.compare_digest(sent, kept):
            abort(403, "CSRF token missing or wrong")


@app.route("/form")
def form():
    return (
        '<form method="post" action="%s">'
        '<input type="hidden" name="csrf_token" value="%s">'
        '<input name="name"></form>' % (url_for("submit"), csrf_token())
    )


@app.route("/submit", methods=["POST"])
def submit():
    return "thanks %s" % request.form["name"]


@app.route("/login")
def login():
    session["user"] = request.args.get("user", "nobody")
    external = request.args.get("external") == "1"
    return redirect(url_for("done", _external=external))


@app.route("/done")
def done():
    return "done %s" % session.get("user", "-")


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    digest = hashlib.sha256()
    size = 0
    while True:
        block = f.stream.read(65536)
        if not block:
            break
        size += len(block)
        digest.update(block)
    return "%d %s %s %s" % (size, digest.hexdigest(), f.filename, request.form["note"])


@app.route("/cookie/set")
def cookie_set():
    resp = app.make_response("set")
    resp.set_cookie("flavour", request.args["v"], path="/")
    session["visits"] = 0
    return resp


@app.route("/cookie/get")
def cookie_get():
    session["visits"] = session.get("visits", 0) + 1
    return "flavour=%s visits=%d" % (request.cookies.get("flavour", "-"), session["visits"])


@app.route("/stream")
def stream():
    n = int(request.args["n"])

    def generate():
        for i in range(n):
            # The request context is still there while the body streams.
            yield "%s-%d;" % (request.args["who"], i)

    return app.response_class(stream_with_context(generate()), mimetype="text/plain")


@app.route("/stream_gate")
def stream_gate():
    # The second block waits until the client has seen the first one: a
    # worker that buffered the body would never deliver it.
    gate = request.args["gate"]

    def generate():
        yield "first;"
        deadline = time.monotonic() + 5
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second;" if os.path.exists(gate) else "gate timed out;"

    return app.response_class(stream_with_context(generate()), mimetype="text/plain")


@app.route("/whoami")
def whoami():
    env = request.environ
    return "%d %s %s|%s" % (
        os.getpid(),
        env["wsgi.multiprocess"],
        env["SCRIPT_NAME"],
        env["PATH_INFO"],
    )


@app.route("/where")
def where():
    import sys

    import flask

    return "prefix=%s\ncwd=%s\nframework=%s\nloaded=%s" % (
        sys.prefix,
        os.getcwd(),
        flask.__file__,
        ",".join(m for m in ("flask", "django") if m in sys.modules),
    )


@app.route("/hello/<name>")
def hello(name):
    return "hello %s|%s|%s|%s" % (name, request.args["q"], request.path, request.url)


@app.route("/download")
def download():
    # send_file goes through wsgi.file_wrapper (and Range requests wrap it).
    path = os.path.realpath(request.args["path"])
    if not path.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep):
        abort(404)
    return send_file(
        path,
        mimetype="application/octet-stream",
        as_attachment=True,
        download_name="data.bin",
        conditional=True,
    )


@app.route("/boom")
def boom():
    # Flask answers 500 itself and logs the traceback to wsgi.errors.
    return "%d" % (1 // int(request.args.get("d", "0")))
