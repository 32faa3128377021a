"""docker-compose.yml's stage profiles carry the ladder's CPU budgets (loadtests/ladder/stages.py)
as `cpus:`, and are exactly what `python -m loadtests.ladder.compose --write` makes from them."""

from __future__ import annotations

import pytest
import yaml

from loadtests.ladder import compose
from loadtests.ladder.stages import STAGES


@pytest.fixture(scope="module")
def parsed() -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(compose.COMPOSE.read_text())  # type: ignore[no-any-return]


def test_the_profiles_are_the_ones_the_stage_data_makes() -> None:
    assert compose.block_in(compose.COMPOSE.read_text()) == compose.render(), (
        "docker-compose.yml is out of date: run `python -m loadtests.ladder.compose --write`"
    )


@pytest.mark.parametrize("stage", STAGES.values(), ids=lambda s: f"stage-{s.number}")
def test_a_profile_has_the_stages_budgets_as_cpus(parsed, stage) -> None:  # type: ignore[no-untyped-def]
    assert compose.budgets_in(parsed, stage) == pytest.approx(stage.budgets())


@pytest.mark.parametrize("stage", STAGES.values(), ids=lambda s: f"stage-{s.number}")
def test_a_profile_publishes_one_entry(parsed, stage) -> None:  # type: ignore[no-untyped-def]
    published = [
        name
        for name, service in parsed["services"].items()
        if f"stage-{stage.number}" in service.get("profiles", []) and service.get("ports")
    ]
    entry = "cdn" if stage.cdn else "lb" if stage.balancer else "app"
    assert published == [f"s{stage.number}-{entry}"]


def test_the_development_stack_is_in_no_profile(parsed) -> None:  # type: ignore[no-untyped-def]
    for name in ("postgres", "redis", "moto", "app", "worker"):
        assert "profiles" not in parsed["services"][name]
