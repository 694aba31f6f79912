"""The public API fuzzed from its own OpenAPI document (schemathesis) on the real stack.

Every operation gets generated requests, valid and invalid; no answer may be a server
error, and every answer must match what the document says: a documented status code,
its content type and its schema. The number of examples per operation is bounded
(``IMGSIM_FUZZ_EXAMPLES``, default 25) so that CI stays short; raise it to fuzz longer.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Services
from tests.e2e.conftest import RunningStack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.slow]

EXAMPLES = int(os.environ.get("IMGSIM_FUZZ_EXAMPLES", "25"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def stack(infra: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    env = {"GATEWAY_SEARCH_TIMEOUT_S": "3", "GATEWAY_WAIT_TIMEOUT_S": "3"}
    with running_stack(infra, tmp_path_factory.mktemp("fuzz"), env) as running:
        yield running


def test_no_server_error_and_every_answer_as_documented(stack: RunningStack) -> None:
    # One Hypothesis run per operation, driven here rather than through schemathesis's
    # pytest plugin (its lazy schemas need pytest internals that pytest 9 removed).
    loaded = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in loaded.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15, [op.label for op in operations]
    failures: dict[str, str] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same examples every run: a failure can be replayed
        )
        def fuzz(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(checks=CHECKS, timeout=30)

        try:
            fuzz()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure
            failures[operation.label] = str(exc)[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())
