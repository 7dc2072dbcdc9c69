"""An ASGI application hidden behind a plain __call__ that returns the
coroutine: not detectable, served as ASGI only with LSAPI_APP_INTERFACE=asgi."""
from raw import application as _inner


class Wrapped:
    def __call__(self, scope, receive, send):
        return _inner(scope, receive, send)


application = Wrapped()
