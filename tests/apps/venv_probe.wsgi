# Reports which Python environment the worker runs in: sys.prefix, the
# working directory, and where each module named in ?mod=... comes from.
import importlib
import os
import sys
from urllib.parse import parse_qs


def application(environ, start_response):
    lines = [
        "prefix=%s" % sys.prefix,
        "base_prefix=%s" % sys.base_prefix,
        "cwd=%s" % os.getcwd(),
    ]
    for name in parse_qs(environ["QUERY_STRING"]).get("mod", []):
        try:
            module = importlib.import_module(name)
        except ImportError:
            lines.append("%s=ImportError" % name)
        else:
            lines.append("%s=%s %s" % (name, module.__file__, getattr(module, "VALUE", "-")))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return ["\n".join(lines).encode()]
