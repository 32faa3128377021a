"""The load shapes drive and measure the windows their docstrings promise, from their knobs."""

from __future__ import annotations

import random

import pytest

from loadtests import shapes


def step_ramp(monkeypatch: pytest.MonkeyPatch, **knobs: str) -> shapes.StepRamp:
    """A step ramp made from these SHOP_LOAD_* knobs, the others unset."""
    for name in ("STEP_USERS", "START_USERS", "STEP_S", "STEPS", "STOP_AFTER_MISSED"):
        monkeypatch.delenv(f"SHOP_LOAD_{name}", raising=False)
    for name, value in knobs.items():
        monkeypatch.setenv(f"SHOP_LOAD_{name.upper()}", value)
    return shapes.StepRamp()


def test_the_step_ramp_adds_users_per_step_and_skips_each_steps_ramp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ramp = step_ramp(monkeypatch, step_users="5", step_s="10", steps="3")
    assert [ramp.users_at(t) for t in (0, 9.9, 10, 25, 29.9)] == [5, 5, 10, 15, 15]
    assert ramp.users_at(30) is None  # the run ends after the last step
    assert ramp.window_at(12) == shapes.Window(1, 10, 13.0, 20.0)


def test_a_fine_pass_starts_where_it_is_told_and_keeps_its_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ramp = step_ramp(monkeypatch, start_users="130", step_users="5", step_s="20", steps="5")
    assert [ramp.users_at(t) for t in (0, 20, 40, 60, 80)] == [130, 135, 140, 145, 150]
    assert ramp.users_at(100) is None


def test_the_step_ramps_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    ramp = step_ramp(monkeypatch)
    assert (ramp.step_users, ramp.step_s, ramp.steps, ramp.spawn_rate) == (10, 20.0, 8, 50.0)
    assert ramp.users_at(159) == 80 and ramp.users_at(160) is None


def test_the_step_ramp_ends_after_steps_in_a_row_past_the_objective(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ramp = step_ramp(monkeypatch, step_s="10", steps="20", stop_after_missed="2")
    for met in (True, False, True, False):  # a missed step alone does not end it
        ramp.measured(met)
    assert ramp.users_at(45) == 50
    ramp.measured(False)  # the second in a row
    assert ramp.users_at(55) is None and ramp.window_at(55) is None


def test_without_a_stop_the_step_ramp_runs_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    ramp = step_ramp(monkeypatch, steps="3")
    for _ in range(3):
        ramp.measured(False)
    assert ramp.users_at(59) == 30


def test_the_daily_curve_has_a_night_a_peak_and_an_evening(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOP_LOAD_DAILY_PEAK_USERS", "100")
    monkeypatch.setenv("SHOP_LOAD_DAILY_S", "200")
    day = shapes.DailyCurve()
    users = [day.users_at(t) or 0 for t in range(0, 200, 2)]
    assert max(users) == 100 and users.index(100) == 70  # the peak at 70 % of the day
    assert day.users_at(40) == 5  # small hours
    assert day.users_at(180) == 45  # evening
    assert day.users_at(200) is None
    assert day.window_at(31) == shapes.Window(3, day.users_at(35) or 0, 30.0, 40.0)  # its middle


def test_the_spike_multiplies_the_users_then_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_LOAD_STEP_USERS", "4")
    monkeypatch.setenv("SHOP_LOAD_STEP_S", "10")
    spike = shapes.Spike()
    assert [spike.users_at(t) for t in (5, 15, 25, 30)] == [4, 40, 4, None]


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SHOP_LOAD_STEP_USERS", "ten", "is not a number"),
        ("SHOP_LOAD_STEP_USERS", "0", "must be at least 1"),
        ("SHOP_LOAD_STEPS", "2.5", "must be a whole number"),
        ("SHOP_LOAD_STEP_S", "2", "must be at least 4"),
        ("SHOP_LOAD_SPAWN_RATE", "nan", "must be at least"),
    ],
)
def test_a_bad_knob_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name) as refused:
        shapes.StepRamp()
    assert message in str(refused.value)


def test_the_shape_is_chosen_by_name() -> None:
    assert shapes.chosen(None) is None and shapes.chosen(" ") is None
    assert shapes.chosen("Step") is shapes.StepRamp
    assert shapes.chosen("daily") is shapes.DailyCurve
    with pytest.raises(ValueError, match="use one of step, daily, spike"):
        shapes.chosen("ramp")


def test_popularities_are_read_by_name_with_the_zipf_exponent() -> None:
    assert shapes.popularity(None) == shapes.Popularity("skew")
    assert shapes.popularity(" Uniform ") == shapes.Popularity("uniform")
    assert shapes.popularity("zipf") == shapes.Popularity("zipf", shapes.ZIPF_EXPONENT)
    assert str(shapes.popularity("zipf:1.3")) == "zipf:1.3"
    for bad in ("zipf:0", "zipf:nan", "zipf:9", "pareto"):
        with pytest.raises(ValueError, match="skew, uniform or zipf:S"):
            shapes.popularity(bad)


def test_the_mix_is_the_talks_unless_orders_is_asked_for() -> None:
    assert shapes.mix(None) == shapes.mix("") == "talk"
    assert shapes.mix("ORDERS") == "orders"
    with pytest.raises(ValueError, match="talk, orders"):
        shapes.mix("writes")


def test_zipf_puts_the_share_the_law_predicts_on_the_best_sellers() -> None:
    # s = 1 over 1,000 products: the top 20 carry H(20) / H(1000) = 3.598 / 7.485 = 48 %.
    weights = shapes.popularity("zipf:1").cumulative_weights(1000)
    assert len(weights) == 1000
    assert weights[19] / weights[-1] == pytest.approx(0.4806, abs=0.0005)
    picks = random.Random(7).choices(range(1000), cum_weights=weights, k=20_000)
    assert sum(1 for p in picks if p < 20) / len(picks) == pytest.approx(0.48, abs=0.02)
