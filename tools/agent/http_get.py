"""Fetch web pages for an agent, only from hosts on an allow-list.

:func:`make_http_get` builds an ``http_get`` tool bound to an allow-list::

    http_get = make_http_get(["docs.python.org", "*.wikipedia.org"])
    text = (await http_get({"url": "https://en.wikipedia.org/wiki/Rhizome"})).text

Host rules (case-insensitive, a trailing dot ignored):

- ``"example.com"`` allows exactly ``example.com``, not its subdomains;
- ``"*.example.com"`` allows every subdomain at any depth (``a.example.com``,
  ``a.b.example.com``) but not ``example.com`` itself; list both to allow both;
- IP addresses match literally (``"127.0.0.1"`` is not ``"localhost"``).

Ports are not restricted. Only ``http`` and ``https`` URLs are fetched. Redirects are
followed by hand (at most ``max_redirects``) and *every* hop's host is checked against
the list before it is requested, so an allowed host cannot redirect the tool elsewhere.
Environment proxies are ignored. The allow-list is checked by name: it does not stop
an allowed name from resolving to a private address (DNS rebinding), so do not list
names you do not control if that matters.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence

import httpx

from rhizome.engine.errors import ConfigError, RhizomeError
from rhizome.tools.agent.tool import FunctionTool, tool

__all__ = (
    "FetchError",
    "FetchResult",
    "HostAllowList",
    "HostNotAllowedError",
    "HttpFetcher",
    "make_http_get",
)


_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchError(RhizomeError, RuntimeError):
    """A URL could not be fetched (bad scheme, too many redirects, HTTP error, network)."""


class HostNotAllowedError(FetchError, PermissionError):
    """A URL (or a redirect) points at a host that is not on the allow-list."""


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """A fetched page.

    Attributes:
        url: The final URL, after redirects.
        status: The HTTP status code.
        text: The body decoded as text, cut at ``max_bytes``.
        truncated: True when the body was longer than ``max_bytes``.
    """

    url: str
    status: int
    text: str
    truncated: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostAllowList:
    """Host names a fetcher may contact; see the module docstring for the rules.

    Attributes:
        hosts: The allowed names, exact (``example.com``) or wildcard (``*.example.com``).
    """

    hosts: tuple[str, ...]

    def __post_init__(self) -> None:
        if isinstance(self.hosts, str) or not self.hosts:
            raise ConfigError("allowed_hosts must be a non-empty list of host names")
        cleaned = tuple(_normalise(h) for h in self.hosts)
        for entry in cleaned:
            name = entry.removeprefix("*.")
            if not name or "*" in name or "/" in name or (":" in name and not _is_ip(name)):
                raise ConfigError(
                    f"bad allowed host {entry!r}: give a bare host name such as 'example.com' "
                    "or '*.example.com' (no scheme, path or port)"
                )
        object.__setattr__(self, "hosts", cleaned)

    def allows(self, host: str) -> bool:
        """True when ``host`` matches an entry."""
        host = _normalise(host)
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                    return True
            elif host == entry:
                return True
        return False


@dataclasses.dataclass(frozen=True, kw_only=True)
class HttpFetcher:
    """GET requests limited to an allow-list, with checked redirects and a size cap.

    Attributes:
        allowed: The hosts that may be contacted.
        timeout: Seconds for each request (connect, read, write and pool each).
        max_bytes: Body bytes kept; the rest is not downloaded.
        max_redirects: Redirect hops followed before giving up.
        user_agent: The ``User-Agent`` header sent.
    """

    allowed: HostAllowList
    timeout: float = 10.0
    max_bytes: int = 100_000
    max_redirects: int = 5
    user_agent: str = "rhizome-http-get/0.1"

    async def get(self, url: str) -> FetchResult:
        """Fetch ``url``, checking it and every redirect target against the allow-list.

        Raises:
            HostNotAllowedError: The URL or a redirect leaves the allow-list.
            FetchError: Bad scheme, too many redirects, HTTP status >= 400, or a network error.
        """
        try:
            current = self._check(httpx.URL(url))
        except httpx.InvalidURL as exc:
            raise FetchError(f"{url!r} is not a valid URL: {exc}") from None
        headers = {"User-Agent": self.user_agent}
        async with httpx.AsyncClient(
            follow_redirects=False, trust_env=False, timeout=self.timeout, headers=headers
        ) as client:
            for _ in range(self.max_redirects + 1):
                try:
                    async with client.stream("GET", current) as response:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECTS and location:
                            current = self._check(current.join(location))
                            continue
                        return await self._read(response)
                except httpx.HTTPError as exc:
                    raise FetchError(f"GET {current} failed: {type(exc).__name__}: {exc}") from exc
        raise FetchError(f"{url} redirected more than {self.max_redirects} times; giving up")

    def _check(self, url: httpx.URL) -> httpx.URL:
        if url.scheme not in ("http", "https"):
            raise FetchError(f"only http and https URLs can be fetched, not {str(url)!r}")
        if not url.host:
            raise FetchError(f"URL {str(url)!r} has no host")
        if not self.allowed.allows(url.host):
            raise HostNotAllowedError(
                f"host {url.host!r} is not allowed (URL {str(url)!r}); allowed hosts: "
                + ", ".join(self.allowed.hosts)
            )
        return url

    async def _read(self, response: httpx.Response) -> FetchResult:
        body = bytearray()
        truncated = False
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                truncated = True
                del body[self.max_bytes :]
                break
        text = bytes(body).decode(response.encoding or "utf-8", errors="replace")
        if response.status_code >= 400:
            reason = response.reason_phrase
            raise FetchError(
                f"GET {response.url} returned {response.status_code} {reason}: {text[:500]}"
            )
        return FetchResult(str(response.url), response.status_code, text, truncated)


def make_http_get(
    allowed_hosts: Sequence[str],
    *,
    timeout: float = 10.0,
    max_bytes: int = 100_000,
    max_redirects: int = 5,
    name: str = "http_get",
) -> FunctionTool:
    """Build an ``http_get`` tool that fetches pages only from ``allowed_hosts``.

    Args:
        allowed_hosts: Host names, exact or ``*.`` wildcards (see the module docstring).
        timeout: Seconds for each request.
        max_bytes: Largest body kept; longer pages are cut and marked as truncated.
        max_redirects: Redirect hops followed, each checked against the list.
        name: The tool's name.
    """
    fetcher = HttpFetcher(
        allowed=HostAllowList(hosts=tuple(allowed_hosts)),
        timeout=timeout,
        max_bytes=max_bytes,
        max_redirects=max_redirects,
    )
    hosts = ", ".join(fetcher.allowed.hosts)

    async def http_get(url: str) -> str:
        """Fetch a web page with HTTP GET and return its text.

        Args:
            url: The absolute http:// or https:// URL to fetch.
        """
        result = await fetcher.get(url)
        if result.truncated:
            return f"{result.text}\n[... truncated at {max_bytes} bytes]"
        return result.text

    description = (
        "Fetch a web page with HTTP GET and return its text. Only these hosts can be "
        f"fetched: {hosts}."
    )
    return tool(http_get, name=name, description=description)


def _normalise(host: str) -> str:
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
