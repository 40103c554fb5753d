"""Frontier outputs from a hand-made point set whose winner under each KL bound is known:
winners, the "not distinguishable" verdict, JSON/CSV round trip with NaN, real PNGs, the table."""

import csv
import json
import math

import pytest
from matplotlib.image import imread

from dpokit.eval import frontier_report as fr

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAN = math.nan


def _p(method, setting, step, kl, r, ci, elapsed, win=0.5, n=64, **extra):
    return dict(method=method, setting=setting, step=step, kl=kl, reward_mean=r, reward_ci95=list(ci),
                win_rate=win, n=n, elapsed_s=elapsed, **extra)


# KL ≤ 2:  BoN-oracle N=16 0.48 [0.44, 0.52] beats dpo β=0.5 0.45 [0.41, 0.49]: CIs overlap;
#          ppo has no point there, preferred-ft only a NaN reward.
# KL ≤ 5:  dpo β=0.1 step 200 0.60 [0.55, 0.65] beats BoN 0.48 [0.44, 0.52]: CIs do not overlap.
# KL ≤ 10: ppo step 20 0.70 [0.66, 0.74] beats rloo 0.65 whose CI is NaN (one prompt).
POINTS = [
    _p("reference", "", 0, 0.0, 0.10, (0.05, 0.15), 10.0, win=None),
    _p("dpo", "β=0.1", 100, 1.5, 0.40, (0.35, 0.45), 60.0, seed=1),
    _p("dpo", "β=0.1", 200, 4.0, 0.60, (0.55, 0.65), 120.0, seed=1),
    _p("dpo", "β=0.1", 300, 8.0, 0.62, (0.57, 0.67), 180.0, seed=1),
    _p("dpo", "β=0.5", 100, 0.8, 0.30, (0.25, 0.35), 50.0, seed=1),
    _p("dpo", "β=0.5", 200, 1.8, 0.45, (0.41, 0.49), 100.0, seed=1),
    _p("preferred-ft", "lr=1e-6", 50, 1.0, NAN, (NAN, NAN), 40.0),
    _p("ppo", "kl_coef=0.05", 10, 3.0, 0.45, (0.40, 0.50), 300.0),
    _p("ppo", "kl_coef=0.05", 20, 6.0, 0.70, (0.66, 0.74), 600.0),
    _p("ppo", "kl_coef=0.05", 30, 12.0, 0.90, (0.85, 0.95), 900.0),
    _p("rloo", "k=4", 40, 9.0, 0.65, (NAN, NAN), 400.0, n=1),
    _p("best-of-n (oracle)", "N=1", 0, 0.0, 0.10, (0.05, 0.15), 120.0, win=None),
    _p("best-of-n (oracle)", "N=4", 0, 0.636, 0.43, (0.38, 0.48), 120.0, win=None),
    _p("best-of-n (oracle)", "N=16", 0, 1.835, 0.48, (0.44, 0.52), 120.0, win=None),
    _p("rloo", "k=4", 20, 5.0, 0.50, (0.47, 0.53), 200.0),  # exactly on a bound: KL ≤ 5 holds
]


def _who(p):
    return None if p is None else (p["method"], p["setting"], p["step"])


def test_best_at_kl_picks_the_known_winner_per_bound():
    best = fr.best_at_kl(POINTS)
    assert list(best) == [2, 5, 10]
    assert _who(best[2]["winner"]) == ("best-of-n (oracle)", "N=16", 0)
    assert _who(best[5]["winner"]) == ("dpo", "β=0.1", 200)
    assert _who(best[10]["winner"]) == ("ppo", "kl_coef=0.05", 20)
    assert best[2]["by_method"]["ppo"] is None and best[2]["by_method"]["rloo"] is None
    assert _who(best[5]["by_method"]["rloo"]) == ("rloo", "k=4", 20)
    assert _who(best[2]["by_method"]["dpo"]) == ("dpo", "β=0.5", 200)  # higher reward, not the later step
    assert all(b["by_method"]["preferred-ft"] is None for b in best.values())  # NaN reward never wins
    assert _who(fr.best_at_kl(POINTS, bounds=(20,))[20]["winner"]) == ("ppo", "kl_coef=0.05", 30)


def test_summary_sentences_state_winner_and_whether_it_is_distinguishable():
    lines = fr.frontier_summary_lines(POINTS)
    at2, at5, at10 = lines[:3]
    assert "KL ≤ 2 nats" in at2 and "comes from best-of-n (oracle) (N=16, step 0): 0.48 [0.44, 0.52] at KL 1.8" in at2
    assert "runner-up dpo (β=0.5, step 200)" in at2 and "not distinguishable" in at2
    assert at2.endswith("at KL ≤ 2: preferred-ft, ppo, rloo.")
    assert "comes from dpo (β=0.1, step 200)" in at5 and "runner-up rloo (k=4, step 20)" in at5
    assert "do not overlap" in at5 and "not distinguishable" not in at5 and at5.endswith("KL ≤ 5: preferred-ft.")
    assert "comes from ppo" in at10 and "runner-up rloo" in at10 and "cannot be compared" in at10
    assert any("upper bound" in s for s in lines)  # Best-of-N KL is not a sampled estimate


def test_wall_time_takes_each_runs_longest_and_bon_sampling_once():
    walls = fr.wall_time_by_method(POINTS)
    # dpo: 180 (β=0.1) + 100 (β=0.5); Best-of-N: 120 once, not 3 × 120.
    assert walls == {"reference": 10.0, "dpo": 280.0, "preferred-ft": 40.0, "ppo": 900.0, "rloo": 400.0,
                     "best-of-n (oracle)": 120.0}
    assert "dpo 4.7 min" in fr.frontier_summary_lines(POINTS)[-1]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("frontier")
    return fr.write_frontier(d / "out", POINTS, title="sentiment frontier", extra={"model": "tiny"})


def _strict(text):
    def refuse(name):
        raise AssertionError(f"non-JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _same(a, b):
    return (a is None and isinstance(b, float) and math.isnan(b)) or a == b


def test_json_is_strict_and_round_trips(written):
    doc = _strict(written["json"].read_text())
    assert doc["title"] == "sentiment frontier" and doc["extra"] == {"model": "tiny"}
    assert len(doc["points"]) == len(POINTS)
    for got, want in zip(doc["points"], POINTS):
        assert set(got) == set(want)  # exactly the point's keys, the extra "seed" included
        for k, v in want.items():
            if k == "reward_ci95":
                assert all(_same(g, w) for g, w in zip(got[k], v))
            else:
                assert _same(got[k], v), k
    assert doc["points"][10]["reward_ci95"] == [None, None]


def test_csv_columns_and_values(written):
    with written["csv"].open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "setting", "step", "kl", "reward_mean", "reward_ci_lo", "reward_ci_hi",
                             "win_rate", "n", "elapsed_s", "seed"]
    assert len(rows) == len(POINTS)
    assert rows[2]["setting"] == "β=0.1" and float(rows[2]["kl"]) == 4.0 and float(rows[2]["reward_ci_hi"]) == 0.65
    assert rows[10]["reward_ci_lo"] == rows[10]["reward_ci_hi"] == ""  # NaN as an empty cell
    assert rows[0]["win_rate"] == "" and rows[0]["seed"] == "" and rows[1]["seed"] == "1"


def _assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    pixels = imread(path)
    assert pixels.shape[0] >= 300 and pixels.std() > 0.05  # drawn, not a blank canvas


def test_frontier_png_and_markdown(written):
    _assert_png(written["png"])
    md = written["md"].read_text(encoding="utf-8")
    assert md.startswith("# sentiment frontier") and "![reward vs KL](frontier.png)" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == len(POINTS)
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    order = [fr._method_key(c[0]) for c in cells]
    assert order == sorted(order) and cells[0][0] == "reference" and cells[-1][0] == "best-of-n (oracle)"
    dpo_kls = [float(c[3]) for c in cells if c[0] == "dpo"]
    assert dpo_kls == sorted(dpo_kls) == [0.8, 1.5, 1.8, 4.0, 8.0]
    assert [c[2] for c in cells if c[0] == "rloo"] == ["20", "40"]
    rloo = next(c for c in cells if c[0] == "rloo" and c[2] == "40")
    assert rloo[4] == "0.65 [n/a, n/a]" and rloo[5] == "50%" and rloo[7] == "6.7 min"


def test_point_missing_a_key_is_refused_by_name(tmp_path):
    bad = [{k: v for k, v in POINTS[1].items() if k != "kl"}]
    with pytest.raises(ValueError, match=r"point 0 \('dpo' 'β=0.1'\) lacks kl"):
        fr.write_frontier(tmp_path, bad, title="x")


def test_overoptimisation_plot(tmp_path):
    # The learned reward keeps rising; the ground truth stalls after round 5.
    rows = [{"step": r, "split": "train", "reward/model": 0.2 * r, "reward/ground_truth": min(r, 5) * 0.1}
            for r in range(1, 16)]
    rows.append({"step": 15, "split": "eval", "reward/model": 99.0})  # eval rows are not the run's rounds
    _assert_png(fr.plot_reward_model_overoptimisation(rows, tmp_path / "sub" / "overopt.png"))
    assert fr._zscore([1.0, 2.0, 3.0]) == pytest.approx([-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert fr._zscore([0.7, 0.7]) == [0.0, 0.0]  # a flat curve stays at 0 instead of dividing by 0
