"""imgsim indexer: the only writer of the vector store.

It consumes the vectors topic in batches and upserts (or, for tombstones, deletes) the
points in Qdrant, and answers vector searches, image lookups and status requests over
Kafka request/reply. Modules: :mod:`settings`, :mod:`store` (the store interface) with
its two implementations :mod:`edge_store` (embedded Qdrant Edge, the default) and
:mod:`server_store` (a Qdrant server), :mod:`filters` (search filters as store-neutral
clauses), :mod:`operations` (a vectors batch as store operations), :mod:`cache` (the
result-cache generation in Redis), :mod:`handlers` (the FastStream router), :mod:`app`
(factory and lifespan) and :mod:`errors`.
"""

__version__ = "0.1.0"
