"""The cost table of docs/aws.md is computed from the catalog, and stays equal to it."""

import itertools
from pathlib import Path

import cost
from shop_infra.stages import STAGES

README = Path(__file__).resolve().parents[2] / "docs" / "aws.md"


def test_the_readme_cost_table_is_the_one_computed_from_the_catalog():
    text = README.read_text()
    table = text.split("<!-- cost-table:start -->\n")[1].split("\n<!-- cost-table:end -->")[0]
    assert table == cost.table(), "run `python infra/cost.py` and paste its output"


def test_each_stage_costs_more_per_hour_than_the_one_before():
    hourly = [cost.hourly(stage) for stage in STAGES]
    assert all(a < b for a, b in itertools.pairwise(hourly))


def test_a_scaling_stage_costs_more_at_its_maximum_size():
    for stage in STAGES:
        if stage.fleet.auto_scaling:
            assert cost.hourly(stage, at_max=True) > cost.hourly(stage)
        else:
            assert cost.hourly(stage, at_max=True) == cost.hourly(stage)
