"""A FastAPI site with Pydantic models: JSON in and out, validation errors,
streaming, an upload read in pieces, lifespan state, an exception."""
import asyncio
import contextlib
import hashlib
import os
from typing import List, Optional

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.items = {}
    yield {"db": "connected", "pid": os.getpid()}


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    tags: List[str] = []


@app.get("/items/{item_id}")
async def get_item(item_id: int, q: Optional[str] = None):
    return {"item_id": item_id, "q": q, "pid": os.getpid()}


@app.post("/items")
async def create_item(item: Item, request: Request):
    return {"created": item.model_dump(), "db": request.state.db}


@app.get("/json")
async def json_route():
    # The bench route: a small JSON document.
    return {"message": "hello", "numbers": [1, 2, 3], "ok": True}


@app.get("/stream")
async def stream(n: int = 4):
    async def gen():
        for i in range(n):
            yield b"line %d\n" % i
            await asyncio.sleep(0.005)

    return StreamingResponse(gen(), media_type="text/plain")


@app.post("/upload")
async def upload(request: Request):
    digest = hashlib.sha256()
    sizes = []
    async for chunk in request.stream():
        if chunk:
            digest.update(chunk)
            sizes.append(len(chunk))
    return {"len": sum(sizes), "sha256": digest.hexdigest(), "max_chunk": max(sizes or [0]), "chunks": len(sizes)}


@app.get("/sync")
def sync_route():
    # A plain def route: FastAPI runs it in a worker thread (anyio).
    import threading

    return {"thread": threading.current_thread().name != "MainThread"}


@app.get("/boom")
async def boom():
    raise KeyError("fastapi route failed")


application = app
