"""The gateway's REST API as async calls; errors become :mod:`imgsim_cli.errors`."""

from __future__ import annotations

import asyncio
import json
import mimetypes
import time
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from imgsim_cli.errors import ApiError, CliError, ConnectionFailed
from imgsim_cli.responses import ImageInfo, Metadata, SearchResponse, Stats
from imgsim_cli.settings import CliSettings
from imgsim_core.contracts import ReindexStatus

API = "/api/v1"
M = TypeVar("M", bound=BaseModel)
WAIT_S = 60.0  # bound of --wait with --direct (the gateway's own wait is 30 s)
POLL_S = 0.25


def _error(response: httpx.Response) -> ApiError:
    """The gateway's ``{"error": {"code", "message"}}``, or the status and text."""
    try:
        detail = response.json()["error"]
        return ApiError(response.status_code, str(detail["code"]), str(detail["message"]))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:200] or response.reason_phrase
        return ApiError(response.status_code, f"http_{response.status_code}", text)


class Gateway:
    """One ``httpx.AsyncClient`` on the gateway, with the API key when one is set."""

    def __init__(
        self, settings: CliSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        headers = {}
        if settings.api_key is not None:
            headers["X-API-Key"] = settings.api_key.get_secret_value()
        self.url = settings.url
        self._http = httpx.AsyncClient(
            base_url=settings.url,
            headers=headers,
            timeout=settings.timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, object] | None = None,
        params: Mapping[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = await self._http.request(
                method, f"{API}{path}", json=json_body, params=params, files=files, data=data
            )
        except httpx.ConnectError as exc:
            raise ConnectionFailed(f"cannot connect to the gateway at {self.url}: {exc}") from None
        except httpx.TimeoutException:
            raise CliError(f"no answer from the gateway at {self.url} in time", "timeout") from None
        except httpx.HTTPError as exc:
            raise CliError(f"request to {self.url} failed: {exc}", "http_error") from None
        if response.is_error:
            raise _error(response)
        return response

    @staticmethod
    def _parse(model: type[M], response: httpx.Response) -> M:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise CliError(f"unexpected answer from the gateway: {exc}", "bad_response") from None

    async def index(
        self, image_id: str, filename: str, data: bytes, metadata: Metadata, *, wait: bool
    ) -> None:
        """Upload one image (multipart: raw bytes, no base64)."""
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        await self._call(
            "POST",
            "/images",
            files={"file": (filename, data, content_type)},
            data={"image_id": image_id, "metadata": json.dumps(metadata)},
            params={"wait": "true"} if wait else None,
        )

    async def image(self, image_id: str) -> ImageInfo:
        return self._parse(
            ImageInfo, await self._call("GET", f"/images/{quote(image_id, safe='/')}")
        )

    async def delete(self, image_id: str, *, wait: bool) -> str:
        """Delete an image; the status: ``accepted`` or, with ``wait``, ``deleted``."""
        params = {"wait": "true"} if wait else None
        response = await self._call("DELETE", f"/images/{quote(image_id, safe='/')}", params=params)
        return str(response.json().get("status", "accepted"))

    async def search(self, path: str, body: Mapping[str, object]) -> SearchResponse:
        """``path``: ``/search`` (image), ``/search/text`` or ``/search/similar``."""
        return self._parse(SearchResponse, await self._call("POST", path, json_body=body))

    async def stats(self) -> Stats:
        return self._parse(Stats, await self._call("GET", "/stats"))

    async def reindex_start(self, model_id: str | None = None) -> ReindexStatus:
        body = {"model_id": model_id} if model_id else None
        return self._parse(
            ReindexStatus, await self._call("POST", "/admin/reindex", json_body=body)
        )

    async def reindex_status(self) -> ReindexStatus:
        return self._parse(ReindexStatus, await self._call("GET", "/admin/reindex"))

    async def reindex_drop_old(self) -> ReindexStatus:
        return self._parse(ReindexStatus, await self._call("POST", "/admin/reindex/drop-old"))

    async def wait_indexed(
        self, image_id: str, *, since: datetime, bound_s: float = WAIT_S
    ) -> None:
        """Poll until the image is indexed by a write at or after ``since`` (``--direct``)."""
        deadline = time.monotonic() + bound_s
        while True:
            try:
                info = await self.image(image_id)
                if info.indexed_at is None or info.indexed_at >= since:
                    return
            except ApiError as exc:
                if exc.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise CliError(f"not searchable after {bound_s:.0f} s", "timeout")
            await asyncio.sleep(POLL_S)

    async def wait_gone(self, image_id: str, *, bound_s: float = WAIT_S) -> None:
        """Poll until the image is no longer indexed (``--direct``)."""
        deadline = time.monotonic() + bound_s
        while True:
            try:
                await self.image(image_id)
            except ApiError as exc:
                if exc.status == 404:
                    return
                raise
            if time.monotonic() > deadline:
                raise CliError(f"{image_id!r} still indexed after {bound_s:.0f} s", "timeout")
            await asyncio.sleep(POLL_S)
