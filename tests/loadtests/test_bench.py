"""`make bench` judges a route by the rounds' own ratios, not by medians taken apart."""

import pytest

from loadtests.bench import paired


def test_a_ratio_is_the_median_of_each_rounds_ratio() -> None:
    # The machine slowed down in round 2: every server did, so the rounds' ratios agree.
    route, bare = [2000.0, 1000.0, 1900.0], [10000.0, 5000.0, 10000.0]
    # The ratio of the medians (1900 / 10000) would mix round 3's route with round 1's bare.
    assert paired(route, bare) == pytest.approx(0.2)


def test_rounds_must_pair_up() -> None:
    with pytest.raises(ValueError):
        paired([1.0, 2.0], [1.0])
