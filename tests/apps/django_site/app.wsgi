# Script-handler entry point (SCRIPT_FILENAME): the worker puts this
# directory first on sys.path, so the project package next to it imports.
from mysite.wsgi import application  # noqa: F401
