import hashlib
import os
import tempfile
import time

from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseForbidden,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST


def csrf_failure(request, reason=""):
    return HttpResponseForbidden("CSRF failure: %s" % reason, content_type="text/plain")


@require_GET
def form(request):
    return render(request, "form.html")


@require_POST
def submit(request):
    return HttpResponse("thanks %s" % request.POST["name"], content_type="text/plain")


def login(request):
    request.session["user"] = request.GET.get("user", "nobody")
    url = reverse("done")
    if request.GET.get("external") == "1":
        url = request.build_absolute_uri(url)
    return HttpResponseRedirect(url)


def done(request):
    return HttpResponse("done %s" % request.session.get("user", "-"), content_type="text/plain")


@require_POST
def upload(request):
    f = request.FILES["file"]
    digest = hashlib.sha256()
    size = 0
    for chunk in f.chunks(65536):
        size += len(chunk)
        digest.update(chunk)
    body = "%d %s %s %s" % (size, digest.hexdigest(), f.name, request.POST["note"])
    return HttpResponse(body, content_type="text/plain")


def cookie_set(request):
    response = HttpResponse("set", content_type="text/plain")
    response.set_cookie("flavour", request.GET["v"], path="/")
    request.session["visits"] = 0
    return response


def cookie_get(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    body = "flavour=%s visits=%d" % (
        request.COOKIES.get("flavour", "-"),
        request.session["visits"],
    )
    return HttpResponse(body, content_type="text/plain")


def stream(request):
    n = int(request.GET["n"])
    who = request.GET["who"]

    def generate():
        for i in range(n):
            yield "%s-%d;" % (who, i)

    return StreamingHttpResponse(generate(), content_type="text/plain")


def stream_gate(request):
    # The second block waits until the client has seen the first one: a
    # worker that buffered the body would never deliver it.
    gate = request.GET["gate"]

    def generate():
        yield "first;"
        deadline = time.monotonic() + 5
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second;" if os.path.exists(gate) else "gate timed out;"

    return StreamingHttpResponse(generate(), content_type="text/plain")


def whoami(request):
    env = request.META
    body = "%d %s %s|%s" % (
        os.getpid(),
        env["wsgi.multiprocess"],
        env["SCRIPT_NAME"],
        env["PATH_INFO"],
    )
    return HttpResponse(body, content_type="text/plain")


def where(request):
    import sys

    import django

    body = "prefix=%s\ncwd=%s\nframework=%s\nloaded=%s" % (
        sys.prefix,
        os.getcwd(),
        django.__file__,
        ",".join(m for m in ("flask", "django") if m in sys.modules),
    )
    return HttpResponse(body, content_type="text/plain")


def hello(request, name):
    body = "hello %s|%s|%s|%s" % (
        name,
        request.GET["q"],
        request.path_info,
        request.build_absolute_uri(),
    )
    return HttpResponse(body, content_type="text/plain; charset=utf-8")


def download(request):
    # FileResponse goes through wsgi.file_wrapper.
    path = os.path.realpath(request.GET["path"])
    if not path.startswith(os.path.realpath(tempfile.gettempdir()) + os.sep):
        raise Http404()
    return FileResponse(open(path, "rb"), as_attachment=True, filename="data.bin")


def boom(request):
    # Django answers 500 itself and logs through the "django.request" logger.
    return HttpResponse("%d" % (1 // int(request.GET.get("d", "0"))))
