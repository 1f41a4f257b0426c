"""The `general` engine: small utility handlers (echo, noop, sleep, fail) and `http_request`,
outbound HTTP with SSRF protection.

Owns: parameter validation for these handlers, the address policy for outbound requests
(`check_address`, `is_forbidden_ip`, the allowlist read from `get_settings().http_allowlist`),
and `ServiceUnavailable`, the retryable error for upstream 5xx and connection failures.
"""

from __future__ import annotations

import asyncio
import builtins
import ipaddress
import re
import socket
import time
from typing import Any

import httpx

from app import JobContext, PermanentError, get_settings, handler
from handlers.inputs import text_input

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
MiB = 1024 * 1024
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class ServiceUnavailable(Exception):
    """Retryable: the upstream answered 5xx, or could not be reached / timed out."""


def _bad(field: str, reason: str) -> PermanentError:
    return PermanentError("bad_input", f"{field}: {reason}")


def _number(params: dict, name: str, default: Any, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = params.get(name, default)
    if value is None:
        raise _bad(name, "is required")
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _bad(name, "must be an integer" if integer else "must be a number")
    if not lo <= value <= hi:
        raise _bad(name, f"must be between {lo} and {hi}")
    return value


def _string(params: dict, name: str, default: str | None, max_len: int = 10_000) -> str:
    value = params.get(name, default)
    if not isinstance(value, str):
        raise _bad(name, "must be a string" if name in params else "is required")
    if len(value) > max_len:
        raise _bad(name, f"must be at most {max_len} characters")
    return value


@handler(engine="general", operation="echo")
async def echo(ctx: JobContext) -> dict:
    """Return the parameters unchanged, as {"echo": params}."""
    return {"echo": ctx.params}


@handler(engine="general", operation="noop")
async def noop(ctx: JobContext) -> dict:
    """Do nothing and return {} at once (benchmarks)."""
    return {}


@handler(engine="general", operation="sleep")
async def sleep(ctx: JobContext) -> dict:
    """Sleep `seconds` in `steps` steps, reporting progress; stops early when cancelled."""
    seconds = float(_number(ctx.params, "seconds", None, 0, 3600))
    steps = _number(ctx.params, "steps", 10, 1, 10_000, integer=True)
    start = time.monotonic()
    for i in range(1, steps + 1):
        deadline = start + seconds * i / steps
        try:  # wakes at once on cancellation, unlike a plain sleep
            await asyncio.wait_for(ctx.cancelled.wait(), timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            pass
        slept = round(time.monotonic() - start, 3)
        if ctx.cancelled.is_set():
            return {"slept": slept, "cancelled": True}
        await ctx.progress(100 * i / steps, stage="sleeping", data={"step": i, "slept": slept})
    return {"slept": seconds}


@handler(engine="general", operation="fail")
async def fail(ctx: JobContext) -> dict:
    """Fail on purpose, for tests of retries: permanently if `permanent`, else retryably.

    Permanent: PermanentError(code, message). Otherwise an exception whose class name is
    `code`: the built-in exception of that name if there is one, else a RuntimeError subclass."""
    code = _string(ctx.params, "code", "ValueError", 64)
    message = _string(ctx.params, "message", "failure requested by general.fail")
    permanent = ctx.params.get("permanent", False)
    if not isinstance(permanent, bool):
        raise _bad("permanent", "must be a boolean")
    if not code:
        raise _bad("code", "must not be empty")
    if permanent:
        raise PermanentError(code, message)
    cls = getattr(builtins, code, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)) or issubclass(cls, StopAsyncIteration):
        cls = type(code, (RuntimeError,), {}) if code.isidentifier() else RuntimeError
    try:
        exc = cls(message)
    except TypeError:  # e.g. UnicodeDecodeError needs more arguments
        exc = RuntimeError(message)
    raise exc


# --- http_request ----------------------------------------------------------------------------


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address can carry to an IPv4 host (mapped, 6to4, Teredo, NAT64)."""
    if ip.version != 6:
        return []
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_forbidden_ip(ip: IPAddress) -> bool:
    """True for anything but a plain global unicast address, including IPv6 forms that embed a
    non-global IPv4 address. (Python 3.11 calls multicast and 6to4 ranges "global", hence the
    explicit checks.)"""
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return is_forbidden_ip(ip.ipv4_mapped)  # ::ffff:a.b.c.d is judged as a.b.c.d
    if (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or (ip.version == 6 and ip.is_site_local)
    ):
        return True
    return any(is_forbidden_ip(v4) for v4 in _embedded_ipv4(ip))


def _allowlist() -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    hosts: set[str] = set()
    nets = []
    for entry in get_settings().http_allowlist.split(","):
        entry = entry.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            hosts.add(entry)
    return hosts, nets


async def check_address(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` and return its addresses, or raise PermanentError("forbidden_address") if
    any is not a global address and neither the host nor that address is allowlisted."""
    host = host.lower().rstrip(".")
    try:
        addrs = [ipaddress.ip_address(host)]  # a literal: no DNS lookup
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ServiceUnavailable(f"cannot resolve {host}: {e}") from e
        addrs = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    if not addrs:
        raise ServiceUnavailable(f"{host} has no addresses")
    hosts, nets = _allowlist()
    if host in hosts:
        return addrs
    for ip in addrs:
        plain = ip.ipv4_mapped or ip if ip.version == 6 else ip  # ::ffff:10.0.0.1 matches 10.0.0.0/8
        if is_forbidden_ip(ip) and not any(plain.version == n.version and plain in n for n in nets):
            raise PermanentError("forbidden_address", f"{host} resolves to {ip}, which is not a public address")
    return addrs


def _safe_key(name: str) -> str:
    """Header names become result keys, which may not contain '.' or start with '$'."""
    return name.replace("%", "%25").replace(".", "%2E").replace("$", "%24")


@handler(engine="general", operation="http_request")
async def http_request(ctx: JobContext) -> dict:
    """Send one HTTP request to a public address (or an allowlisted one); no redirects followed.
    The response's text is `body`, which a text step depending on this one reads as its input.
    A POST, PUT or PATCH in a workflow with neither `body` nor `json` sends its parents' text
    (handlers/inputs.py), so a `publish` step posts the draft it depends on."""
    p = ctx.params
    try:
        url = httpx.URL(_string(p, "url", None, 8192))
    except httpx.InvalidURL as e:
        raise _bad("url", str(e)) from e
    if url.scheme not in ("http", "https") or not url.host:
        raise _bad("url", "must be an absolute http or https URL")
    method = _string(p, "method", "GET", 10).upper()
    if method not in METHODS:
        raise _bad("method", f"must be one of {', '.join(METHODS)}")
    headers = p.get("headers")
    headers = {} if headers is None else headers
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise _bad("headers", "must be an object of string to string")
    for k, v in headers.items():
        if not _TOKEN.match(k) or any(c in v for c in "\r\n\0"):
            raise _bad("headers", f"invalid header {k!r}")
    headers = {k: v for k, v in headers.items() if k.lower() != "host"}  # we set Host ourselves
    if not any(k.lower() == "accept-encoding" for k in headers):
        headers["Accept-Encoding"] = "identity"  # keeps max_bytes a bound on what we hold
    if "json" in p and "body" in p:
        raise _bad("body", "give json or body, not both")
    body = _string(p, "body", None, 10 * MiB) if "body" in p else None
    if body is None and "json" not in p and method in ("POST", "PUT", "PATCH") and ctx.parents:
        body = text_input(ctx)
    timeout = float(_number(p, "timeout_seconds", 30, 0.001, 300))
    max_bytes = _number(p, "max_bytes", MiB, 0, 10 * MiB, integer=True)

    host = url.raw_host.decode("ascii")  # IDNA-encoded, no brackets
    port = url.port or (443 if url.scheme == "https" else 80)
    addrs = await check_address(host, port)
    # DNS rebinding: we connect to the address we just checked, never re-resolving the name.
    # The URL's host becomes that IP; the Host header keeps the original name, and for https
    # the `sni_hostname` extension makes httpcore send SNI for, and verify the certificate
    # against, the original name. So http and https are both pinned to the checked IP.
    target = url.copy_with(host=str(addrs[0]))
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    headers["Host"] = url.netloc.decode("ascii")
    kwargs: dict[str, Any] = {"json": p["json"]} if "json" in p else {"content": body} if body is not None else {}

    await ctx.progress(10, stage="connecting", data={"address": str(addrs[0])})
    start = time.monotonic()
    chunks: list[bytes] = []
    size, truncated = 0, False
    # trust_env=False: an environment proxy would re-resolve the name and bypass the check.
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        try:
            async with asyncio.timeout(timeout):
                request = client.build_request(method, target, headers=headers, extensions=extensions, **kwargs)
                response = await client.send(request, stream=True)
                try:
                    async for chunk in response.aiter_bytes():
                        if ctx.cancelled.is_set():
                            raise asyncio.CancelledError()
                        room = max_bytes - size
                        if len(chunk) > room:
                            chunks.append(chunk[:room])
                            size, truncated = max_bytes, True
                            break
                        chunks.append(chunk)
                        size += len(chunk)
                finally:
                    await response.aclose()
        except TimeoutError as e:
            raise ServiceUnavailable(f"{method} {host} timed out after {timeout} s") from e
        except httpx.TransportError as e:
            raise ServiceUnavailable(f"{method} {host} failed: {type(e).__name__}: {e}") from e
    elapsed_ms = round((time.monotonic() - start) * 1000, 1)
    if response.status_code >= 500:
        raise ServiceUnavailable(f"{method} {host} returned {response.status_code}")
    raw = b"".join(chunks)
    try:
        text = raw.decode(response.charset_encoding or "utf-8", errors="replace")
    except LookupError:  # an unknown charset in Content-Type
        text = raw.decode("utf-8", errors="replace")
    await ctx.progress(100, stage="done")
    return {
        "status_code": response.status_code,
        "headers": {_safe_key(k): v for k, v in response.headers.items()},
        "body": text,
        "truncated": truncated,
        "elapsed_ms": elapsed_ms,
        "address": str(addrs[0]),
    }
