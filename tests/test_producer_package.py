"""The `switchyard-producer` distribution (producer/), built and installed into a fresh
virtual environment beside an application whose own top-level package is called `app`:
both import, and a job enqueued in the application's transaction lands in the database."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.helpers import wait_status

ROOT = Path(__file__).resolve().parent.parent

SHOP = """
import asyncio, sys
import app  # the application's own package
from pymongo import AsyncMongoClient
from switchyard_producer import AsyncProducer

assert app.NAME == "the shop", app.__file__
assert "switchyard_producer._core" in sys.modules and "handlers" not in sys.modules

async def main(url, db):
    client = AsyncMongoClient(url)
    producer = await AsyncProducer(client, owner="shop/web", db_name=db).start()
    async with client.start_session() as s:
        async with producer.transaction(s):
            await client[db]["orders"].insert_one({"_id": "o7"}, session=s)
            print(await producer.enqueue({"engine": "testing", "operation": "ok", "name": "invoice"}, session=s))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def install_and_run(tmp_path: Path, db_url: str, db: str) -> subprocess.CompletedProcess:
    """A fresh venv with the producer installed, and the shop's script run in it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # the dependencies (pymongo, pydantic, ...) from this project's environment, by path only:
    # its .pth files are not run, so its own editable `app` stays out of sight
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(ROOT / "producer")],
        check=True,
    )
    shop = tmp_path / "shop"
    (shop / "app").mkdir(parents=True)
    (shop / "app" / "__init__.py").write_text('NAME = "the shop"\n')
    (shop / "run.py").write_text(SHOP)
    return subprocess.run(
        [str(venv / "bin" / "python"), "run.py", db_url, db],
        cwd=shop,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin"},
    )


async def test_it_installs_beside_an_app_package_and_its_job_runs(tmp_path, db_url, store, worker):
    out = await asyncio.to_thread(install_and_run, tmp_path, db_url, store.db.name)
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.strip().splitlines()[-1]
    job = await wait_status(store, job_id, "completed")
    assert job["name"] == "invoice" and job["owner"] == "shop/web"
    assert await store.db["orders"].find_one({"_id": "o7"})


def test_app_imports_itself_only_relatively():
    """What lets `app` run as `switchyard_producer._core` (producer/setup.py)."""
    absolute = re.compile(r"^\s*(from app[. ]|import app\b)", re.M)
    found = [str(p.relative_to(ROOT)) for p in (ROOT / "app").rglob("*.py") if absolute.search(p.read_text())]
    assert found == []
