"""A Flask app on waitress (8 threads): an RLock-guarded cache whose misses
are computed under the lock, a line logged to a file per request, and a
SQLAlchemy QueuePool(4) over SQLite, as a small service is written."""
import logging
import os
import threading

PATH = "/item/{id}"


def serve(port, workdir):
    import sqlalchemy as sa
    import waitress
    from flask import Flask
    from sqlalchemy.pool import QueuePool

    log = logging.getLogger("bench.flask_pool")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(logging.FileHandler(os.path.join(workdir, "app.log")))
    engine = sa.create_engine(f"sqlite:///{os.path.join(workdir, 'app.db')}",
                              poolclass=QueuePool, pool_size=4, max_overflow=0,
                              connect_args={"check_same_thread": False})
    with engine.begin() as conn:
        conn.execute(sa.text("create table if not exists items (id integer primary key, "
                             "value integer)"))
        conn.execute(sa.text("delete from items"))
        conn.execute(sa.text("insert into items values (:i, :v)"),
                     [{"i": i, "v": i * 7} for i in range(1000)])
    cache = {}
    cache_lock = threading.RLock()
    app = Flask(__name__)

    @app.route("/item/<int:item_id>")
    def item(item_id):
        key = item_id % 1000
        with cache_lock:
            v = cache.get(key)
            if v is None:
                if len(cache) >= 256:
                    cache.pop(next(iter(cache)))
                v = sum(i * i for i in range(500 + key % 100))
                cache[key] = v
        with engine.connect() as conn:
            row = conn.execute(sa.text("select value from items where id = :i"),
                               {"i": key}).scalar()
        log.info("item %d served", item_id)
        return {"id": item_id, "value": row, "v": v % 1000}

    waitress.serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)
