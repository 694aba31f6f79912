"""Searching: the result cache first, then the embedder or straight to the indexer.

A search crosses Kafka as a question to the embedder (queries topic) when its query
needs an embedding, or to the indexer (searches topic) when it does not: a search by
id, examples that are all ids or vectors, or a query whose embedding is cached
(:mod:`imgsim_gateway.cache`). A query image stays the base64 text it came as until the
result cache has missed: a hit needs neither its bytes nor a check (the same text passed
them when the result was stored), and the text is what the embedder is sent. On a miss
the gateway decodes the base64 and checks the image's header (format, size, pixel count,
crop); the embedder decodes the pixels and answers a corrupt image with its code, a 422
like the gateway's own checks. Nothing here knows HTTP: the routes turn request bodies
into a :class:`Query` and :class:`~imgsim_core.contracts.SearchParams`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from pydantic import BaseModel

from imgsim_core.contracts import (
    Crop,
    Example,
    SearchHit,
    SearchParams,
    SearchReplied,
    SearchRequested,
    VectorSearchRequested,
)
from imgsim_core.kafka import now_ms
from imgsim_gateway.cache import SearchCache
from imgsim_gateway.checks import ImageChecks, base64_payload, decode_base64
from imgsim_gateway.indexer import IndexerClient, reply_error
from imgsim_gateway.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class Query:
    """What a search looks for: an image as base64 (a region of it with ``crop``), a text,
    an indexed image's id, or examples (``positive``, ``negative``; images as base64)."""

    image: str | None = None
    text: str | None = None
    like_image_id: str | None = None
    crop: Crop | None = None
    positive: tuple[Example, ...] = ()
    negative: tuple[Example, ...] = ()

    def cache_subject(self) -> bytes | None:
        """A digest that identifies this query's embedding (examples: their combination;
        None for search by id). Computed once a search: an image's base64 is ~100 KB."""
        if self.image is not None:
            box = b"" if self.crop is None else self.crop.model_dump_json().encode()
            digest = hashlib.sha256(b"image:" + box + b":")
            digest.update(self.image.encode())
            return digest.digest()
        if self.text is not None:
            return b"text:" + self.text.encode()
        if self.positive:
            return (
                b"examples:"
                + json.dumps(
                    [
                        [_example_key(e) for e in self.positive],
                        [_example_key(e) for e in self.negative],
                    ]
                ).encode()
            )
        return None

    @property
    def needs_embedding(self) -> bool:
        """Whether the embedder has work in it (an id or a cached vector does not)."""
        if self.positive:
            return any(e.image is not None or e.text is not None
                       for e in (*self.positive, *self.negative))  # fmt: skip
        return self.like_image_id is None


def _example_key(example: Example) -> dict[str, object]:
    """An example as it counts for the cache: an image by the hash of its base64."""
    key = example.model_dump(exclude_none=True)
    if example.image is not None:
        key["image"] = hashlib.sha256(example.image.encode()).hexdigest()
    return key


class Searches:
    def __init__(
        self,
        settings: GatewaySettings,
        cache: SearchCache,
        checks: ImageChecks,
        indexer: IndexerClient,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.cache = cache
        self._checks = checks
        self._indexer = indexer

    async def search(self, query: Query, options: SearchParams) -> tuple[list[SearchHit], bool]:
        """Hits best first, and whether they came from the result cache."""
        params = options.model_dump()
        subject = query.cache_subject()
        known = self._indexer.known_model_id()  # no round trip: the embedding comes along
        cached = await self.cache.get_result(subject, query.like_image_id, params, known)
        if cached.hits is not None:  # these exact bytes were validated when it was stored
            return cached.hits, True
        if query.image is not None:
            self._checks.header(decode_base64(query.image), query.crop)
        for example in (*query.positive, *query.negative):
            if example.image is not None:
                self._checks.header(decode_base64(example.image), example.crop)
        model_id = await self._indexer.model_id()
        timeout = self.settings.search_timeout_s
        deadline = now_ms() + int(timeout * 1000)
        if model_id is not None and model_id == cached.embedding_model:
            vector = cached.embedding
        else:  # the model changed meanwhile, or was not known yet
            vector = await self.cache.get_embedding(subject, model_id)
        request: BaseModel
        examples = {"positive": list(query.positive), "negative": list(query.negative)}
        if vector is not None or not query.needs_embedding:
            request = VectorSearchRequested(
                vector=vector, like_image_id=query.like_image_id, model_id=model_id,
                deadline_ms=deadline, **(examples if vector is None else {}), **params,
            )  # fmt: skip
            topic = self.topics.searches
        else:
            request = SearchRequested(
                image=base64_payload(query.image) if query.image is not None else None,
                text=query.text, crop=query.crop, deadline_ms=deadline, **examples, **params,
            )  # fmt: skip
            topic = self.topics.queries
        answer = await self._indexer.ask(topic, request, timeout, SearchReplied)
        if answer.error is not None:
            raise reply_error(answer.error, answer.error_code, "search_failed")
        embedding = None  # the embedder's, echoed by the indexer: cached with the result
        if vector is None and answer.query_vector and answer.model_id:
            embedding = (answer.model_id, answer.query_vector)
        await self.cache.put(
            subject, query.like_image_id, params, answer.hits, cached.generation, embedding
        )
        return answer.hits, False
