"""The API fuzz's remaining routes (issue 17 item 3): the event stream and the key routes,
which tests/agent/api/test_api_fuzz.py leaves out.

- ``GET /api/v1/stream`` never ends by itself, and schemathesis reads a whole answer
  before checking it. Each case is sent with the request schemathesis built, read as a
  stream: an error answer (finite JSON) is read and checked like any other; a 200 is
  checked on its status, its content type and its first block of Server-Sent Events,
  then closed without waiting for events.
- ``POST /api/v1/key/rotate`` and ``POST /api/v1/peers/{name}/compromised`` change the
  node (its key, its trust list): they run against a node of their own, made for this
  module, after the stream's cases.

Checks: no 5xx, a status the document lists, and for JSON answers the document's schema.
``ENTRAIDE_FUZZ_EXAMPLES`` cases per operation and scope (5 by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.agent.api.test_api_fuzz import CHECKS, EXAMPLES, _fuzz, _summary, serve_node

pytestmark = pytest.mark.slow

SCOPES = [None, "read", "write", "admin"]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A throwaway node: the key routes may change its key or its trust list."""
    yield from serve_node(tmp_path_factory, "fuzz-api-keys")


def _operation(url: str, operation_id: str) -> Any:
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("operationId") == operation_id:
            return op
    raise AssertionError(f"{operation_id} is not in the document")


def _headers(tokens: dict[str, str], scope: str | None) -> dict[str, str]:
    return {} if scope is None else {"Authorization": f"Bearer {tokens[scope]}"}


def _documented(op: Any) -> set[int]:
    return {int(code) for code in op.definition.raw["responses"]}


def _first_block(response: requests.Response, where: str) -> None:
    """Read the stream's first block (up to its blank line) and check it is Server-Sent
    Events; then the caller closes. Events may never come, but the node opens every
    stream with a block of its own (``retry:`` and a comment)."""
    block = b""
    for byte in response.iter_content(chunk_size=1):
        block += byte
        if block.endswith(b"\n\n") or len(block) > 4096:
            break
    assert block.endswith(b"\n\n"), f"{where}: {block[:200]!r}"
    for line in block.decode("utf-8").splitlines():
        field = line.split(":", 1)[0]
        assert line == "" or field in ("", "retry", "event", "id", "data"), \
            f"{where}: not an SSE line: {line[:200]!r}"


@pytest.mark.parametrize("scope", SCOPES)
def test_stream_answers_as_documented(node: tuple[str, dict[str, str]],
                                      scope: str | None) -> None:
    url, tokens = node
    op = _operation(url, "streamObservations")
    statuses = _documented(op)
    headers = _headers(tokens, scope)
    seen: set[int] = set()

    with requests.Session() as session:
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            kwargs = case.as_transport_kwargs(base_url=url, headers=headers)
            kwargs.pop("timeout", None)
            with session.request(**kwargs, stream=True, timeout=30) as response:
                where = (f"GET {case.formatted_path} query={case.query!r} "
                         f"headers={case.headers!r}: {response.status_code}")
                assert response.status_code < 500, where
                assert response.status_code in statuses, where
                seen.add(response.status_code)
                if response.status_code == 200:
                    assert response.headers["Content-Type"].startswith(
                        "text/event-stream"), where
                    _first_block(response, where)
                    return
                assert response.headers["Content-Type"].startswith("application/json"), where
                response.content  # noqa: B018 - an error answer is finite: read it whole
                case.validate_response(response, checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:
            pytest.fail(_summary(exc))
    assert seen, "no case was sent"
    if scope is None:
        assert seen == {401}
    else:
        assert 200 in seen, "no case opened the stream"


@pytest.mark.parametrize("operation_id", ["declareCompromised", "rotateKey"])
@pytest.mark.parametrize("scope", SCOPES)
def test_key_routes_answer_as_documented(node: tuple[str, dict[str, str]],
                                         operation_id: str, scope: str | None) -> None:
    url, tokens = node
    op = _operation(url, operation_id)
    headers = _headers(tokens, scope)
    with requests.Session() as session:
        try:
            _fuzz(op, url, headers, session)
        except (Exception, BaseExceptionGroup) as exc:
            pytest.fail(_summary(exc))
    # The node still answers, under the same key or not.
    health = requests.get(f"{url}/api/v1/health", timeout=30)
    assert health.status_code == 200
