"""The main job's --quick preset end to end on the bundled model: the report's numbers exist
and are finite (their values are the recipe's business, measured in the README)."""

import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_quick_sentiment_run(real_model_dir, tmp_path):
    from dpokit.cli import main

    out = tmp_path / "quick"
    assert main(["run", "sentiment", "--quick", f"output_dir={out}", "progress=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    numbers = [
        summary["reference"]["reward_mean"], *summary["reference"]["reward_ci95"],
        summary["policy"]["reward_mean"], *summary["policy"]["reward_ci95"],
        summary["win_rate"], summary["kl"], summary["implicit_accuracy"],
        summary["reference"]["length_mean"], summary["policy"]["length_mean"], summary["elapsed_s"],
    ]
    assert all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers)
    assert 0 <= summary["win_rate"] <= 1
    for name in ("report.md", "report.html", "training.png", "rewards.png", "reward_vs_kl.png", "pairs.jsonl"):
        assert (out / name).stat().st_size > 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3
    # Margin calibration on the held-out pairs: the same pairs and sign as the trainer's eval.
    cal = summary["margin_calibration"]
    heldout = (out / "heldout_pairs.jsonl").read_text().splitlines()
    assert cal["pairs"] == len(heldout) == sum(b["pairs"] for b in cal["by_gap"])
    assert cal["accuracy"] == pytest.approx(summary["implicit_accuracy"], abs=1e-9)
    gaps = sorted(json.loads(r)["chosen_reward"] - json.loads(r)["rejected_reward"] for r in heldout)
    assert cal["by_gap"][0]["gap_min"] == pytest.approx(gaps[0]) and cal["by_gap"][-1]["gap_max"] == pytest.approx(gaps[-1])
    assert "Implicit margin vs ground-truth gap" in (out / "report.md").read_text()
    # Likelihood change = the eval's implicit rewards / β (nats per completion).
    change = summary["likelihood_change"]
    eval_rec = [json.loads(r) for r in (out / "policy" / "metrics.jsonl").read_text().splitlines() if '"eval"' in r][-1]
    assert change["chosen"] == pytest.approx(eval_rec["rewards/chosen"] / summary["beta"])
    assert change["rejected"] == pytest.approx(eval_rec["rewards/rejected"] / summary["beta"])
