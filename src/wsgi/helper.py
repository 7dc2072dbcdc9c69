"""Support code the lswsgi worker runs once in each Python interpreter it uses.

Kept in Python because none of it is on the per-request path except
FileWrapper, whose real files the worker sends with sendfile(2) without
iterating.
"""
import io
import os
import signal as _signal
import sys


class FileWrapper:
    """wsgi.file_wrapper: yields blocks of a file-like object."""

    # The worker sends these (on a regular file) with sendfile(2): their
    # bytes are the file's bytes. Anything else is iterated.
    _fileio = io.FileIO
    _buffered = io.BufferedReader

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


def load_script(path, name):
    """Runs the WSGI script at `path` as a new module `name` (put in sys.modules,
    __file__ set, its directory first on sys.path, like `python path`)."""
    directory = os.path.dirname(path) or "."
    if directory not in sys.path:
        sys.path.insert(0, directory)
    with open(path, "rb") as f:
        source = f.read()
    code = compile(source, path, "exec", dont_inherit=True)
    module = type(sys)(name)
    module.__file__ = path
    sys.modules[name] = module
    try:
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_module(name):
    """Imports a dotted module name (for `-m package.module`)."""
    import importlib

    return importlib.import_module(name)


def format_exception(exc):
    # Imported on first use: traceback pulls in several modules a healthy
    # worker never needs.
    import traceback

    # The worker's own frames (load_script) lead the traceback of a script
    # that failed to load: they tell the site's owner nothing.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is _OWN_GLOBALS:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


_OWN_GLOBALS = globals()


_RESERVED = frozenset(
    getattr(_signal, n)
    for n in ("SIGTERM", "SIGINT", "SIGUSR1", "SIGCHLD", "SIGPIPE")
    if hasattr(_signal, n)
)


def restrict_signals(log):
    """Like mod_wsgi's WSGIRestrictSignal: an application may not take over
    the signals the worker's supervision relies on. The attempt is logged and
    ignored; the current handler is returned as if it had been replaced."""
    original = _signal.signal
    if getattr(original, "__lswsgi_restricted__", False):
        return

    def signal(signalnum, handler):
        if signalnum in _RESERVED:
            log(
                "application tried to set a handler for signal %d; ignored "
                "(the worker needs it for supervision)" % int(signalnum)
            )
            return _signal.getsignal(signalnum)
        return original(signalnum, handler)

    signal.__doc__ = original.__doc__
    signal.__lswsgi_restricted__ = True
    _signal.signal = signal



# ---- ASGI ------------------------------------------------------------------
#
# The worker serves one request at a time on one thread. An ASGI request's
# coroutine runs on this interpreter's event loop with run_until_complete, so
# the loop runs only while a request (or a lifespan step) is being served:
# tasks an application leaves behind are suspended while the worker waits for
# the next request and resume while a later one runs. receive() and send()
# do their socket I/O synchronously in the worker (`rx`, `tx`) and so
# complete at once, except receive() once the body is consumed, which waits
# for the end of the response, as the spec asks ("http.disconnect" then).


# CO_COROUTINE: the code flag of an `async def` function.
_CO_COROUTINE = 0x80


def _coroutine_function(f):
    """inspect.iscoroutinefunction without importing inspect (which a WSGI
    worker would otherwise load, and keep, just for this check)."""
    functools = sys.modules.get("functools")
    while functools is not None and isinstance(f, functools.partial):
        f = f.func
    f = getattr(f, "__func__", f)  # a bound method: its function
    code = getattr(f, "__code__", None)
    if code is not None and getattr(code, "co_flags", 0) & _CO_COROUTINE:
        return True
    # Marked with inspect.markcoroutinefunction (3.12+, asgiref): inspect is
    # loaded already.
    if getattr(f, "_is_coroutine_marker", None) is not None:
        import inspect

        return inspect.iscoroutinefunction(f)
    return False


def asgi_kind(app):
    """Whether `app` is an ASGI 3 application: a coroutine function, or an
    object whose __call__ is one (FastAPI, Starlette, Django's ASGIHandler)."""
    if isinstance(app, type):
        return False
    if _coroutine_function(app):
        return True
    call = getattr(app, "__call__", None)
    return call is not None and _coroutine_function(call)


class _Lifespan:
    """The lifespan protocol of one application in this process."""

    def __init__(self, host, app):
        self.host = host
        self.app = app
        # None: the application does not take part; a dict: its state.
        self.state = None
        # Set when startup failed: the reason, for every later request.
        self.failed = None
        self.task = None

    def _step(self, message):
        """Delivers `message` and runs the loop until the application answers
        (or its lifespan coroutine ends); returns the answer or None."""
        loop = self.host.loop
        self.reply = loop.create_future()
        self.inbox.put_nowait(message)
        return loop.run_until_complete(self.reply)

    def startup(self):
        import asyncio

        loop = self.host.loop
        state = {}
        self.inbox = asyncio.Queue()
        self.received = False
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": state,
        }

        async def receive():
            self.received = True
            return await self.inbox.get()

        async def send(message):
            kind = message.get("type") if isinstance(message, dict) else None
            if kind not in (
                "lifespan.startup.complete",
                "lifespan.startup.failed",
                "lifespan.shutdown.complete",
                "lifespan.shutdown.failed",
            ):
                raise RuntimeError("unexpected ASGI lifespan message %r" % (message,))
            if not self.reply.done():
                self.reply.set_result(message)

        async def main():
            try:
                await self.app(scope, receive, send)
                error = None
            except BaseException as e:  # reported through the reply below
                error = e
            if not self.reply.done():
                self.reply.set_result(error)

        self.reply = loop.create_future()
        self.inbox.put_nowait({"type": "lifespan.startup"})
        self.task = loop.create_task(main())
        answer = loop.run_until_complete(self.reply)
        if isinstance(answer, dict):
            if answer["type"] == "lifespan.startup.complete":
                self.state = state
                return
            self.failed = "lifespan.startup.failed: %s" % answer.get("message", "")
            raise RuntimeError("ASGI " + self.failed)
        if isinstance(answer, BaseException) and self.received:
            self.failed = "the application raised %s" % format_exception(answer).rstrip()
            raise RuntimeError("ASGI lifespan startup failed") from answer
        # Raised before receiving anything (Django: "can only handle ASGI/HTTP
        # connections") or returned at once: the application has no lifespan.
        self.task = None

    def shutdown(self):
        if self.task is None or self.state is None or self.task.done():
            return
        answer = self._step({"type": "lifespan.shutdown"})
        if isinstance(answer, dict) and answer["type"] == "lifespan.shutdown.failed":
            sys.stderr.write(
                "lswsgi: ASGI lifespan.shutdown.failed: %s\n" % answer.get("message", "")
            )
        elif isinstance(answer, BaseException):
            sys.stderr.write(
                "lswsgi: ASGI lifespan shutdown raised:\n%s" % format_exception(answer)
            )


class _AsgiHost:
    """This interpreter's event loop and the lifespans of its ASGI apps.
    Made on the first ASGI request, so only in a process that serves."""

    def __init__(self):
        import asyncio
        import atexit

        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.lifespans = {}
        # Run by the worker's bounded exit work (LSAPI_SHUTDOWN_TIMEOUT).
        atexit.register(self.shutdown)

    def lifespan(self, app):
        life = self.lifespans.get(id(app))
        if life is None or life.app is not app:
            life = self.lifespans[id(app)] = _Lifespan(self, app)
            life.startup()
        if life.failed is not None:
            raise RuntimeError(
                "the ASGI lifespan startup failed in this process (%s)" % life.failed
            )
        return life

    def serve(self, app, scope, rx, tx):
        life = self.lifespan(app)
        if life.state is not None:
            scope["state"] = life.state.copy()
        loop = self.loop
        waiters = []

        async def receive():
            message = rx()
            if message is not None:
                return message
            # The whole body was delivered: wait for the end of the response.
            waiter = loop.create_future()
            waiters.append(waiter)
            return await waiter

        async def send(message):
            if tx(message):
                _wake(waiters)

        try:
            loop.run_until_complete(app(scope, receive, send))
        finally:
            _wake(waiters)

    def shutdown(self):
        loop = self.loop
        if loop.is_closed():
            return
        for life in list(self.lifespans.values()):
            try:
                life.shutdown()
            except BaseException as e:
                sys.stderr.write("lswsgi: ASGI lifespan shutdown failed:\n%s" % format_exception(e))
        import asyncio

        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _wake(waiters):
    for w in waiters:
        if not w.done():
            w.set_result({"type": "http.disconnect"})
    del waiters[:]


_asgi_host = None


def asgi_serve(app, scope, rx, tx):
    """Runs one ASGI request to completion on this interpreter's loop."""
    global _asgi_host
    if _asgi_host is None:
        _asgi_host = _AsgiHost()
    _asgi_host.serve(app, scope, rx, tx)
