"""A Starlette site: lifespan with state, JSON, streaming, a body read in
pieces, background tasks, an exception."""
import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"started_pid": os.getpid(), "greeting": "hello from lifespan"}


async def home(request):
    return JSONResponse(
        {
            "greeting": request.state.greeting,
            "started_pid": request.state.started_pid,
            "pid": os.getpid(),
            "path": request.url.path,
            "root_path": request.scope.get("root_path"),
            "query": dict(request.query_params),
            "url": str(request.url),
        }
    )


async def pieces(request):
    sizes = []
    digest = hashlib.sha256()
    async for chunk in request.stream():
        if chunk:
            sizes.append(len(chunk))
            digest.update(chunk)
    return JSONResponse({"sizes": sizes, "sha256": digest.hexdigest(), "len": sum(sizes)})


async def stream(request):
    n = int(request.query_params.get("n", "5"))

    async def gen():
        for i in range(n):
            yield "chunk-%d;" % i
            await asyncio.sleep(0.005)

    return StreamingResponse(gen(), media_type="text/plain")


DONE = []


def note(path, text):
    with open(path, "a") as f:
        f.write(text)


async def background(request):
    path = request.query_params["file"]
    return PlainTextResponse("queued", background=BackgroundTask(note, path, "ran\n"))


async def boom(request):
    raise ValueError("starlette view failed")


app = Starlette(
    routes=[
        Route("/", home),
        Route("/pieces", pieces, methods=["POST"]),
        Route("/stream", stream),
        Route("/background", background),
        Route("/boom", boom),
    ],
    lifespan=lifespan,
)
application = app
