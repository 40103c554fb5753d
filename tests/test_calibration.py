"""Implicit-margin calibration against ground-truth gaps, on numbers worked out by hand."""

import pytest

from dpokit.eval.calibration import accuracy_by_gap, margin_calibration, ranks, spearman


def test_ranks_average_ties():
    assert ranks([10, 30, 20, 30]) == [1.0, 3.5, 2.0, 3.5]
    assert ranks([]) == []


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1,2,3 ; y = 1,3,2 -> deviations (-1,0,1) and (-1,1,0): r = 1 / sqrt(2 * 2) = 0.5
    assert spearman([0.1, 0.2, 0.3], [5, 9, 7]) == pytest.approx(0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_accuracy_by_gap_equal_count_bins():
    gaps = [0.9, 0.1, 0.5, 0.2, 0.8, 0.6]
    margins = [2.0, -1.0, 0.5, 1.0, 1.0, -0.5]
    # sorted by gap: 0.1(-1) 0.2(1) | 0.5(0.5) 0.6(-0.5) | 0.8(1) 0.9(2)
    got = accuracy_by_gap(margins, gaps, bins=3)
    assert [b["pairs"] for b in got] == [2, 2, 2]
    assert [(b["gap_min"], b["gap_max"]) for b in got] == [(0.1, 0.2), (0.5, 0.6), (0.8, 0.9)]
    assert [b["accuracy"] for b in got] == [0.5, 0.5, 1.0]
    assert [b["mean_margin"] for b in got] == pytest.approx([0.0, 0.0, 1.5])
    assert len(accuracy_by_gap([1.0], [0.3], bins=3)) == 1


def test_margin_calibration_summary():
    out = margin_calibration([2.0, -1.0, 0.5, 1.0, 1.0, -0.5], [0.9, 0.1, 0.5, 0.2, 0.8, 0.6], bins=3)
    assert out["pairs"] == 6 and out["accuracy"] == pytest.approx(4 / 6)
    assert out["spearman"] == pytest.approx(spearman([2.0, -1.0, 0.5, 1.0, 1.0, -0.5], [0.9, 0.1, 0.5, 0.2, 0.8, 0.6]))
    assert margin_calibration([], []) == {"pairs": 0, "accuracy": None, "spearman": None, "by_gap": []}
