"""The preprocessing pool: a query's image never waits behind bulk images."""

from __future__ import annotations

import asyncio
import io
import time

import torch
from embedder_fakes import FakeEncoder
from PIL import Image

from imgsim_core.settings import ImageLimits
from imgsim_embedder.preprocessing import PreprocessPool

LIMITS = ImageLimits()


def png(red: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (red, 10, 20)).save(buf, format="PNG")
    return buf.getvalue()


async def test_bulk_images_wait_while_a_query_is_in_flight_and_go_on_after() -> None:
    encoder = FakeEncoder()
    with PreprocessPool(2, bulk_wait_s=30) as pool:
        with pool.query():
            bulk = [pool.bulk(encoder, png(i), LIMITS) for i in range(20)]
            # The query's own image is prepared on its own threads, ahead of all 20.
            tensor = await asyncio.wait_for(pool.query_image(encoder, png(200), LIMITS), 5)
            assert torch.equal(tensor, torch.tensor([200.0]))
            await asyncio.sleep(0.1)
            assert not any(f.done() for f in bulk)
        done = await asyncio.wait_for(asyncio.gather(*bulk), 5)  # the query has ended
    assert [float(t[0]) for t in done] == [float(i) for i in range(20)]


async def test_a_bulk_image_waits_at_most_bulk_wait_s_for_the_queries() -> None:
    encoder = FakeEncoder()
    with PreprocessPool(1, bulk_wait_s=0.05) as pool, pool.query():
        started = time.perf_counter()
        tensors = await asyncio.wait_for(
            asyncio.gather(*(pool.bulk(encoder, png(i), LIMITS) for i in range(4))), 5
        )
        took = time.perf_counter() - started
    assert [float(t[0]) for t in tensors] == [0.0, 1.0, 2.0, 3.0]
    assert took >= 4 * 0.05  # each waited its turn, one thread


async def test_queries_in_flight_are_counted_until_the_last_one_ends() -> None:
    encoder = FakeEncoder()
    with PreprocessPool(1, bulk_wait_s=30) as pool:
        with pool.query():
            with pool.query():
                pass
            waiting = pool.bulk(encoder, png(7), LIMITS)
            await asyncio.sleep(0.1)
            assert not waiting.done()  # one query is still in flight
        assert float((await asyncio.wait_for(waiting, 5))[0]) == 7.0
