"""The `general` handlers, called directly: echo, noop, sleep, fail, and http_request against a
real HTTP server on 127.0.0.1 (the only address these tests ever send traffic to)."""

from __future__ import annotations

import asyncio
import http.server
import ipaddress
import json
import socket
import threading
import time

import httpx
import pytest

from app import JobContext, PermanentError, get_settings
from handlers.general import ServiceUnavailable, check_address, echo, fail, http_request, is_forbidden_ip, noop, sleep


def make_ctx(operation: str, params: dict, calls: list | None = None) -> JobContext:
    ctx = JobContext(job_id="j1", engine="general", operation=operation, attempt=1, params=params)
    if calls is not None:

        async def sink(percent, stage, data):
            calls.append((percent, stage, data))

        ctx._sink = sink
    return ctx


# --- echo, noop, sleep, fail ------------------------------------------------------------------


async def test_echo_returns_params_unchanged():
    params = {"a": 1, "b": [1, "x", {"c": None}], "d": "é"}
    assert await echo(make_ctx("echo", params)) == {"echo": params}


async def test_noop_returns_empty_dict():
    assert await noop(make_ctx("noop", {"ignored": True})) == {}


async def test_sleep_sleeps_and_reports_each_step():
    calls: list = []
    start = time.monotonic()
    result = await sleep(make_ctx("sleep", {"seconds": 0.2, "steps": 4}, calls))
    assert time.monotonic() - start >= 0.19
    assert result == {"slept": 0.2}
    assert [c[0] for c in calls] == [25.0, 50.0, 75.0, 100.0]
    assert all(c[1] == "sleeping" for c in calls)
    assert [c[2]["step"] for c in calls] == [1, 2, 3, 4]


async def test_sleep_stops_early_when_cancelled():
    ctx = make_ctx("sleep", {"seconds": 30, "steps": 3}, [])
    asyncio.get_running_loop().call_later(0.1, ctx.cancelled.set)
    start = time.monotonic()
    result = await sleep(ctx)
    assert time.monotonic() - start < 2
    assert result["cancelled"] is True
    assert 0.05 <= result["slept"] < 2


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "seconds"),
        ({"seconds": -1}, "seconds"),
        ({"seconds": 3601}, "seconds"),
        ({"seconds": "5"}, "seconds"),
        ({"seconds": True}, "seconds"),
        ({"seconds": 1, "steps": 0}, "steps"),
        ({"seconds": 1, "steps": 2.5}, "steps"),
    ],
)
async def test_sleep_bad_params(params, field):
    with pytest.raises(PermanentError) as err:
        await sleep(make_ctx("sleep", params))
    assert err.value.code == "bad_input"
    assert err.value.message.startswith(f"{field}:")


async def test_fail_permanent_raises_permanent_error():
    with pytest.raises(PermanentError) as err:
        await fail(make_ctx("fail", {"code": "quota_exceeded", "message": "no more", "permanent": True}))
    assert (err.value.code, err.value.message) == ("quota_exceeded", "no more")


async def test_fail_default_is_a_retryable_value_error():
    with pytest.raises(ValueError) as err:
        await fail(make_ctx("fail", {"message": "boom"}))
    assert not isinstance(err.value, PermanentError)
    assert str(err.value) == "boom"


async def test_fail_unknown_code_names_the_exception_class():
    with pytest.raises(RuntimeError) as err:
        await fail(make_ctx("fail", {"code": "UpstreamHiccup", "message": "try again"}))
    assert type(err.value).__name__ == "UpstreamHiccup"
    assert str(err.value) == "try again"


async def test_fail_bad_params():
    for params in ({"permanent": "yes"}, {"code": 3}, {"code": ""}):
        with pytest.raises(PermanentError) as err:
            await fail(make_ctx("fail", params))
        assert err.value.code == "bad_input"


# --- http_request -----------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.hits.append((self.command, self.path))
        if self.path == "/error":
            return self._reply(500, b'{"error": "boom"}')
        if self.path == "/missing":
            return self._reply(404, b"not here", {"Content-Type": "text/plain"})
        if self.path == "/redirect":
            return self._reply(302, b"", {"Location": "http://169.254.169.254/latest/meta-data"})
        if self.path == "/big":
            return self._reply(200, b"x" * 5000, {"Content-Type": "text/plain"})
        info = {
            "method": self.command,
            "path": self.path,
            "host": self.headers.get("Host"),
            "x_test": self.headers.get("X-Test"),
            "body": body.decode(),
        }
        self._reply(200, json.dumps(info).encode(), {"X-Reply.Dotted": "yes"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.hits = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def allow(monkeypatch):
    """Set SWITCHYARD_HTTP_ALLOWLIST for one test."""

    def set_allowlist(value: str):
        monkeypatch.setenv("SWITCHYARD_HTTP_ALLOWLIST", value)
        get_settings.cache_clear()

    yield set_allowlist
    monkeypatch.delenv("SWITCHYARD_HTTP_ALLOWLIST", raising=False)
    get_settings.cache_clear()


@pytest.fixture
def no_traffic(monkeypatch):
    """Fail the test if any request is sent or any connection opened."""

    async def refuse_send(*args, **kwargs):
        raise AssertionError("a request was sent")

    def refuse_connect(*args, **kwargs):
        raise AssertionError("a connection was opened")

    monkeypatch.setattr(httpx.AsyncClient, "send", refuse_send)
    monkeypatch.setattr(socket.socket, "connect", refuse_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_connect)


def url(server, path: str = "/") -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


async def test_loopback_refused_by_default(server, allow):
    allow("")
    before = len(server.hits)
    with pytest.raises(PermanentError) as err:
        await http_request(make_ctx("http_request", {"url": url(server)}))
    assert err.value.code == "forbidden_address"
    assert len(server.hits) == before


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/",
        "http://localhost/",
        "https://LOCALHOST./",
        "http://0.0.0.0/",
        "http://192.168.1.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[64:ff9b::a00:1]/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "http://[fe80::1]/",
        "http://127.1/",
        "http://2130706433/",
    ],
)
async def test_private_addresses_refused_before_connecting(target, allow, no_traffic):
    allow("")
    with pytest.raises(PermanentError) as err:
        await http_request(make_ctx("http_request", {"url": target}))
    assert err.value.code == "forbidden_address"


@pytest.mark.parametrize(
    "address, forbidden",
    [
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
        ("8.8.8.8", False),
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("169.254.169.254", True),
        ("255.255.255.255", True),
        ("240.0.0.1", True),
        ("::", True),
        ("fc00::1", True),
        ("2001:db8::1", True),
        ("::ffff:8.8.8.8", False),
        ("::ffff:10.0.0.1", True),
        ("2002:0808:0808::1", False),
        ("ff02::1", True),
    ],
)
def test_is_forbidden_ip(address, forbidden):
    assert is_forbidden_ip(ipaddress.ip_address(address)) is forbidden


async def test_allowlist_by_cidr_and_hostname(allow, no_traffic):
    allow("10.0.0.0/8, internal.example")
    assert await check_address("10.2.3.4", 80) == [ipaddress.ip_address("10.2.3.4")]
    assert await check_address("::ffff:10.2.3.4", 80) == [ipaddress.ip_address("::ffff:10.2.3.4")]
    with pytest.raises(PermanentError):
        await check_address("192.168.0.1", 80)
    allow("localhost")
    addrs = await check_address("localhost", 80)
    assert all(ip.is_loopback for ip in addrs)


async def test_allowlisted_get(server, allow):
    allow("127.0.0.1")
    calls: list = []
    result = await http_request(
        make_ctx(
            "http_request",
            {"url": url(server, "/hello?x=1"), "headers": {"X-Test": "yes", "Host": "evil.example"}},
            calls,
        )
    )
    assert result["status_code"] == 200
    assert result["truncated"] is False
    assert result["elapsed_ms"] >= 0
    assert result["address"] == "127.0.0.1"
    info = json.loads(result["body"])
    assert info == {
        "method": "GET",
        "path": "/hello?x=1",
        "x_test": "yes",
        "body": "",
        "host": f"127.0.0.1:{server.server_address[1]}",
    }
    assert result["headers"]["content-type"] == "application/json"
    assert result["headers"]["x-reply%2Edotted"] == "yes"
    assert calls[-1][0] == 100


async def test_post_json_and_body(server, allow):
    allow("127.0.0.0/8")
    result = await http_request(
        make_ctx("http_request", {"url": url(server, "/p"), "method": "post", "json": {"k": [1, 2]}})
    )
    assert json.loads(json.loads(result["body"])["body"]) == {"k": [1, 2]}
    result = await http_request(
        make_ctx("http_request", {"url": url(server, "/p"), "method": "PUT", "body": "raw text"})
    )
    info = json.loads(result["body"])
    assert (info["method"], info["body"]) == ("PUT", "raw text")


async def test_a_post_in_a_workflow_without_a_body_sends_its_parents_text(server, allow):
    allow("127.0.0.0/8")
    ctx = make_ctx("http_request", {"url": url(server, "/publish"), "method": "POST"})
    ctx.parents = {"assemble": {"text": "# Draft\n\nThe body.\n", "words": 3}}
    info = json.loads((await http_request(ctx))["body"])
    assert (info["method"], info["body"]) == ("POST", "# Draft\n\nThe body.\n")
    ctx = make_ctx("http_request", {"url": url(server, "/publish")})  # a GET sends nothing
    ctx.parents = {"assemble": {"text": "ignored"}}
    assert json.loads((await http_request(ctx))["body"])["body"] == ""


async def test_4xx_returns_redirects_not_followed_body_truncated(server, allow):
    allow("127.0.0.1")
    result = await http_request(make_ctx("http_request", {"url": url(server, "/missing")}))
    assert (result["status_code"], result["body"]) == (404, "not here")
    before = len(server.hits)
    result = await http_request(make_ctx("http_request", {"url": url(server, "/redirect")}))
    assert result["status_code"] == 302
    assert result["headers"]["location"] == "http://169.254.169.254/latest/meta-data"
    assert len(server.hits) == before + 1
    result = await http_request(make_ctx("http_request", {"url": url(server, "/big"), "max_bytes": 1000}))
    assert result["truncated"] is True
    assert result["body"] == "x" * 1000
    result = await http_request(make_ctx("http_request", {"url": url(server, "/big"), "method": "HEAD"}))
    assert (result["status_code"], result["body"], result["truncated"]) == (200, "", False)


async def test_5xx_and_connection_errors_are_retryable(server, allow):
    allow("127.0.0.1")
    with pytest.raises(ServiceUnavailable) as err:
        await http_request(make_ctx("http_request", {"url": url(server, "/error")}))
    assert "500" in str(err.value)
    assert not isinstance(err.value, PermanentError)
    with socket.socket() as s:  # a port on 127.0.0.1 that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceUnavailable):
        await http_request(make_ctx("http_request", {"url": f"http://127.0.0.1:{port}/", "timeout_seconds": 5}))


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "url"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"url": "file:///etc/passwd"}, "url"),
        ({"url": "/relative"}, "url"),
        ({"url": "http://example.com/", "method": "TRACE"}, "method"),
        ({"url": "http://example.com/", "headers": {"a": 1}}, "headers"),
        ({"url": "http://example.com/", "headers": ["a"]}, "headers"),
        ({"url": "http://example.com/", "headers": {"X": "a\r\nInjected: 1"}}, "headers"),
        ({"url": "http://example.com/", "json": {}, "body": "x"}, "body"),
        ({"url": "http://example.com/", "body": 5}, "body"),
        ({"url": "http://example.com/", "timeout_seconds": 301}, "timeout_seconds"),
        ({"url": "http://example.com/", "max_bytes": 10 * 1024 * 1024 + 1}, "max_bytes"),
    ],
)
async def test_http_request_bad_params(params, field, no_traffic):
    with pytest.raises(PermanentError) as err:
        await http_request(make_ctx("http_request", params))
    assert err.value.code == "bad_input"
    assert err.value.message.startswith(f"{field}:")
