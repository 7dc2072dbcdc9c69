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

