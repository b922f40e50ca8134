"""A client for ColBERTv2 search servers, as used in the DSPy tutorials.

Such a server answers ``GET <url>?query=...&k=...`` (or a POST of the same
fields as JSON) with ``{"topk": [{"text": ..., "pid": ..., "rank": ...,
"score": ..., "prob": ...}, ...]}``, best first.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx

from rhizome.engine.errors import ConfigError
from rhizome.tools.retrievers import Passage, RetrieverError, check_k


class ColBERTv2:
    """Retriever backed by a ColBERTv2 HTTP search server.

    Args:
        url: The search endpoint, e.g. ``"http://host:2017/wiki17_abstracts"``.
        post: Send the query as a JSON POST instead of a GET.
        timeout: Seconds per request.
        max_concurrency: Requests in flight at once, shared by every search
            through this client.
        client: An ``httpx.AsyncClient`` to use (for custom transports or proxies);
            one is created, and closed by :meth:`aclose`, otherwise.
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
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self._client = client
        self._owns_client = client is None

    def __repr__(self) -> str:
        return f"ColBERTv2({self.url!r})"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        return self._client

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
        async with self.limiter:
            data = await self._request(query, k)
        return _passages(data, k, self.url)

    async def _request(self, query: str, k: int) -> Any:
        params: dict[str, str | int] = {"query": query, "k": k}
        try:
            if self.post:
                response = await self._http().post(self.url, json=params)
            else:
                response = await self._http().get(self.url, params=params)
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
        """Close the HTTP client if this object created it."""
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> ColBERTv2:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


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
