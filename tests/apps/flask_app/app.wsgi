# Script-handler entry point (SCRIPT_FILENAME): the worker puts this
# directory first on sys.path, so the Flask module next to it imports.
from app import app as application
