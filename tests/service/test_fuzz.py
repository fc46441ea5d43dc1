"""Schemathesis against ``/openapi.json`` of a live server with an index: nothing it generates gets a 5xx.

Bounded (a fixed number of derandomised examples per operation and mode) so it stays a test, not a campaign.
Driven through ``APIOperation.as_strategy`` + Hypothesis rather than the pytest plugin's lazy fixtures.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.service.helpers import make_settings  # noqa: E402
from tests.service.servers import live_server  # noqa: E402

EXAMPLES = 40  # per operation and mode

# (method, path, mode) known at collection time (building the app loads nothing).  Negative data exists only
# for operations that take input.
_PATHS = create_app(Settings(_env_file=None)).openapi()["paths"]  # type: ignore[call-arg]
CASES = [
    (method.upper(), path, mode)
    for path, item in _PATHS.items()
    for method, operation in item.items()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or operation.get("parameters") or operation.get("requestBody")
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_schema(default_artifact: Path, index_dir: Path) -> Iterator[Any]:
    with live_server(make_settings(default_artifact, index=index_dir)) as base:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json")


def _operation(schema: Any, method: str, path: str) -> Any:
    for result in schema.get_all_operations():
        op = result.ok()
        if op.method.upper() == method and op.path == path:
            return op
    raise AssertionError(f"{method} {path} not in the served schema")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_server_errors(fuzz_schema: Any, method: str, path: str, mode: GenerationMode) -> None:
    op = _operation(fuzz_schema, method, path)
    negative = mode == GenerationMode.NEGATIVE

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # Multipart fields are strings on the wire: a "negative" integer-became-array (an empty list is no field
        # at all) or integer-became-string is often a valid request, so only JSON and parameters must be refused.
        checks = CHECKS + (
            [negative_data_rejection] if negative and case.media_type != "multipart/form-data" else []
        )
        case.call_and_validate(checks=checks, timeout=30)

    run()
