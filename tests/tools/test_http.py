"""Tests for the allow-listed http_get tool, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rhizome.engine.errors import ConfigError
from rhizome.tools.agent.http_get import (
    FetchError,
    HostAllowList,
    HostNotAllowedError,
    HttpFetcher,
    make_http_get,
)
from rhizome.tools.agent.tool import ToolError


@dataclass
class Site:
    """The running test server: its base URL, port and the paths it was asked for."""

    port: int
    paths: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def _handler(site: Site) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            site.paths.append(self.path)
            routes = {
                "/page": (200, {}, "hello page"),
                "/secret": (200, {}, "the secret"),
                "/big": (200, {}, "x" * 50_000),
                "/redirect-same": (302, {"Location": "/page"}, ""),
                "/redirect-other": (302, {"Location": site.url("/secret", "localhost")}, ""),
                "/chain": (301, {"Location": site.url("/redirect-other")}, ""),
                "/loop": (307, {"Location": "/loop"}, ""),
                "/ftp": (302, {"Location": "ftp://127.0.0.1/file"}, ""),
            }
            status, headers, body = routes.get(self.path, (404, {}, "no such page"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def site() -> Iterator[Site]:
    state = Site(port=0)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def fetcher(*hosts: str, max_bytes: int = 100_000) -> HttpFetcher:
    return HttpFetcher(allowed=HostAllowList(hosts=hosts), timeout=5, max_bytes=max_bytes)


async def test_fetches_an_allowed_page(site: Site) -> None:
    result = await fetcher("127.0.0.1").get(site.url("/page"))
    assert result.text == "hello page"
    assert result.status == 200
    assert not result.truncated
    assert site.paths == ["/page"]


async def test_follows_redirects_on_the_same_host(site: Site) -> None:
    result = await fetcher("127.0.0.1").get(site.url("/redirect-same"))
    assert result.text == "hello page"
    assert result.url == site.url("/page")
    assert site.paths == ["/redirect-same", "/page"]


@pytest.mark.parametrize("start", ["/redirect-other", "/chain"])
async def test_redirect_to_another_host_is_refused(site: Site, start: str) -> None:
    # "localhost" reaches the very same server, so only the name check can stop it.
    with pytest.raises(HostNotAllowedError) as info:
        await fetcher("127.0.0.1").get(site.url(start))
    message = str(info.value)
    assert "'localhost' is not allowed" in message
    assert "allowed hosts: 127.0.0.1" in message
    assert "/secret" not in site.paths
    assert isinstance(info.value, PermissionError)


async def test_disallowed_start_url_is_never_requested(site: Site) -> None:
    with pytest.raises(HostNotAllowedError, match="'localhost'"):
        await fetcher("127.0.0.1").get(site.url("/page", "localhost"))
    assert site.paths == []
    # Listing the name allows it.
    result = await fetcher("localhost").get(site.url("/page", "localhost"))
    assert result.text == "hello page"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x", "not a url"])
async def test_only_http_urls(url: str) -> None:
    with pytest.raises(FetchError, match=r"http and https|no host|not a valid URL"):
        await fetcher("127.0.0.1").get(url)


async def test_redirect_to_another_scheme_is_refused(site: Site) -> None:
    with pytest.raises(FetchError, match="only http and https"):
        await fetcher("127.0.0.1").get(site.url("/ftp"))


async def test_redirect_loops_stop(site: Site) -> None:
    with pytest.raises(FetchError, match="redirected more than 5 times"):
        await fetcher("127.0.0.1").get(site.url("/loop"))
    assert site.paths.count("/loop") == 6


async def test_long_bodies_are_truncated(site: Site) -> None:
    result = await fetcher("127.0.0.1", max_bytes=1000).get(site.url("/big"))
    assert result.truncated
    assert result.text == "x" * 1000


async def test_http_errors_raise(site: Site) -> None:
    with pytest.raises(FetchError, match="404 Not Found: no such page"):
        await fetcher("127.0.0.1").get(site.url("/nothing"))


async def test_connection_errors_raise() -> None:
    with pytest.raises(FetchError, match="failed: ConnectError"):
        await fetcher("127.0.0.1").get("http://127.0.0.1:9/")


async def test_environment_proxies_are_ignored(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://10.255.255.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://10.255.255.1:9")
    result = await fetcher("127.0.0.1").get(site.url("/page"))
    assert result.text == "hello page"


def test_allow_list_rules() -> None:
    rules = HostAllowList(hosts=("Example.COM.", "*.wiki.org", "::1"))
    assert rules.hosts == ("example.com", "*.wiki.org", "::1")
    assert rules.allows("example.com")
    assert rules.allows("EXAMPLE.com.")
    assert not rules.allows("www.example.com")
    assert not rules.allows("badexample.com")
    assert rules.allows("en.wiki.org")
    assert rules.allows("a.b.wiki.org")
    assert not rules.allows("wiki.org")
    assert not rules.allows("evilwiki.org")
    assert not rules.allows("wiki.org.evil.com")
    assert rules.allows("::1")


@pytest.mark.parametrize(
    "bad", [(), ("http://example.com",), ("example.com:80",), ("a/b",), ("*",)]
)
def test_bad_allow_lists(bad: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        HostAllowList(hosts=bad)


async def test_http_get_tool(site: Site) -> None:
    http_get = make_http_get(["127.0.0.1"], timeout=5, max_bytes=100)
    function = http_get.openai_schema()["function"]
    assert function["name"] == "http_get"
    assert "127.0.0.1" in function["description"]
    assert function["parameters"]["required"] == ["url"]
    assert (await http_get({"url": site.url("/page")})).text == "hello page"
    big = (await http_get({"url": site.url("/big")})).text
    assert big == "x" * 100 + "\n[... truncated at 100 bytes]"
    with pytest.raises(ToolError) as info:
        await http_get({"url": site.url("/redirect-other")})
    assert info.value.tool == "http_get"
    assert "HostNotAllowedError" in str(info.value)
    assert "/secret" not in site.paths
