"""Every conformance case built by kiln, pushed, unpacked by umoci, compared with its fixture.

The fixtures are BuildKit's images, as Docker builds them (``scripts/regenerate-conformance``).
A case kiln cannot pass yet carries ``xfail = "reason"`` in its ``case.toml``: strict, so the
mark has to go as soon as the feature lands. Builds run two at a time in the background as soon
as the first case asks, each in its own temp dir and repository, so the suite takes about as
long as half its builds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conformance.harness import (
    Case,
    Environment,
    Outcome,
    as_docker_would,
    describe_base,
    kiln_builder,
    load_cases,
    run_case,
    serve_case_files,
)
from tests.support.compare import diff_descriptions
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

CASES = load_cases()
_WORKERS = 2


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


@pytest.fixture(scope="session")
def conformance_env(registry: Registry, busybox_image: str,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    with serve_case_files() as http_url:
        base = describe_base(busybox_image, registry.host, tmp_path_factory.mktemp("base"))
        yield Environment(registry.host, busybox_image, http_url, base)


@pytest.fixture(scope="session")
def kiln_outcomes(request: pytest.FixtureRequest, conformance_env: Environment,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[Outcome]]]:
    """Builds of every selected case, started together on first use, in test order."""
    selected = [param for item in request.session.items
                if isinstance(param := _case_param(item), Case)]
    work = tmp_path_factory.mktemp("conformance")
    pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="conformance")
    try:
        yield {case.name: pool.submit(run_case, case, conformance_env, work / case.name,
                                      kiln_builder, "kiln")
               for case in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _case_param(item: pytest.Item) -> object:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("case") if callspec is not None else None


def _expected(case: Case) -> dict[str, object]:
    assert case.expected_path.exists(), (
        f"no fixture for {case.name}: run scripts/regenerate-conformance {case.name}")
    result: dict[str, object] = json.loads(case.expected_path.read_text())
    return result


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_kiln_builds_what_the_fixture_says(case: Case,
                                           kiln_outcomes: dict[str, Future[Outcome]]) -> None:
    expected = _expected(case)
    outcome = kiln_outcomes[case.name].result()
    if case.expect_error is not None:
        assert expected["error"] == case.expect_error, "fixture is stale: regenerate it"
        assert expected["buildkit_error"] is not None or case.departures, (
            "BuildKit builds this Dockerfile: a refusal must name its departure (README)")
        assert outcome.exit_code != 0, "kiln built a Dockerfile that must fail"
        assert outcome.error_line == case.expect_error
        return
    assert outcome.exit_code == 0, f"{outcome.error_line}\n{outcome.output[-3000:]}"
    assert outcome.description is not None
    actual = as_docker_would(outcome.description, case.departures)
    diff = diff_descriptions(expected, actual)
    assert not diff, f"kiln's image differs from the fixture:\n{diff}"


def test_every_case_has_a_fixture_and_nothing_else_does() -> None:
    names = {c.name for c in CASES}
    fixtures = {p.stem for p in Path(CASES[0].expected_path.parent).glob("*.json")}
    assert names == fixtures
    assert len(CASES) >= 80
