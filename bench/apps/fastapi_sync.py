"""A FastAPI app with a sync endpoint (run on anyio's worker threads) that
updates shared state under a threading.Lock, served by uvicorn."""
import threading

PATH = "/item/{id}"


def serve(port, workdir):
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    lock = threading.Lock()
    state = {"count": 0}

    @app.get("/item/{item_id}")
    def item(item_id: int):
        with lock:
            state["count"] += 1
            n = state["count"]
        return {"id": item_id, "n": n, "s": sum(range(200))}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
