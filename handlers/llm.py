"""The `llm` engine: `llm.chat`, one call to an OpenAI-compatible chat-completions endpoint
(`POST {base_url}/chat/completions`: OpenAI, vLLM, Ollama, llama.cpp's server).

Owns: the parameters of `llm.chat`, the streamed (SSE) and plain exchanges, the token usage and
its cost from `get_settings().llm_prices`, and `answer_error`, the one mapping from a provider's
HTTP answer to what the job does (429: back off for Retry-After; 408 and 5xx: retry; other 4xx:
fail permanently with the provider's message). Documented in docs/llm.md.

Invariants: the API key is sent only in the Authorization header and is scrubbed from every
message we raise (providers echo parts of a bad key). A job's own `base_url` passes the same
address check, pinned to the checked address, as `general.http_request`; the settings' URL is
the operator's and is trusted.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from app import JobContext, PermanentError, RateLimited, get_settings, handler
from handlers.general import ServiceUnavailable, _bad, _number, _string, check_address

MiB = 1024 * 1024
MAX_BODY = 10 * MiB  # a whole answer; the job's result is capped at 12 MiB anyway
MAX_ERROR_BODY = 64 * 1024
RETRY_AFTER_DEFAULT = 1.0
RETRY_AFTER_MAX = 300.0
PROGRESS_EVERY = 0.5  # seconds between progress writes while tokens stream in


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds a `Retry-After` header asks for (delta-seconds or an HTTP-date), within
    [0, RETRY_AFTER_MAX]; RETRY_AFTER_DEFAULT when absent or unreadable."""
    if not value or not value.strip():
        return RETRY_AFTER_DEFAULT
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return RETRY_AFTER_DEFAULT
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return RETRY_AFTER_DEFAULT
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def provider_message(body: bytes, secret: str | None = None) -> str:
    """The provider's own words from an error body: OpenAI's `{"error": {"message"}}`,
    Ollama's `{"error": "..."}`, else the text itself (cut to 500 characters)."""
    text = body.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error", doc.get("detail", doc.get("message")))
        if isinstance(err, dict):
            err = err.get("message")
        if isinstance(err, str) and err:
            text = err
    return scrub(text.strip()[:500] or "(no message)", secret)


def answer_error(
    status: int, headers: httpx.Headers | dict, body: bytes, secret: str | None = None
) -> Exception | None:
    """What a job does with this HTTP answer: None for a 2xx, else the exception to raise."""
    if 200 <= status < 300:
        return None
    message = f"HTTP {status}: {provider_message(body, secret)}"
    if status == 429:
        delay = retry_after(httpx.Headers(headers).get("retry-after"))
        # The whole engine waits: its jobs share the provider's limit (an account's key is
        # not a tenant's, so no narrower hold fits here yet).
        return RateLimited(delay, reason=f"rate limited by the provider for {delay:g} s: {message}")
    if status == 408 or status >= 500:
        return ServiceUnavailable(message)
    code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large"}
    return PermanentError(f"llm_{code.get(status, status)}", message)


def cost_of(model: str | None, tokens_in: int, tokens_out: int, prices: dict) -> float:
    price = prices.get(model or "") or {}
    return round((tokens_in * price.get("input", 0.0) + tokens_out * price.get("output", 0.0)) / 1e6, 10)


def _messages(params: dict) -> list:
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "is required: a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _bad(f"messages[{i}]", "must be an object with a string role")
    return messages


async def _read(response: httpx.Response, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise ServiceUnavailable(f"the answer is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Stream:
    """Accumulates an SSE answer chunk by chunk, reporting progress at most every PROGRESS_EVERY."""

    def __init__(self, ctx: JobContext, max_tokens: int | None) -> None:
        self.ctx, self.max_tokens = ctx, max_tokens
        self.parts: list[str] = []
        self.model: str | None = None
        self.finish_reason: str | None = None
        self.usage: dict | None = None
        self.tokens = 0  # content deltas received: about one token each
        self._last = float("-inf")

    async def feed(self, doc: dict) -> None:
        if "error" in doc:  # some servers report a failure mid-stream
            raise ServiceUnavailable(f"the stream ended with an error: {provider_message(json.dumps(doc).encode())}")
        self.model = doc.get("model") or self.model
        if isinstance(doc.get("usage"), dict):
            self.usage = doc["usage"]
        for choice in doc.get("choices") or []:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str) and delta["content"]:
                self.parts.append(delta["content"])
                self.tokens += 1
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        now = time.monotonic()
        if self.tokens and now - self._last >= PROGRESS_EVERY:
            self._last = now
            # unknown without max_tokens: 0 until done, never 100 before the end
            percent = min(99.0, 100.0 * self.tokens / self.max_tokens) if self.max_tokens else 0.0
            await self.ctx.progress(percent, "generating", {"tokens": self.tokens})


async def _exchange(ctx, client, request, stream: bool, max_tokens, secret) -> dict:
    """Send the request; the answer as a non-streamed chat completion would give it."""
    response = await client.send(request, stream=True)
    try:
        if response.status_code >= 300:
            raise answer_error(response.status_code, response.headers, await _read(response, MAX_ERROR_BODY), secret)
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            try:
                return json.loads(await _read(response, MAX_BODY))
            except ValueError as e:
                raise ServiceUnavailable(f"the answer is not JSON: {e}") from e
        acc = _Stream(ctx, max_tokens)
        async for line in response.aiter_lines():
            if ctx.cancelled.is_set():
                raise asyncio.CancelledError()
            if not line.startswith("data:"):
                continue  # comments, event names, blank separators
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                await acc.feed(json.loads(data))
            except ValueError as e:
                raise ServiceUnavailable(f"a stream chunk is not JSON: {data[:200]}") from e
        return {
            "model": acc.model,
            "choices": [{"message": {"content": "".join(acc.parts)}, "finish_reason": acc.finish_reason}],
            "usage": acc.usage,
            "_streamed": True,
        }
    finally:
        await response.aclose()


@handler(engine="llm", operation="chat")
async def chat(ctx: JobContext) -> dict:
    """Ask an OpenAI-compatible chat-completions endpoint; returns content, model, finish_reason, usage."""
    p, settings = ctx.params, get_settings()
    messages = _messages(p)
    model = _string(p, "model", settings.llm_model, 200)
    stream = p.get("stream", True)
    if not isinstance(stream, bool):
        raise _bad("stream", "must be a boolean")
    max_tokens = _number(p, "max_tokens", 0, 1, 10_000_000, integer=True) if "max_tokens" in p else None
    timeout = float(_number(p, "timeout_seconds", 120, 0.001, 3600))
    base = _string(p, "base_url", settings.llm_base_url, 2048).rstrip("/")
    key = _string(p, "api_key", "", 4096) if "api_key" in p else settings.llm_api_key
    try:
        url = httpx.URL(base + "/chat/completions")
    except httpx.InvalidURL as e:
        raise _bad("base_url", str(e)) from e
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad("base_url", "must be an absolute http or https URL")

    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if "temperature" in p:
        body["temperature"] = _number(p, "temperature", None, 0, 2)
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if stream:
        body["stream_options"] = {"include_usage": True}
    headers = {"Accept-Encoding": "identity"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    extensions: dict = {}
    trusted = base == settings.llm_base_url.rstrip("/")
    if not trusted:  # a job's own URL: checked, and pinned to the checked address (see general)
        host = url.raw_host.decode("ascii")
        addrs = await check_address(host, url.port or (443 if url.scheme == "https" else 80))
        headers["Host"] = url.netloc.decode("ascii")
        if url.scheme == "https":
            extensions["sni_hostname"] = host
        url = url.copy_with(host=str(addrs[0]))

    await ctx.progress(0, "connecting")
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=trusted) as client:
        request = client.build_request("POST", url, json=body, headers=headers, extensions=extensions)
        try:
            async with asyncio.timeout(timeout):
                answer = await _exchange(ctx, client, request, stream, max_tokens, key)
        except TimeoutError as e:
            raise ServiceUnavailable(f"no complete answer from {url.host} within {timeout:g} s") from e
        except httpx.TransportError as e:
            raise ServiceUnavailable(scrub(f"{url.host} failed: {type(e).__name__}: {e}", key)) from e

    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ServiceUnavailable("the answer has no choices")
    message = choices[0].get("message") or {}
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else None
    tokens_in = int((usage or {}).get("prompt_tokens") or 0)
    tokens_out = int((usage or {}).get("completion_tokens") or 0)
    answered_model = answer.get("model") or model
    prices = settings.llm_prices
    priced = answered_model if answered_model in prices else model
    result = {
        "content": message.get("content") or "",
        "model": answered_model,
        "finish_reason": choices[0].get("finish_reason"),
        "streamed": bool(answer.get("_streamed")),
        "usage": {
            "tokens_in": tokens_in,
            "tokens_out": tokens_out,
            "cost": cost_of(priced, tokens_in, tokens_out, prices),
        },
    }
    if usage is None:
        result["usage_reported"] = False  # the server sent no usage: nothing is counted
    await ctx.usage(**result["usage"])
    await ctx.progress(100, "done", {"tokens": tokens_out})
    return result
