"""A plain ASGI 3 application (no framework): every protocol detail the
tests check, plus lifespan with a state object and background tasks."""
import asyncio
import json
import os

STARTS = []
BG = {"count": 0, "task": None}


async def _ticker():
    while True:
        BG["count"] += 1
        await asyncio.sleep(0.01)


async def _body(receive):
    """The body's SHA-256 and the sizes of its http.request messages (the
    body itself is not kept)."""
    import hashlib

    digest, sizes = hashlib.sha256(), []
    while True:
        m = await receive()
        assert m["type"] == "http.request", m
        digest.update(m["body"])
        sizes.append(len(m["body"]))
        if not m.get("more_body", False):
            return digest, sizes


async def _json(send, obj, status=200, headers=()):
    body = json.dumps(obj, sort_keys=True).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def application(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                STARTS.append(os.getpid())
                scope["state"]["started_by"] = os.getpid()
                scope["state"]["items"] = ["from-lifespan"]
                if os.environ.get("RAW_FAIL_STARTUP"):
                    await send({"type": "lifespan.startup.failed", "message": "no database"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                if os.environ.get("RAW_SHUTDOWN_HANG"):
                    await asyncio.sleep(3600)
                path = os.environ.get("RAW_SHUTDOWN_FILE")
                if path:
                    with open(path, "a") as f:
                        f.write("shutdown %d\n" % os.getpid())
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    path = scope["path"]
    if path.endswith("/scope"):
        s = {k: v for k, v in scope.items() if k not in ("state",)}
        s["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in scope["headers"]]
        for k in ("raw_path", "query_string"):
            s[k] = s[k].decode("latin-1")
        s["client"] = list(s["client"]) if s["client"] else None
        s["server"] = list(s["server"]) if s["server"] else None
        s["state"] = scope.get("state")
        s["starts"] = STARTS
        s["pid"] = os.getpid()
        s["loop_id"] = id(asyncio.get_running_loop())
        await _json(send, s)
    elif path.endswith("/echo"):
        digest, sizes = await _body(receive)
        await _json(send, {"len": sum(sizes), "sha256": digest.hexdigest(), "sizes": sizes})
    elif path.endswith("/stream"):
        n = int(scope["query_string"] or b"3")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(n):
            await send({"type": "http.response.body", "body": b"part %d\n" % i, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    elif path.endswith("/raise-before"):
        raise RuntimeError("raised before http.response.start")
    elif path.endswith("/raise-after"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
        raise RuntimeError("raised after the body started")
    elif path.endswith("/no-start"):
        return
    elif path.endswith("/incomplete"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    elif path.endswith("/bad-header"):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-bad", b"a\r\nInjected: 1")]})
        await send({"type": "http.response.body", "body": b"never"})
    elif path.endswith("/twice"):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first"})
        try:
            await send({"type": "http.response.body", "body": b"second"})
        except RuntimeError as e:
            print("second send refused: %s" % e, flush=True)
    elif path.endswith("/disconnect"):
        # Reads the body, answers, then receive() says http.disconnect.
        await _body(receive)
        waiter = asyncio.ensure_future(receive())
        await asyncio.sleep(0)
        pending_during = not waiter.done()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        m = await waiter
        print("after response: pending=%s then %s" % (pending_during, m["type"]), flush=True)
    elif path.endswith("/bg/start"):
        if BG["task"] is None:
            BG["task"] = asyncio.ensure_future(_ticker())
        await asyncio.sleep(0.05)
        await _json(send, {"count": BG["count"]})
    elif path.endswith("/bg/count"):
        await _json(send, {"count": BG["count"]})
    elif path.endswith("/bg/wait"):
        before = BG["count"]
        await asyncio.sleep(0.3)
        await _json(send, {"before": before, "after": BG["count"]})
    elif path.endswith("/pathsend"):
        f = os.path.abspath(__file__)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/x-python")]})
        await send({"type": "http.response.pathsend", "path": f})
    elif path.endswith("/slow-upload"):
        # Reads the body with a pause between messages.
        total = 0
        while True:
            m = await receive()
            if m["type"] == "http.disconnect":
                print("slow-upload saw http.disconnect after %d bytes" % total, flush=True)
                return
            if total == 0:
                print("slow-upload reading", flush=True)
            total += len(m["body"])
            await asyncio.sleep(0.01)
            if not m.get("more_body"):
                break
        await _json(send, {"len": total})
    else:
        await _json(send, {"hello": "asgi", "path": path}, status=200)
