"""The same FastAPI app behind a2wsgi's ASGI-to-WSGI adapter (its own event
loop thread), as a WSGI worker without ASGI support would have to run it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from a2wsgi import ASGIMiddleware  # noqa: E402
from fastapi_json import app  # noqa: E402

application = ASGIMiddleware(app)
