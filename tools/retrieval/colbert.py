"""A client for ColBERTv2 search servers, as used in the DSPy tutorials.

Such a server answers ``GET <url>?query=...&k=...`` (or a POST of the same
fields as JSON) with ``{"topk": [{"text": ..., "pid": ..., "rank": ...,
"score": ..., "prob": ...}, ...]}``, best first.

An ``httpx.AsyncClient`` is bound to the event loop it first runs on, and a
retriever may serve several (each sync ``graph(...)`` call runs a fresh one, and
thread-pool servers run one per thread), so the client keeps one per running
loop, closed when that loop shuts down or by :meth:`ColBERTv2.aclose`. The
concurrency limit is one for every loop and thread.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

import httpx

from rhizome.engine.client.connections import SharedLimiter, close_now, close_with_loop
from rhizome.engine.errors import ConfigError
from rhizome.tools.retrieval.retrievers import Passage, RetrieverError, check_k

__all__ = ("ColBERTv2",)


class ColBERTv2:
    """Retriever backed by a ColBERTv2 HTTP search server.

    Args:
        url: The search endpoint, e.g. ``"http://host:2017/wiki17_abstracts"``.
        post: Send the query as a JSON POST instead of a GET.
        timeout: Seconds per request.
        max_concurrency: Requests in flight at once, shared by every search
            through this client, whatever event loop or thread it runs on.
        client: An ``httpx.AsyncClient`` to use (for custom transports or proxies).
            It is bound to the event loop it first runs on, and it is yours to
            close. Without one, a client is opened per running event loop and
            closed when that loop shuts down, or by :meth:`aclose`.
    """

    def __init__(
        self,
        url: str,
        *,
        post: bool = False,
        timeout: float = 30.0,
        max_concurrency: int = 8,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"ColBERTv2 url must start with http:// or https://, got {url!r}")
        self.url = url
        self.post = post
        self.timeout = timeout
        self.limiter = SharedLimiter(max_concurrency)
        self._client = client
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"ColBERTv2({self.url!r})"

    async def _http(self) -> httpx.AsyncClient:
        """The given client, or the running loop's own, opened on first use."""
        if self._client is not None:
            return self._client
        loop = _running_loop()
        client = self._clients.get(loop)
        if client is None:
            for old_loop in [old for old in self._clients if old.is_closed()]:
                del self._clients[old_loop]  # closed when that loop shut down
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.timeout)
            await close_with_loop(loop, [client])
        return client

    async def search(
        self, query: str, k: int, *, where: dict[str, Any] | None = None
    ) -> list[Passage]:
        """Return up to ``k`` passages for ``query``, best first.

        Raises:
            ConfigError: ``where`` was given; ColBERTv2 servers cannot filter.
            RetrieverError: The server could not be reached or sent a malformed reply.
        """
        check_k(k)
        if where:
            raise ConfigError("ColBERTv2 servers do not support metadata filters; pass where=None")
        await self.limiter.acquire()
        try:
            data = await self._request(query, k)
        finally:
            self.limiter.release()
        return _passages(data, k, self.url)

    async def _request(self, query: str, k: int) -> Any:
        params: dict[str, str | int] = {"query": query, "k": k}
        http = await self._http()
        try:
            if self.post:
                response = await http.post(self.url, json=params)
            else:
                response = await http.get(self.url, params=params)
        except httpx.HTTPError as exc:
            raise RetrieverError(f"ColBERTv2 server {self.url} unreachable: {exc}") from exc
        if response.status_code != 200:
            raise RetrieverError(
                f"ColBERTv2 server {self.url} answered {response.status_code}: "
                f"{response.text[:200]}"
            )
        try:
            return response.json()
        except ValueError as exc:
            raise RetrieverError(
                f"ColBERTv2 server {self.url} sent non-JSON: {response.text[:200]!r}"
            ) from exc

    async def aclose(self) -> None:
        """Close the running loop's HTTP client, if this object opened it.

        The next search opens a new one. Clients of other loops are closed when
        those loops shut down; a client passed in is left to its owner.
        """
        loop = _running_loop()
        client = self._clients.pop(loop, None)
        if client is not None:
            await close_now(loop, [client])

    async def __aenter__(self) -> ColBERTv2:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _running_loop() -> asyncio.AbstractEventLoop:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        raise ConfigError(
            "ColBERTv2 runs on asyncio; run it with asyncio or anyio's asyncio backend"
        ) from None


def _passages(data: Any, k: int, url: str) -> list[Passage]:
    topk = data.get("topk") if isinstance(data, dict) else None
    if not isinstance(topk, list):
        raise RetrieverError(f"ColBERTv2 server {url} reply has no 'topk' list: {str(data)[:200]}")
    out: list[Passage] = []
    for item in topk[:k]:
        if not isinstance(item, dict) or "text" not in item:
            raise RetrieverError(f"ColBERTv2 server {url} sent a passage without text: {item!r}")
        meta = {key: v for key, v in item.items() if key not in ("text", "score")}
        pid = item.get("pid", item.get("rank", len(out)))
        out.append(Passage(str(pid), str(item["text"]), float(item.get("score", 0.0)), meta))
    return out
