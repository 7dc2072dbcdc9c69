# Entry point of the Django project's ASGI handler (SCRIPT_FILENAME or -m):
# the worker puts this directory first on sys.path, so the project imports.
from mysite.asgi import application  # noqa: F401
