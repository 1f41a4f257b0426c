"""`llm.chat` through the real worker, against a local chat-completions server in this process
(Starlette on uvicorn, 127.0.0.1 only): plain and streamed answers, usage and cost, 429 with
Retry-After, 5xx retries, 4xx permanent failures, and the API key kept out of everything."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from app import JobContext, PermanentError, RateLimited, get_settings
from app.domain.retry import RetryConfig
from handlers.general import ServiceUnavailable
from handlers.inputs import text_input
from handlers.llm import _Stream, answer_error, chat, retry_after
from tests.helpers import eventually, wait_status
from tests.servers import uvicorn_app

SETTINGS_KEY = "sk-settings-key-0123456789"
JOB_KEY = "sk-job-key-abcdefghij"
PRICES = {"tiny": {"input": 2.0, "output": 10.0}}


class Provider:
    """A chat-completions server: each request takes the next scripted answer (the last one
    repeats) and is recorded with its arrival time and Authorization header."""

    def __init__(self) -> None:
        self.script: list = []
        self.requests: list[dict] = []

    async def completions(self, request: Request):
        body = await request.json()
        self.requests.append({"body": body, "auth": request.headers.get("authorization"), "at": time.monotonic()})
        answer = self.script[min(len(self.requests), len(self.script)) - 1]
        return answer(body)


def completion(content: str, prompt: int, completion_tokens: int, model: str = "tiny"):
    doc = {
        "id": "c1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": 0},
    }
    return lambda body: JSONResponse(doc)


def streamed(words: list[str], gap: float, usage: dict | None):
    def answer(body):
        async def chunks():
            for i, w in enumerate(words):
                await asyncio.sleep(gap)
                last = i == len(words) - 1
                choice = {"index": 0, "delta": {"content": w}, "finish_reason": "length" if last else None}
                yield f"data: {json.dumps({'model': 'tiny', 'choices': [choice]})}\n\n"
            if usage is not None and body.get("stream_options", {}).get("include_usage"):
                yield f"data: {json.dumps({'model': 'tiny', 'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    return answer


def error(status: int, message: str, headers: dict | None = None):
    return lambda body: JSONResponse({"error": {"message": message, "type": "x"}}, status, headers=headers)


@pytest.fixture
async def provider(monkeypatch):
    p = Provider()
    routes = [Route(f"/{base}/chat/completions", p.completions, methods=["POST"]) for base in ("v1", "other")]
    app = Starlette(routes=routes)
    async with uvicorn_app(app) as host:
        monkeypatch.setenv("SWITCHYARD_LLM_BASE_URL", f"http://{host}/v1")
        monkeypatch.setenv("SWITCHYARD_LLM_API_KEY", SETTINGS_KEY)
        monkeypatch.setenv("SWITCHYARD_LLM_MODEL", "tiny")
        monkeypatch.setenv("SWITCHYARD_LLM_PRICES", json.dumps(PRICES))
        get_settings.cache_clear()
        p.host = host
        yield p
    monkeypatch.undo()
    get_settings.cache_clear()


async def submit(jobs, params: dict, **kw) -> dict:
    kw.setdefault("retry_config", RetryConfig(max_retries=2, retry_delay_seconds=0.05))
    return await jobs.queued(engine="llm", operation="chat", parameters=params, **kw)


MESSAGES = [{"role": "user", "content": "Say hello"}]


# --- through the worker ------------------------------------------------------------------------


async def test_a_plain_answer_gives_content_usage_and_cost_from_the_price_table(provider, store, jobs, worker):
    provider.script = [completion("Hello there.", 12, 5)]
    job = await submit(jobs, {"messages": MESSAGES, "stream": False, "temperature": 0.2})
    done = await wait_status(store, job["_id"], {"completed", "failed"})
    assert done["status"] == "completed", done.get("last_error")
    assert done["result"] == {
        "content": "Hello there.",
        "model": "tiny",
        "finish_reason": "stop",
        "streamed": False,
        "usage": {"tokens_in": 12, "tokens_out": 5, "cost": pytest.approx((12 * 2.0 + 5 * 10.0) / 1e6)},
    }
    # reported with ctx.usage too: summed on the job, and kept per attempt
    assert done["usage"]["tokens_in"] == 12 and done["usage"]["tokens_out"] == 5
    assert done["usage"]["cost"] == pytest.approx((12 * 2.0 + 5 * 10.0) / 1e6)
    [req] = provider.requests
    assert req["auth"] == f"Bearer {SETTINGS_KEY}"
    assert req["body"]["model"] == "tiny" and req["body"]["messages"] == MESSAGES
    assert req["body"]["stream"] is False and req["body"]["temperature"] == 0.2


async def test_a_streamed_answer_reports_progress_as_tokens_arrive_and_the_final_usage(provider, store, jobs, worker):
    words = ["One", " two", " three", " four", " five", " six"]
    provider.script = [streamed(words, 0.35, {"prompt_tokens": 7, "completion_tokens": 6})]
    job = await submit(jobs, {"messages": MESSAGES, "max_tokens": 10})
    seen: list[dict] = []

    async def finished():
        doc = await store.jobs.get(job["_id"])
        if doc["progress"]["stage"] == "generating" and doc["progress"] not in seen:
            seen.append(doc["progress"])
        return doc["status"] in ("completed", "failed")

    await eventually(finished, timeout=20, interval=0.02)
    done = await store.jobs.get(job["_id"])
    assert done["status"] == "completed", done.get("last_error")
    assert done["result"]["content"] == "".join(words)
    assert done["result"]["finish_reason"] == "length" and done["result"]["streamed"] is True
    assert done["result"]["usage"] == {"tokens_in": 7, "tokens_out": 6, "cost": pytest.approx((7 * 2 + 6 * 10) / 1e6)}
    assert "usage_reported" not in done["result"]
    assert done["progress"]["percent"] == 100
    tokens = [p["data"]["tokens"] for p in seen]
    assert len(tokens) >= 2 and tokens == sorted(set(tokens)), seen
    assert all(p["percent"] == 10 * p["data"]["tokens"] and p["percent"] < 100 for p in seen), seen
    assert provider.requests[0]["body"]["stream_options"] == {"include_usage": True}


async def test_a_stream_without_usage_counts_nothing_and_says_so(provider, store, jobs, worker):
    provider.script = [streamed(["a", "b"], 0.01, None)]
    job = await submit(jobs, {"messages": MESSAGES})
    done = await wait_status(store, job["_id"], {"completed", "failed"})
    assert done["result"]["content"] == "ab"
    assert done["result"]["usage"] == {"tokens_in": 0, "tokens_out": 0, "cost": 0.0}
    assert done["result"]["usage_reported"] is False


async def test_a_429_holds_the_engine_for_its_retry_after_and_charges_no_attempt(provider, store, jobs, worker):
    provider.script = [error(429, "Rate limit reached", {"Retry-After": "2"}), completion("ok", 1, 1)]
    job = await submit(jobs, {"messages": MESSAGES, "stream": False})

    async def backed_off():
        doc = await store.jobs.get(job["_id"])
        return doc if doc.get("last_backpressure") else None

    held = await eventually(backed_off)
    note = held["last_backpressure"]
    assert (note["until"] - note["at"]).total_seconds() == pytest.approx(2, abs=0.1)
    assert "rate limited by the provider for 2 s" in note["reason"] and "Rate limit reached" in note["reason"]
    assert not held.get("errors")  # back-pressure is not a failure
    engine = await store.engines.get("llm")
    assert engine["held_until"] == note["until"]
    done = await wait_status(store, job["_id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempt"] == 1  # the 429 cost no attempt
    first, second = provider.requests
    assert second["at"] - first["at"] >= 1.9  # the job waited Retry-After, not the 0.05 s back-off


async def test_a_500_is_retried(provider, store, jobs, worker):
    provider.script = [error(500, "upstream exploded"), completion("fine", 3, 1)]
    job = await submit(jobs, {"messages": MESSAGES, "stream": False})
    done = await wait_status(store, job["_id"], {"completed", "failed"})
    assert done["status"] == "completed" and done["attempt"] == 2
    assert done["errors"][0]["code"] == "ServiceUnavailable"
    assert "HTTP 500: upstream exploded" in done["errors"][0]["message"]


async def test_a_400_fails_at_once_with_the_providers_message_and_never_shows_the_key(
    provider, store, jobs, worker, live, api, capfd
):
    echoed = f"Incorrect API key provided: {JOB_KEY}. You can find your API key at ..."
    provider.script = [error(400, echoed)]
    job = await submit(jobs, {"messages": MESSAGES, "stream": False, "api_key": JOB_KEY})
    done = await wait_status(store, job["_id"], {"completed", "failed"})
    assert done["status"] == "failed" and done["attempt"] == 1
    assert provider.requests[0]["auth"] == f"Bearer {JOB_KEY}"  # the job's key wins over the settings'
    err = done["last_error"]
    assert err["code"] == "llm_bad_request"
    assert err["message"].startswith("HTTP 400: Incorrect API key provided: ***.")
    assert JOB_KEY not in json.dumps([done.get("last_error"), done.get("errors"), done.get("result")], default=str)

    status = (await api.get(f"/api/v1/jobs/{job['_id']}/status")).json()
    assert status["parameters"]["api_key"] == "***"
    assert JOB_KEY not in json.dumps(status)

    async def failed_event():
        events = await store.events.since(0, job_id=job["_id"])
        return events if any(e["type"] == "job.failed" for e in events) else None

    events = await eventually(failed_event)
    assert JOB_KEY not in json.dumps(events, default=str)
    out, errs = capfd.readouterr()
    assert JOB_KEY not in out + errs


# --- the handler, called directly ---------------------------------------------------------------


def ctx_for(params: dict, calls: list | None = None) -> JobContext:
    ctx = JobContext(job_id="j1", engine="llm", operation="chat", attempt=1, params=params)

    async def sink(percent, stage, data):
        if calls is not None:
            calls.append((percent, stage, data))

    ctx._sink = sink
    return ctx


async def test_a_jobs_own_base_url_goes_through_the_address_check(provider, monkeypatch):
    provider.script = [completion("hi", 1, 1)]
    own = {"messages": MESSAGES, "stream": False, "base_url": f"http://{provider.host}/other"}
    with pytest.raises(PermanentError) as err:
        await chat(ctx_for(own))
    assert err.value.code == "forbidden_address" and not provider.requests
    monkeypatch.setenv("SWITCHYARD_HTTP_ALLOWLIST", "127.0.0.1")
    get_settings.cache_clear()
    assert (await chat(ctx_for(own)))["content"] == "hi"  # allowlisted
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST")
    get_settings.cache_clear()
    trusted = {"messages": MESSAGES, "stream": False}  # the settings' URL is the operator's
    assert (await chat(ctx_for(trusted)))["content"] == "hi"


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"content": "no role"}]}, "messages[0]"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"messages": MESSAGES, "temperature": 3}, "temperature"),
        ({"messages": MESSAGES, "base_url": "file:///etc/passwd"}, "base_url"),
    ],
)
async def test_bad_parameters_fail_permanently_naming_the_field(params, field):
    with pytest.raises(PermanentError) as err:
        await chat(ctx_for(params))
    assert err.value.code == "bad_input" and err.value.message.startswith(f"{field}:")


async def test_progress_is_written_at_most_every_half_second():
    calls: list = []
    acc = _Stream(ctx_for({}, calls), max_tokens=None)
    for _ in range(50):
        await acc.feed({"choices": [{"delta": {"content": "x"}}]})
    assert calls == [(0.0, "generating", {"tokens": 1})]  # unknown percent without max_tokens
    assert acc.tokens == 50


def test_answer_error_maps_each_kind_of_answer():
    assert answer_error(200, {}, b"{}") is None
    limited = answer_error(429, {"Retry-After": "7"}, b'{"error": {"message": "slow down"}}')
    assert isinstance(limited, RateLimited) and limited.retry_after == 7 and "slow down" in limited.reason
    assert answer_error(429, {}, b"").retry_after == 1.0
    assert answer_error(429, {"Retry-After": "86400"}, b"").retry_after == 300.0
    for status in (408, 500, 502, 503):
        assert isinstance(answer_error(status, {}, b"busy"), ServiceUnavailable)
    gone = answer_error(404, {}, b'{"error": "model \\"x\\" not found"}')  # Ollama's shape
    assert isinstance(gone, PermanentError) and gone.code == "llm_not_found"
    assert gone.message == 'HTTP 404: model "x" not found'
    leaked = answer_error(401, {}, b'{"error": {"message": "bad key sk-1"}}', secret="sk-1")
    assert leaked.code == "llm_unauthorized" and "sk-1" not in str(leaked)


def test_retry_after_reads_an_http_date():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after("soon", now) == 1.0


def test_a_text_step_reads_an_llm_steps_content():
    ctx = JobContext(job_id="j2", engine="text_intelligence", operation="summarize", attempt=1, params={})
    ctx.parents = {"ask": {"content": "The answer.", "model": "tiny", "usage": {}}}
    assert text_input(ctx) == "The answer."
