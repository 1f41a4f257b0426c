"""`app/store/db.py` against the real server: the chunked `_id $in` helpers reach every id
however long the list, and each document's own filter still guards its write."""

from __future__ import annotations

from app.store.db import IN_CHUNK, chunks, find_in, update_in


def test_chunks_cover_the_list_in_order():
    ids = list(range(IN_CHUNK * 2 + 5))
    parts = list(chunks(ids))
    assert [len(p) for p in parts] == [IN_CHUNK, IN_CHUNK, 5]
    assert [i for p in parts for i in p] == ids
    assert list(chunks([])) == []


async def test_find_in_and_update_in_span_chunks(store):
    col = store.db["chunked"]
    n = IN_CHUNK * 3 + 1
    await col.insert_many([{"_id": f"d{i}", "even": i % 2 == 0, "n": 0} for i in range(n)])
    ids = [f"d{i}" for i in range(n)] + ["missing"]

    found = await find_in(col, ids, {"even": True}, {"_id": 1})
    assert sorted(d["_id"] for d in found) == sorted(f"d{i}" for i in range(0, n, 2))

    changed = await update_in(col, ids, {"even": False}, {"$inc": {"n": 1}})
    assert changed == n // 2
    odd = await col.find({"n": 1}, {"_id": 1}).to_list(None)
    assert sorted(d["_id"] for d in odd) == sorted(f"d{i}" for i in range(1, n, 2))
    assert await find_in(col, [], None) == []
