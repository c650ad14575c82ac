"""An aiohttp app: each request takes an asyncio.Semaphore(4) slot, yields,
and updates shared state under an asyncio.Lock."""
import asyncio

PATH = "/item/{id}"


def serve(port, workdir):
    from aiohttp import web

    state = {}

    async def setup(app):
        state["sem"] = asyncio.Semaphore(4)     # made on the server's loop
        state["lock"] = asyncio.Lock()
        state["count"] = 0

    async def item(request):
        item_id = int(request.match_info["item_id"])
        async with state["sem"]:
            await asyncio.sleep(0)
            async with state["lock"]:
                state["count"] += 1
                n = state["count"]
        return web.json_response({"id": item_id, "n": n})

    app = web.Application()
    app.on_startup.append(setup)
    app.router.add_get("/item/{item_id}", item)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                handle_signals=True)
