"""A Starlette app on uvicorn: an async endpoint that updates shared state
under an asyncio.Lock (the smallest of the servers: its packages are among
the tests' own, so the smoke test runs it)."""
import asyncio

PATH = "/item/{id}"


def serve(port, workdir):
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    state = {"count": 0}
    locks = {}

    async def item(request):
        lock = locks.get("lock")
        if lock is None:
            lock = locks["lock"] = asyncio.Lock()     # made on the server's loop
        async with lock:
            state["count"] += 1
            n = state["count"]
        return JSONResponse({"id": int(request.path_params["item_id"]), "n": n})

    app = Starlette(routes=[Route("/item/{item_id:int}", item)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
