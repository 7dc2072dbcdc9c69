"""The FastAPI JSON route of the ASGI bench, served natively (ASGI)."""
from fastapi import FastAPI

app = FastAPI()


@app.get("/json")
async def json_route():
    return {"message": "hello", "numbers": [1, 2, 3], "ok": True}


application = app
