from fractions import Fraction

import pytest

from rws.weights.grid import GridSpec, enumerate_weights, float_sum_count, front


def test_paper_grid_has_480_affine_soups():
    grid = list(GridSpec.make(4, -0.4, 1.4, 0.2))
    assert len(grid) == 480
    assert all(sum(w) == 1 for w in grid)
    assert len(set(grid)) == 480
    # Same set as brute force over integer 4-tuples in [-2, 7] summing to 5.
    import itertools

    brute = {t for t in itertools.product(range(-2, 8), repeat=4) if sum(t) == 5}
    assert set(GridSpec.make(4, -0.4, 1.4, 0.2).integer_tuples()) == brute


def test_convex_three_model_grid_has_21():
    assert len(GridSpec.make(3, 0, 1, 0.2)) == 21


def test_float_sum_check_gives_a_different_count():
    assert float_sum_count(4, -0.4, 1.4, 0.2) != 480


def test_non_affine_and_bad_specs():
    assert len(GridSpec.make(2, 0, 1, 0.5, affine=False)) == 9
    with pytest.raises(ValueError, match="multiple of step"):
        GridSpec.make(2, -0.3, 1, 0.2)


def test_enumerate_weights_kinds():
    assert enumerate_weights({"kind": "front", "ws": [0, 0.3, 1]}, 2)[1] == (Fraction(3, 10), Fraction(7, 10))
    assert front([0.2]) == [(Fraction(1, 5), Fraction(4, 5))]
    rows = enumerate_weights({"weights": [[0.1, 0.2, 0.7], [1, 0, 0]]}, 3)
    assert rows[0] == (Fraction(1, 10), Fraction(1, 5), Fraction(7, 10))
    with pytest.raises(ValueError, match="sum to 1"):
        enumerate_weights({"weights": [[0.5, 0.6, 0.0]]}, 3)
    assert len(enumerate_weights({"weights": [[0.5, 0.6, 0.0]], "affine": False}, 3)) == 1
    assert len(enumerate_weights({"low": -0.4, "high": 1.4, "step": 0.2}, 4)) == 480
