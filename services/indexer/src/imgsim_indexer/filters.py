"""A search's metadata filter as store-neutral clauses (pure, no I/O).

A request's ``filter`` maps metadata keys to a
:data:`~imgsim_core.contracts.Condition`; every condition must hold. :func:`clauses`
turns it into :class:`Match`, :class:`MatchAny`, :class:`Between` and :class:`AnyOf`
clauses on the payload path ``metadata.<key>``, which each store renders in its own
client's types:

- a string, integer or boolean → :class:`Match` (exact; on a list-valued field any item
  matching counts, as Qdrant's match does);
- a float → :class:`Between` with ``gte = lte = value``: Qdrant's exact match covers
  keyword, integer and bool only;
- a list of values → any of them: one :class:`MatchAny` per kind (strings, integers),
  one clause per boolean or float, wrapped in :class:`AnyOf` when there is more than one
  clause; an empty list matches nothing (``AnyOf(())``);
- a :class:`~imgsim_core.contracts.Range` → :class:`Between` (numbers, int or float).

Qdrant's integer match does not match a float payload (``3`` ≠ ``3.0``) and its range
matches both. A key that no point has matches nothing. Keys with a payload index
(``INDEXER_PAYLOAD_INDEXES``) filter fast; any other key still works, by a full check of
the candidates' payloads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from imgsim_core.contracts import Condition, Range, Scalar
from imgsim_indexer.errors import BadFilterError
from imgsim_indexer.payload import METADATA

# Qdrant's integers are int64.
_INT64 = range(-(2**63), 2**63)


@dataclass(frozen=True, slots=True)
class Match:
    path: str
    value: str | int | bool


@dataclass(frozen=True, slots=True)
class MatchAny:
    path: str
    values: list[str] | list[int]


@dataclass(frozen=True, slots=True)
class Between:
    path: str
    gte: float | None = None
    gt: float | None = None
    lte: float | None = None
    lt: float | None = None


Simple = Match | MatchAny | Between


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one of ``clauses`` holds; none at all → nothing matches."""

    clauses: tuple[Simple, ...]


Clause = Simple | AnyOf


def metadata_path(key: str) -> str:
    """The payload path of a metadata key (also what a payload index is created on)."""
    return f"{METADATA}.{key}"


def clauses(conditions: Mapping[str, Condition] | None) -> list[Clause]:
    """Clauses that must all hold; raises :class:`BadFilterError` for values Qdrant refuses."""
    return [_clause(metadata_path(key), cond) for key, cond in (conditions or {}).items()]


def _clause(path: str, condition: Condition) -> Clause:
    if isinstance(condition, Range):
        bounds = (condition.gte, condition.gt, condition.lte, condition.lt)
        for bound in bounds:
            _check_float(path, bound)
        return Between(path, *bounds)
    if isinstance(condition, list):
        return _any_of(path, condition)
    return _scalar(path, condition)


def _scalar(path: str, value: Scalar) -> Simple:
    if isinstance(value, bool | str):
        return Match(path, value)
    if isinstance(value, int):
        if value not in _INT64:
            raise BadFilterError(f"{path}: {value} is outside the 64-bit integers")
        return Match(path, value)
    _check_float(path, value)
    return Between(path, gte=value, lte=value)


def _any_of(path: str, values: list[Scalar]) -> Clause:
    strings = [v for v in values if isinstance(v, str)]
    integers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    others = [v for v in values if isinstance(v, bool | float)]  # no MatchAny for these
    found: list[Simple] = []
    if strings:
        found.append(MatchAny(path, list(dict.fromkeys(strings))))
    if integers:
        for value in integers:
            if value not in _INT64:
                raise BadFilterError(f"{path}: {value} is outside the 64-bit integers")
        found.append(MatchAny(path, list(dict.fromkeys(integers))))
    found.extend(_scalar(path, v) for v in others)  # no dedup: True == 1.0 in Python
    return found[0] if len(found) == 1 else AnyOf(tuple(found))


def _check_float(path: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise BadFilterError(f"{path}: {value} is not a finite number")
