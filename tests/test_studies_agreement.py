"""The disagreement study's measures (dpokit.studies.agreement) against hand-computed values."""

import math

import pytest

from dpokit.studies import agreement as A
from dpokit.studies.raters import Panel


def sig(x):
    return 1 / (1 + math.exp(-x))


PANEL = Panel.from_counts({"sentiment": 2, "brevity": 1}, temperature=1.0)
ZA, ZB = {"sentiment": 1.0, "brevity": -2.0}, {"sentiment": 0.0, "brevity": 0.5}  # Δz = (1, −2.5)


def test_majority_prob_by_hand():
    # P(≥ 2 of 3) = p_s² + 2 p_s (1 − p_s) p_b, p_s = σ(1) = 0.731059, p_b = σ(−2.5) = 0.075858
    #            = 0.534447 + 0.029829 = 0.564276
    assert A.majority_prob(PANEL, ZA, ZB) == pytest.approx(0.564276, abs=1e-6)
    even = Panel.from_counts({"sentiment": 1, "brevity": 1}, temperature=1.0)
    za, zb = {"sentiment": math.log(4), "brevity": math.log(3 / 7)}, {"sentiment": 0.0, "brevity": 0.0}  # p = 0.8, 0.3
    # P(2) + ½ P(1) = 0.24 + ½ (0.8·0.7 + 0.2·0.3) = 0.24 + 0.31 = 0.55
    assert A.majority_prob(even, za, zb) == pytest.approx(0.55, abs=1e-9)


def test_targets_by_hand_majority_and_soft_follow_the_count_panel_the_utility():
    t = A.targets(PANEL, ZA, ZB)
    assert t["delta_z"] == {"sentiment": 1.0, "brevity": -2.5}
    assert t["delta_u"] == pytest.approx(-1 / 6)  # 2/3·1 + 1/3·(−2.5)
    assert t["p_mix"] == pytest.approx(0.512659, abs=1e-6)
    opt = t["optimum"]
    assert opt["majority"] == pytest.approx(math.log(0.564276 / 0.435724), abs=1e-5) and opt["majority"] > 0
    assert opt["soft"] == pytest.approx(math.log(0.512659 / 0.487341), abs=1e-5) and opt["soft"] > 0
    # (1/3)(1 + 1 − 2.5) = −1/6 = ΔU / T: the only one that sides with U
    assert opt["panel"] == pytest.approx(-1 / 6)


def test_panel_target_with_deterministic_annotators():
    det = Panel.from_counts({"sentiment": 1, "brevity": 1}, temperature=0.0)
    assert A.panel_target(det, {"sentiment": 1, "brevity": 0}, {"sentiment": 0, "brevity": 1}) is None  # never unanimous
    assert A.panel_target(det, {"sentiment": 1, "brevity": 1}, {"sentiment": 0, "brevity": 0}) == math.inf


def test_agreement_by_hand():
    got = A.agreement([1.0, -1.0, 0.0, None, 2.0], [0.5, 0.5, -1.0, 1.0, 0.0])
    # counted: agree, disagree, a zero margin (½); None and a zero truth are left out → 1.5 / 3
    assert got["share"] == pytest.approx(0.5) and got["n"] == 3
    assert A.agreement([None], [1.0]) == {"share": None, "n": 0, "ci95": None}


def test_wilson_interval():
    lo, hi = A.wilson(8, 10)
    assert (lo, hi) == pytest.approx((0.490162, 0.943318), abs=1e-5)


def test_agreement_table_followed_and_calibration_gap():
    pair_targets = [A.targets(PANEL, ZA, ZB), A.targets(PANEL, ZB, ZA)]
    margins = [0.3, -0.3]  # sides with sentiment and P_mix, against brevity and U
    table = A.agreement_table(margins, pair_targets, PANEL.criteria)
    assert {k: v["share"] for k, v in table.items()} == {"sentiment": 1.0, "brevity": 0.0, "utility": 0.0, "p_mix": 1.0}
    assert A.followed(table, PANEL.criteria) == "sentiment"
    gap = A.calibration_gap(margins, pair_targets)
    # |σ(0.3) − 0.512659| = |0.574443 − 0.512659| = 0.061784, the same for the mirrored pair
    assert gap["mean_abs"] == pytest.approx(0.061784, abs=1e-6) and gap["n"] == 2
