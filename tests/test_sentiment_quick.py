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
