"""The store-neutral filter clauses (:mod:`imgsim_indexer.filters`) rendered in each
Qdrant client's own classes: ``qdrant_edge`` for the embedded store, ``qdrant_client``'s
``models`` for the server.

The two renderers stand side by side on purpose: the clients share no types, so the
rendering is written once per client, and any change to the clauses shows here in both.

- every clause → ``must``; "any of" → a nested ``Filter(should=...)``; an empty "any of"
  matches nothing (a ``HasIdCondition`` of no ids); left-out images → ``HasIdCondition``
  in ``must_not``;
- qdrant-edge-py 0.9 turns a Python ``bool`` in ``MatchValue`` into the integer 0/1,
  which matches no boolean payload; a ``numpy.bool_`` reaches its Bool variant, so the
  Edge renderer passes booleans as that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import qdrant_edge as qe
from qdrant_client import models

from imgsim_core.contracts import Condition, point_id
from imgsim_indexer.filters import Between, Clause, Match, MatchAny, clauses


def edge_filter(
    conditions: Mapping[str, Condition] | None, exclude: Sequence[str], *also: Clause
) -> qe.Filter | None:
    must = [_edge_condition(c) for c in (*clauses(conditions), *also)]
    must_not: list[qe.ConditionType] = (
        [qe.HasIdCondition({point_id(i) for i in exclude})] if exclude else []
    )
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _edge_condition(clause: Clause) -> qe.ConditionType:
    if isinstance(clause, Match):
        # numpy.bool_: qdrant-edge-py 0.9 reads a Python bool as the integer 0/1 (see above).
        value = np.bool_(clause.value) if isinstance(clause.value, bool) else clause.value
        return qe.FieldCondition(clause.path, match=qe.MatchValue(value))  # type: ignore[arg-type]
    if isinstance(clause, MatchAny):
        return qe.FieldCondition(clause.path, match=qe.MatchAny(clause.values))
    if isinstance(clause, Between):
        bounds = qe.RangeFloat(gte=clause.gte, gt=clause.gt, lte=clause.lte, lt=clause.lt)
        return qe.FieldCondition(clause.path, range=bounds)
    if clause.clauses:
        return qe.Filter(should=[_edge_condition(c) for c in clause.clauses])
    return qe.HasIdCondition(set())  # an empty "any of": nothing matches


def server_filter(
    conditions: Mapping[str, Condition] | None, exclude: Sequence[str], *also: Clause
) -> models.Filter | None:
    must = [_server_condition(c) for c in (*clauses(conditions), *also)]
    must_not: list[models.Condition] = (
        [models.HasIdCondition(has_id=[point_id(i) for i in exclude])] if exclude else []
    )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def _server_condition(clause: Clause) -> models.Condition:
    if isinstance(clause, Match):
        return models.FieldCondition(key=clause.path, match=models.MatchValue(value=clause.value))
    if isinstance(clause, MatchAny):
        return models.FieldCondition(key=clause.path, match=models.MatchAny(any=clause.values))
    if isinstance(clause, Between):
        bounds = models.Range(gte=clause.gte, gt=clause.gt, lte=clause.lte, lt=clause.lt)
        return models.FieldCondition(key=clause.path, range=bounds)
    if clause.clauses:
        return models.Filter(should=[_server_condition(c) for c in clause.clauses])
    return models.HasIdCondition(has_id=[])  # an empty "any of": nothing matches
