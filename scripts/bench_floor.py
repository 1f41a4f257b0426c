"""The floor of a REST single-job submit, for `scripts/bench`: a no-op FastAPI POST endpoint
that does one `insert_one` of a job-sized document through the same driver and client
options as Switchyard (`app.store.connect`), served by uvicorn with serve's HTTP options in
a process of its own. The bench drives it with the same client loop as `POST /jobs/submit`
(`bench_switchyard.rest_submit_rate`), so what Switchyard adds above it is its own work:
auth, validation, admission, dedupe, seqs and counts, events.

    python scripts/bench_floor.py MONGODB_URL PORT
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB = "bench_floor"


def make_app(url: str):
    from bson import ObjectId
    from fastapi import FastAPI

    from app.domain.models import JobSpec
    from app.settings import Settings
    from app.store import connect

    st = connect(url, Settings(), db_name=DB)
    # A job document as Switchyard writes it, built once; each request inserts a copy.
    template = st.lifecycle.build(JobSpec(engine="general", operation="noop"), "bench")
    col = st.client[DB]["jobs"]

    @asynccontextmanager
    async def lifespan(_app):
        await col.drop()
        yield
        await st.client.close()

    api = FastAPI(lifespan=lifespan)

    @api.post("/floor", status_code=201)
    async def floor(body: dict):
        doc = dict(template, _id=str(ObjectId()))
        await col.insert_one(doc)
        return {"id": doc["_id"], "status": doc["status"]}

    return api


def main() -> None:
    import uvicorn

    from app.http_limits import uvicorn_options
    from app.settings import Settings

    url, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(make_app(url), host="127.0.0.1", port=port, log_level="warning", **uvicorn_options(Settings()))


if __name__ == "__main__":
    main()
