"""The docs' own examples: every request example in README.md and docs/*.md is submitted to
the real app exactly as written, and must be accepted with its documented status code and
reach its documented outcome.

What counts as an example:
- a fenced ```json or ```yaml block (indented ones too). It is a request unless the line
  before it is `<!-- example: response -->` (responses, event documents, health bodies).
  A request block may start with `POST /api/v1/...` and end with `→ <status> <response>`;
  otherwise its shape names the endpoint: `cron` a schedule, `jobs` a workflow, `engine`
  and `operation` a job. A block that is neither marked nor submittable fails the test, so
  no example is passed over silently.
- the `-d '…'` body of a `curl -X POST localhost:8000/api/v1/…` line in a ```bash block.

Jobs and workflows must complete (every step); a documented response must match where it
gives a value, and `RESULTS` checks the results the docs state. `SKIP_RUN` lists, with the
reason, examples that are submitted and must be accepted but cannot run to the end here.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from app import get_settings
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RESPONSE_MARK = "<!-- example: response -->"
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>json|ya?ml|bash|sh)[ \t]*\n(?P<body>.*?)^(?P=indent)```", re.M | re.S
)
REQUEST_LINE = re.compile(r"^(POST|PUT) (/api/v1/\S+)$")
CURL = re.compile(r"curl [^\n]*-X (POST|PUT) \S*?(/api/v1/[^\s\"']+)(?:[^\n]*\\\n)*?[^\n]*?-d '(?P<body>[^']*)'", re.S)
CREATED = 201  # every create endpoint's documented status (README's REST table, docs/schedules.md)

# Examples that are accepted but cannot run to completion in the tests, and why.
SKIP_RUN = {
    "docs/client.md:nightly": "its `fetch` step calls https://example.com; tests make no outbound requests",
    "docs/llm.md:haiku": "it calls the configured language model (OpenAI by default); tests make no outbound requests",
    "docs/waiting-steps.md:launch post": "its approval waits for a person (tests/test_approvals.py decides them)",
    "docs/waiting-steps.md:order 1042": "its signal step waits for a payment signal (tests/test_signals.py sends them)",
    "docs/pipelines.md:article: tea in the city": "it waits for an editor and an hour, then posts to "
    "https://cms.example.com; tests/test_pipeline.py runs it end to end",
}


@dataclass
class Example:
    where: str  # file:line, the test id
    name: str  # file:<name of the job, workflow or schedule>, for SKIP_RUN and RESULTS
    method: str
    path: str
    body: dict
    status: int
    response: dict | None = None


def _path_by_shape(body) -> str | None:
    if not isinstance(body, dict):
        return None
    if "cron" in body:
        return "/api/v1/jobs/schedules"
    if isinstance(body.get("jobs"), list):
        return "/api/v1/jobs/workflows"
    if "engine" in body and "operation" in body:
        return "/api/v1/jobs/submit"
    return None


def _documented_response(text: str):
    """`{"id": "...", "jobs": {"a": "<id>", ...}}`: the trailing `, ...` means "and more"."""
    return json.loads(re.sub(r",\s*\.\.\.\s*}", "}", text))


def collect() -> tuple[list[Example], list[str]]:
    examples, unclassified = [], []
    for file in DOC_FILES:
        text = file.read_text()
        rel = file.relative_to(ROOT).as_posix()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            where = f"{rel}:{line}"
            indent = len(m["indent"])
            body_lines = [ln[indent:] for ln in m["body"].splitlines()]
            if m["lang"] in ("bash", "sh"):
                for c in CURL.finditer(m["body"]):
                    body = json.loads(c["body"])
                    name = body.get("name") or f"{body.get('engine')}.{body.get('operation')}"
                    examples.append(
                        Example(
                            f"{where}+{m['body'].count(chr(10), 0, c.start())}",
                            f"{rel}:{name}",
                            c[1],
                            c[2],
                            body,
                            CREATED,
                        )
                    )
                continue
            before = text[: m.start()].rstrip().splitlines()
            if before and before[-1].strip() == RESPONSE_MARK:
                continue
            method, path, status, response = "POST", None, CREATED, None
            first = REQUEST_LINE.match(body_lines[0].strip()) if body_lines else None
            if first:
                method, path = first[1], first[2]
                body_lines = body_lines[1:]
            arrow = next((i for i, ln in enumerate(body_lines) if ln.startswith("→")), None)
            if arrow is not None:
                status_text, _, response_text = body_lines[arrow][1:].strip().partition(" ")
                status = int(status_text)
                response = _documented_response(response_text) if response_text else None
                body_lines = body_lines[:arrow]
            source = "\n".join(body_lines)
            try:
                body = json.loads(source) if m["lang"] == "json" else yaml.safe_load(source)
            except (ValueError, yaml.YAMLError):
                body = None
            path = path or _path_by_shape(body)
            if path is None or not isinstance(body, dict):
                unclassified.append(where)
                continue
            name = body.get("name") or f"{body.get('engine')}.{body.get('operation')}"
            examples.append(Example(where, f"{rel}:{name}", method, path, body, status, response))
    return examples, unclassified


EXAMPLES, UNCLASSIFIED = collect()


def test_every_example_block_is_a_request_or_marked_as_a_response():
    assert not UNCLASSIFIED, f"neither submittable nor marked {RESPONSE_MARK!r}: {UNCLASSIFIED}"
    names = {e.name for e in EXAMPLES}
    # the collector must keep finding the docs' headline examples
    assert {
        "docs/workflows.md:article",
        "README.md:text_intelligence.analyze",
        "docs/schedules.md:nightly-report",
        "docs/client.md:nightly",
    } <= names, names
    assert set(SKIP_RUN) <= names, "a skip names an example that no longer exists"


def _matches(documented, actual, path="") -> list[str]:
    """Where the documented response gives a value, the actual one has it ("..." and
    `<placeholders>` stand for any value)."""
    if isinstance(documented, str) and (documented == "..." or re.fullmatch(r"<[^>]+>", documented)):
        return []
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{path or 'body'}: expected an object, got {actual!r}"]
        return [
            err
            for k, v in documented.items()
            for err in ([f"{path}{k}: missing"] if k not in actual else _matches(v, actual[k], f"{path}{k}."))
        ]
    return [] if documented == actual else [f"{path.rstrip('.')}: documented {documented!r}, got {actual!r}"]


def _check_article(steps: dict) -> None:
    thumb = steps["thumb"]["result"]
    assert (thumb["format"], thumb["width"], thumb["height"]) == ("png", 160, 90)  # 640 x 360 at 0.25
    assert steps["draft"]["result"]["words"] == 0  # the text is "..."
    assert steps["report"]["result"] == {"echo": {}}


def _check_sections(steps: dict) -> None:
    """docs/map-steps.md: one child per section, the results in item order, all completed."""
    titles = ["Intro", "Method", "Results"]
    assert steps["write"]["result"] == [{"echo": {"words": 200, "item": t, "index": i}} for i, t in enumerate(titles)]
    assert [steps[f"write[{i}]"]["parameters"]["item"] for i in range(3)] == titles


# Results the docs state, by example name.
RESULTS = {"docs/workflows.md:article": _check_article, "docs/map-steps.md:sections": _check_sections}


async def _run_job(api, job_id: str) -> dict:
    async def done():
        body = (await api.get(f"/api/v1/jobs/{job_id}/status")).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    return await eventually(done, timeout=30, interval=0.1)


async def _run_workflow(api, store, wf_id: str) -> dict:
    async def done():
        body = (await api.get(f"/api/v1/jobs/workflows/{wf_id}/status")).json()
        return body if body["status"] in ("completed", "failed", "cancelled") else None

    body = await eventually(done, timeout=30, interval=0.1)
    steps = {s["step_key"]: s for s in await store.jobs.steps_of(wf_id)}
    failed = {k: s.get("last_error") or s.get("cancel_reason") for k, s in steps.items() if s["status"] != "completed"}
    assert body["status"] == "completed", f"workflow {body['status']}; steps not completed: {failed}"
    return steps


async def _submit(api, example: Example) -> dict:
    r = await api.request(example.method, example.path, json=example.body)
    assert r.status_code == example.status, r.text
    created = r.json()
    if example.response is not None:
        assert not _matches(example.response, created), _matches(example.response, created)
    if example.path.endswith("/schedules"):  # the docs' crons fire at night: accepted and due
        shown = (await api.get(f"/api/v1/jobs/schedules/{created['id']}")).json()
        assert shown["next_run_at"] and not shown["paused"] and shown["last_error"] is None
    return created


RUN = [e for e in EXAMPLES if e.name not in SKIP_RUN]
ACCEPT_ONLY = [e for e in EXAMPLES if e.name in SKIP_RUN]


@pytest.mark.parametrize("example", RUN, ids=[e.where for e in RUN])
async def test_doc_example(example: Example, api, store, worker):
    created = await _submit(api, example)
    if example.path.endswith("/workflows"):
        steps = await _run_workflow(api, store, created["id"])
    elif example.path.endswith("/submit"):
        job = await _run_job(api, created["id"])
        assert job["status"] == "completed", job
        steps = {"job": job}
    else:
        return
    if example.name in RESULTS:
        RESULTS[example.name](steps)


@pytest.mark.parametrize("example", ACCEPT_ONLY, ids=[e.where for e in ACCEPT_ONLY])
async def test_doc_example_accepted_but_not_run(example: Example, api):
    """No worker runs here: the example is only submitted, and must be accepted."""
    await _submit(api, example)
    pytest.skip(f"{example.name} accepted; not run: {SKIP_RUN[example.name]}")


REPORT = (
    "Sales rose in March. The new store opened downtown. Sales of tea rose most.\n\n"
    "Rain closed the market twice. Tea sales rose again in April."
)


@pytest.fixture
def report_server(monkeypatch):
    """A local stand-in for the report URL of docs/client.md's nightly example, allowlisted."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data = REPORT.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("SWITCHYARD_HTTP_ALLOWLIST", "127.0.0.1")
    get_settings.cache_clear()
    yield f"http://127.0.0.1:{srv.server_address[1]}/report.txt"
    srv.shutdown()
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST")
    get_settings.cache_clear()


async def test_nightly_example_summarizes_what_it_fetched(api, store, worker, report_server):
    """The skipped nightly example, its URL the only change: `summary` reads `fetch`'s body."""
    (example,) = [e for e in EXAMPLES if e.name == "docs/client.md:nightly"]
    body = json.loads(json.dumps(example.body))
    (fetch,) = [s for s in body["jobs"] if s["key"] == "fetch"]
    fetch["parameters"]["url"] = report_server
    created = await _submit(
        api, Example(example.where, example.name, example.method, example.path, body, example.status)
    )
    steps = await _run_workflow(api, store, created["id"])
    summary = steps["summary"]["result"]
    assert summary["total_sentences"] == 5 and len(summary["sentences"]) == 3
    assert all(s["text"] in REPORT for s in summary["sentences"])
