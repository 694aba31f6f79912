"""FastStream handlers: images → vectors (bulk), queries → vector searches (latency).

``build_router(settings, holder, broker)`` returns a :class:`KafkaRouter` with two
subscribers:

- **images** (batch): the raw aiokafka records are read from the message (``records_of``)
  because a null value is a tombstone. :func:`~imgsim_embedder.embedding.embed_records`
  (what records and queries turn into lives in :mod:`imgsim_embedder.embedding`) turns a
  batch of records
  into the records to produce — vectors, passed-through tombstones and dead letters, in
  input order (so per-key order holds) — with one ``embed_images`` call for the whole
  batch. The handler produces them with the service's idempotent ``acks=all`` producer
  and returns; ``AckPolicy.NACK_ON_ERROR`` commits only then, and any unexpected error
  (broker, stopping) seeks back so the batch is redelivered: at-least-once. A bad record
  is dead-lettered alone and never fails the batch. A model failure is retried
  ``model_retries`` times with exponential backoff; if it persists, the images are tried
  one by one and those that still fail are dead-lettered as ``model_error: …``, so a
  batch is never redelivered forever.
- **queries**: the message arrives as :class:`~imgsim_core.responders.Received` (its
  bytes and headers, from the ``received`` decoder: no thread hop for FastStream's
  ``Context``) and is validated in the handler
  (:func:`imgsim_core.responders.decode_request`, the responders' one decoder), so a
  malformed query is answered with a ``bad_request``
  :class:`SearchReplied` on ``reply_to`` rather than rejected by FastStream (which would
  leave the gateway waiting for its timeout). A query whose deadline has passed is
  dropped; otherwise the image or the text is embedded as urgent work and a
  :class:`VectorSearchRequested` (with all the :class:`SearchParams`, filter included) is
  published to the searches topic with the incoming ``correlation_id`` and ``reply_to``
  (and ``deadline`` header), so the indexer answers the gateway directly.
  ``no_reply=True`` keeps FastStream from sending the handler's return value to
  ``reply_to`` itself; an error reply is published through the ``broker`` the router is
  built with. ``max_workers`` lets several queries wait in the batcher together.

The router is built by :func:`build_router` rather than declared at module level for
the reason the indexer's is (:mod:`imgsim_indexer.handlers`): topic names and groups
come from the settings; the resources arrive through the :class:`StateHolder` once the
app has started them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaRouter
from faststream.kafka.annotations import KafkaMessage
from prometheus_client import Counter

from imgsim_core.contracts import (
    SearchReplied,
    SearchRequested,
    VectorSearchRequested,
)
from imgsim_core.errors import ErrorCode
from imgsim_core.images import ImageError
from imgsim_core.kafka import (
    batch_records,
    produce_all,
    records_of,
    safe_batch_parser,
)
from imgsim_core.responders import BadRequestError, Received, decode_request, received
from imgsim_core.topics import CONTRACT_VERSION, Header
from imgsim_embedder.batcher import MicroBatcher
from imgsim_embedder.embedding import embed_query, embed_records
from imgsim_embedder.errors import EmbedderError
from imgsim_embedder.model import ImageEncoder
from imgsim_embedder.preprocessing import PreprocessPool
from imgsim_embedder.settings import EmbedderSettings

log = logging.getLogger(__name__)

QUERIES = Counter("imgsim_embedder_queries", "Search queries handled.", ["outcome"])


@dataclass
class EmbedderState:
    """What the handlers use; ``app.py`` opens these on start-up and closes them."""

    encoder: ImageEncoder
    batcher: MicroBatcher
    pool: PreprocessPool
    producer: AIOKafkaProducer


class StateHolder:
    """Gives the handlers the state once the app has started (the router is built before)."""

    def __init__(self) -> None:
        self._state: EmbedderState | None = None

    def set(self, state: EmbedderState | None) -> None:
        self._state = state

    def get(self) -> EmbedderState:
        if self._state is None:
            raise EmbedderError("the embedder has not started")
        return self._state


def build_router(
    settings: EmbedderSettings, holder: StateHolder, broker: KafkaBroker
) -> KafkaRouter:
    """The embedder's subscribers; a query's error reply goes out through ``broker``."""
    topics = settings.kafka.topics
    limits = settings.limits
    router = KafkaRouter()
    searches = router.publisher(
        topics.searches,
        title="searches",
        description="Searches with their query vector; the indexer replies to reply_to.",
        schema=VectorSearchRequested,
    )

    @router.subscriber(
        topics.images,
        batch=True,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=safe_batch_parser,
        decoder=batch_records,
        max_records=settings.kafka.bulk_max_records,
        **settings.kafka.bulk_polling,
        **settings.kafka.membership,
        title="images",
        description=(
            "Source of truth. Key: image id (UTF-8, 1–256 chars). Value: the encoded image "
            "bytes as they are (JPEG, PNG, WebP, GIF, BMP); null deletes. Headers: "
            "`metadata` (JSON object), optional `content-type`."
        ),
    )
    async def on_images(message: KafkaMessage) -> None:
        state = holder.get()
        outputs = await embed_records(
            records_of(message),
            encoder=state.encoder,
            batcher=state.batcher,
            pool=state.pool,
            topics=topics,
            limits=limits,
            model_retries=settings.model_retries,
            retry_backoff_s=settings.model_retry_backoff_ms / 1000,
        )
        await produce_all(state.producer, outputs)

    if not settings.serve_queries:
        return router  # an embedder for a model change: images only (see the README)

    @router.subscriber(
        topics.queries,
        group_id=f"{settings.group_id}-query",
        # earliest: a new group must not miss queries sent while it joins; stale ones are
        # dropped by their deadline.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.kafka.latency_fetch_max_wait_ms,
        max_workers=settings.query_concurrency,
        **settings.kafka.membership,
        no_reply=True,
        decoder=received,
        title="queries",
        description=(
            "Searches that need an embedding: a SearchRequested JSON body; headers "
            "correlation_id, reply_to."
        ),
    )
    async def on_query(message: Received) -> None:
        forward = {Header.CONTRACT: CONTRACT_VERSION}
        if deadline := message.headers.get(Header.DEADLINE):
            forward[Header.DEADLINE] = str(deadline)

        async def reply_error(error: str, code: ErrorCode) -> None:
            QUERIES.labels(code).inc()
            log.info("query %s failed: %s: %s", message.correlation_id, code, error)
            if message.reply_to:
                await broker.publish(
                    SearchReplied(error=error, error_code=code),
                    message.reply_to,
                    correlation_id=message.correlation_id,
                    headers=forward,
                )

        try:  # the deadline header is read before the image is parsed: it costs nothing
            query = decode_request(message.headers, message.body, SearchRequested)
        except BadRequestError as exc:
            await reply_error(exc.reason, exc.code)
            return
        if query is None:
            QUERIES.labels("expired").inc()
            log.debug("dropping query %s: its deadline has passed", message.correlation_id)
            return
        state = holder.get()
        try:
            search = await embed_query(
                query,
                encoder=state.encoder,
                batcher=state.batcher,
                pool=state.pool,
                limits=limits,
            )
        except (ImageError, EmbedderError) as exc:
            await reply_error(
                str(exc), exc.code if isinstance(exc, ImageError) else ErrorCode.EMBEDDING_FAILED
            )
            return
        await searches.publish(
            search,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            headers=forward,
        )
        QUERIES.labels("forwarded").inc()

    return router
