"""Duplicate groups over the store, a page at a time (see :class:`DuplicatesRequested`).

A page scans points in point-id order from the cursor. For each point ``p`` it finds the
images with the same bytes (``content_sha256``) and, with a threshold, the images at
least that similar (one vector search each). Its group is ``p`` and those of them that
come after ``p`` in point-id order, so a pair is found once, at its first image. A group
is left out when one of ``p``'s earlier neighbours has a group that holds all of it
(three copies of one photo give one group, not three); the neighbour's group is
recomputed for that, so pages need no state between them. Every pair above the
threshold is still in some group: a left-out group is inside an earlier one, and
following those back ends at a group that is reported.

The cost is one or two store reads for each point scanned (and as many again for a
point with earlier neighbours), so a page of the whole collection is bounded by
``scan_page`` points, not by the number of groups; a client follows ``next_cursor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from imgsim_core.contracts import (
    Condition,
    DuplicateGroup,
    DuplicateMember,
    DuplicatesReplied,
    DuplicatesRequested,
    point_id,
)
from imgsim_indexer.payload import Scanned
from imgsim_indexer.store import VectorStore

# Points one page scans at most, however few groups it found (bounds a page's time).
SCAN_PAGE = 512
_READ = 64


@dataclass(frozen=True, slots=True)
class _Neighbour:
    image_id: str
    point_id: str
    score: float
    exact: bool


class _Finder:
    def __init__(self, store: VectorStore, request: DuplicatesRequested) -> None:
        self.store = store
        self.request = request
        self.filter: Mapping[str, Condition] | None = request.filter

    async def neighbours(self, point: Scanned) -> tuple[list[_Neighbour], bool]:
        """Every other image in the group of ``point`` (before or after it), and whether
        there were more than ``max_group``."""
        cap = self.request.max_group
        found: dict[str, _Neighbour] = {}
        if point.content_sha256 is not None:
            for image_id in await self.store.same_content(
                point.content_sha256, limit=cap + 1, filter=self.filter
            ):
                if image_id != point.image_id:
                    found[image_id] = _Neighbour(image_id, point_id(image_id), 1.0, True)
        if self.request.threshold is not None:
            hits = await self.store.search(
                point.vector, top_k=cap + 1, threshold=self.request.threshold,
                with_metadata=False, filter=self.filter, exclude=(point.image_id,),
            )  # fmt: skip
            for hit in hits:
                if hit.image_id not in found:
                    found[hit.image_id] = _Neighbour(
                        hit.image_id, point_id(hit.image_id), round(hit.score, 6), False
                    )
        ordered = sorted(found.values(), key=lambda n: (not n.exact, -n.score))
        return ordered[:cap], len(ordered) > cap

    async def group(self, point: Scanned) -> DuplicateGroup | None:
        neighbours, truncated = await self.neighbours(point)
        later = [n for n in neighbours if n.point_id > point.point_id]
        if not later:
            return None
        members = {n.image_id for n in later}
        for earlier in (n for n in neighbours if n.point_id < point.point_id):
            vector = await self.store.get_vector(earlier.image_id)
            if vector is None:
                continue  # deleted meanwhile
            theirs, _ = await self.neighbours(
                Scanned(earlier.image_id, earlier.point_id, vector, _sha(point, earlier))
            )
            if members | {point.image_id} <= {n.image_id for n in theirs}:
                return None  # reported with the earlier image's group
        return DuplicateGroup(
            image_id=point.image_id,
            members=[DuplicateMember(image_id=n.image_id, score=n.score, exact=n.exact)
                     for n in later],
            truncated=truncated,
        )  # fmt: skip


def _sha(point: Scanned, neighbour: _Neighbour) -> str | None:
    """An exact neighbour has the point's hash; another one's is not needed to decide."""
    return point.content_sha256 if neighbour.exact else None


async def find_duplicates(store: VectorStore, request: DuplicatesRequested) -> DuplicatesReplied:
    finder = _Finder(store, request)
    if request.content_sha256 is not None:
        ids = await store.same_content(
            request.content_sha256, limit=request.max_group + 1, filter=request.filter
        )
        found: list[DuplicateGroup] = []
        if ids:
            members = [DuplicateMember(image_id=i, score=1.0, exact=True) for i in ids[1:]]
            found.append(DuplicateGroup(
                image_id=ids[0], members=members[: request.max_group],
                truncated=len(members) > request.max_group,
            ))  # fmt: skip
        return DuplicatesReplied(groups=found, scanned=len(ids))
    groups: list[DuplicateGroup] = []
    cursor, scanned = request.cursor, 0
    while cursor is not None or scanned == 0:
        points, after = await store.scan(cursor=cursor, limit=_READ, filter=request.filter)
        for i, point in enumerate(points):
            scanned += 1
            group = await finder.group(point)
            if group is not None:
                groups.append(group)
            if len(groups) == request.limit or scanned >= SCAN_PAGE:
                following = points[i + 1].point_id if i + 1 < len(points) else after
                return DuplicatesReplied(groups=groups, next_cursor=following, scanned=scanned)
        cursor = after
        if not points:
            break
    return DuplicatesReplied(groups=groups, next_cursor=None, scanned=scanned)
