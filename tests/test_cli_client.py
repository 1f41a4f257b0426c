"""`switchyard submit | status | queues | workers` against a real `switchyard serve` process:
JSON and YAML files, jobs and workflows, the progress bar and exit codes, tables, where the
token comes from, and how errors are reported."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli_client import find_token
from app.client import SwitchyardClient
from tests.procs import ROOT, env_for, stop
from tests.servers import free_port
from tests.test_client import TOKEN, start_server

runner = CliRunner()


@pytest.fixture(scope="module")
def server(db_url, tmp_path_factory):
    proc, url = start_server(db_url, tmp_path_factory.mktemp("cli"))
    yield url
    stop(proc)


@pytest.fixture
def sy(server, tmp_path):
    """Runs a CLI command against the server; a data directory without a token file."""

    def run(*args, token: str | None = TOKEN, env: dict | None = None):
        base = {
            "SWITCHYARD_URL": server,
            "COLUMNS": "200",
            "SWITCHYARD_DATA_DIR": str(tmp_path / "empty"),
            "SWITCHYARD_TOKEN": None,
            "SWITCHYARD_ADMIN_TOKEN": None,
            "HOME": str(tmp_path / "home"),
        }
        extra = ["--token", token] if token else []
        return runner.invoke(cli, [*args, *extra], env={**base, **(env or {})})

    return run


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_submit_a_json_job_then_follow_it(sy, tmp_path):
    f = write(tmp_path, "job.json", json.dumps({"engine": "general", "operation": "echo", "parameters": {"hi": 1}}))
    r = sy("submit", f, "--json")
    assert r.exit_code == 0, r.output
    job = json.loads(r.output)
    r = sy("status", job["id"])
    assert r.exit_code == 0, r.output
    assert f"job {job['id']} completed (100%)" in r.output and '"hi": 1' in r.output


def test_submit_a_yaml_list_of_jobs_as_one_batch_and_wait(sy, tmp_path):
    items = "\n".join(f"- {{engine: general, operation: echo, parameters: {{n: {i}}}}}" for i in range(5))
    r = sy("submit", write(tmp_path, "jobs.yaml", items + "\n"), "--wait")
    assert r.exit_code == 0, r.output
    assert "5 jobs submitted: 5 new" in r.output and "5 completed, 0 did not" in r.output, r.output
    bad = "- {engine: general, operation: echo}\n- {engine: general, operation: nope}\n"
    r = sy("submit", write(tmp_path, "bad.yaml", bad))
    assert r.exit_code != 0 and "jobs.1.operation" in r.output, r.output


def test_submit_a_yaml_workflow_and_wait(sy, tmp_path):
    f = write(
        tmp_path,
        "wf.yaml",
        """
name: nightly
jobs:
  - key: fetch
    engine: testing
    operation: collect
    parameters: {value: 1}
  - key: report
    engine: testing
    operation: collect
    depends_on: [fetch]
""",
    )
    r = sy("submit", f, "--wait")
    assert r.exit_code == 0, r.output
    assert "submitted: 2 steps" in r.output and "fetch:" in r.output and "report:" in r.output
    assert "workflow" in r.output and "completed (100%)" in r.output
    assert "2/2 steps done" in r.output  # the progress bar's last description


def test_status_follows_with_a_progress_bar_and_exits_1_on_failure(sy, server, tmp_path):
    with SwitchyardClient(server, TOKEN) as c:
        slow = c.submit({"engine": "general", "operation": "sleep", "parameters": {"seconds": 1, "steps": 4}})
        r = sy("status", slow["id"], "--no-wait")
        assert r.exit_code == 0 and slow["id"] in r.output
        assert any(s in r.output for s in ("queued", "running"))
        r = sy("status", slow["id"], "--interval", "0.1")
        assert r.exit_code == 0, r.output
        assert "general.sleep completed" in r.output and "━" in r.output  # rich's bar
        bad = c.submit({"engine": "general", "operation": "fail", "parameters": {"code": "nope", "permanent": True}})
    r = sy("status", bad["id"])
    assert r.exit_code == 1 and "failed" in r.output and "last error: nope" in r.output


def test_queues_and_workers_tables(sy):
    r = sy("queues")
    assert r.exit_code == 0, r.output
    assert "general" in r.output and "testing" in r.output and "running" in r.output
    r = sy("workers", "--status", "alive")
    assert r.exit_code == 0, r.output
    assert "serve" in r.output and "alive" in r.output and "/4" in r.output


def test_token_from_the_data_directory(sy, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "admin_token").write_text(TOKEN + "\n")
    r = sy("queues", token=None, env={"SWITCHYARD_DATA_DIR": str(data)})
    assert r.exit_code == 0 and "general" in r.output
    r = sy("queues", token=None, env={"SWITCHYARD_TOKEN": TOKEN})
    assert r.exit_code == 0
    r = sy("queues", token=None)
    assert r.exit_code == 1 and "401 unauthorized" in r.output
    assert f"{tmp_path / 'empty' / 'admin_token'} (missing)" in r.output  # where it looked
    assert "last-serve.json" in r.output
    (data / "admin_token").write_text("not-the-token\n")
    r = sy("queues", token=None, env={"SWITCHYARD_DATA_DIR": str(data)})
    assert r.exit_code == 1 and f"the token came from {data / 'admin_token'}" in r.output  # which one was refused


def test_errors_are_reported_with_exit_codes(sy, tmp_path):
    r = sy("submit", write(tmp_path, "bad.json", json.dumps({"engine": "general", "operation": "echo", "priority": 0})))
    assert r.exit_code == 1 and "422 validation_error" in r.output and "(priority)" in r.output
    r = sy("submit", write(tmp_path, "list.yaml", "- 1\n- 2\n"))
    assert r.exit_code == 2 and "a list of jobs" in r.output  # a list of non-objects
    r = sy("submit", write(tmp_path, "broken.json", "{nope"))
    assert r.exit_code == 2 and "cannot read" in r.output
    broken = write(tmp_path, "broken.yaml", "name: x\njobs: [1, 2\nother: 3\n")
    r = sy("submit", broken)
    assert r.exit_code == 2, r.output  # not a traceback
    assert r.output.strip().splitlines() == [  # one line: the file, where, and the parser's reason
        f"cannot read {broken}: line 3, column 6: while parsing a flow sequence: expected ',' or ']', but got ':'"
    ]
    r = sy("submit", write(tmp_path, "tab.yml", "name: x\n\tengine: general\n"))
    assert r.exit_code == 2 and "cannot read" in r.output and "line 2, column 1" in r.output
    r = sy("status", "0123456789abcdef01234567")
    assert r.exit_code == 1 and "404 not_found" in r.output
    r = sy("queues", env={"SWITCHYARD_URL": "http://127.0.0.1:9"})
    assert r.exit_code == 2 and "cannot reach" in r.output


def test_the_real_console_entry_point(server):
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "queues", "--url", server, "--token", TOKEN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "general" in proc.stdout


def test_help_shows_flags_as_flags(sy):
    """A boolean option takes no value, so help shows no `<bool>` for it."""
    for command in ("submit", "status", "queues", "workers"):
        r = sy(command, "--help", token=None)
        assert r.exit_code == 0, r.output
        assert "--url" in r.output
        options = [line for line in r.output.splitlines() if "--" in line and "--help" not in line]
        assert not any("<bool>" in line for line in options), r.output
    r = sy("status", "--help", token=None)
    assert "--wait" in r.output and "--no-wait" in r.output


def test_the_token_serve_recorded_is_found_from_any_directory(db_url, tmp_path, monkeypatch):
    """`serve` with a generated token records its data directory; a client command run
    elsewhere (another data directory, another cwd) finds the token there, for that server only."""
    home, data, port = tmp_path / "home", tmp_path / "serve-data", free_port()
    env = env_for(db_url, f"t_{int(time.time() * 1000)}", SWITCHYARD_DATA_DIR=str(data), HOME=str(home))
    env.pop("SWITCHYARD_ADMIN_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--workers", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        record = json.loads((home / ".local/state/switchyard/last-serve.json").read_text())
        assert record == {"data_dir": str(data.resolve()), "url": url}
        client_env = {
            "HOME": str(home),
            "SWITCHYARD_DATA_DIR": str(tmp_path / "elsewhere"),
            "COLUMNS": "200",
            "SWITCHYARD_TOKEN": None,
            "SWITCHYARD_ADMIN_TOKEN": None,
        }
        r = runner.invoke(cli, ["queues", "--url", f"http://localhost:{port}"], env=client_env)
        assert r.exit_code == 0, r.output
        assert "general" in r.output
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.setenv("SWITCHYARD_DATA_DIR", str(tmp_path / "elsewhere"))
        monkeypatch.delenv("SWITCHYARD_ADMIN_TOKEN", raising=False)
        assert find_token(None, f"http://0.0.0.0:{port}").token is not None
        other = find_token(None, f"https://switchyard.example.com:{port}")
        assert other.token is None and "last-serve.json" in other.explain()  # never sent to another server
        assert find_token(None, f"http://127.0.0.1:{port + 1}").token is None
        client_env = {k: v for k, v in env.items() if k not in ("SWITCHYARD_DATA_DIR", "MONGODB_URL")}
        proc2 = subprocess.run(
            [sys.executable, "-m", "app.cli", "queues", "--url", url],
            cwd=tmp_path,
            timeout=60,
            capture_output=True,
            text=True,
            env={**client_env, "COLUMNS": "200", "PYTHONPATH": str(ROOT)},
        )
        assert proc2.returncode == 0, proc2.stderr  # a real process in another directory
        assert "general" in proc2.stdout
    finally:
        stop(proc)
