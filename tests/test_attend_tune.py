"""attend_tune's grid: every combination, and only attend stage settings."""

from __future__ import annotations

import pytest

from boneage.attend_tune import grid_settings


def test_grid_settings_are_every_combination():
    got = grid_settings({"tau": [0.2, 0.3], "min_size": [None, [0.6, 0.35]]})
    small = [0.6, 0.35]
    assert got == [{"tau": 0.2, "min_size": None}, {"tau": 0.2, "min_size": small},
                   {"tau": 0.3, "min_size": None}, {"tau": 0.3, "min_size": small}]  # fmt: skip
    assert grid_settings({}) == [{}]


@pytest.mark.parametrize("grid, match", [({"taux": [0.2]}, "not an attend stage setting"),
                                         ({"tau": 0.2}, "non-empty list"),
                                         ({"tau": []}, "non-empty list")])  # fmt: skip
def test_a_bad_grid_is_refused_naming_the_key(grid, match):
    with pytest.raises(ValueError, match=match):
        grid_settings(grid)
