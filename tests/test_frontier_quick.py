"""`dpokit run frontier --quick` end to end on the bundled model: every method gives its points,
evaluated the same way, with the relations that must hold whatever the numbers (their values are
measured in the README, not here). That a changed setting redoes exactly the runs it keys is
tested on the run store (test_frontier_runs.py), not by a third real-model pass here; the
stability study's repeats under other seeds, DPO's intermediate points against its checkpoints and
keep_weights=true on a tiny model (test_frontier_sweep.py). The recipe keeps no weights but the
reward model's: the runs are evaluated, then their checkpoints and final models deleted."""

import csv
import json
import math

import pytest

pytestmark = pytest.mark.slow


def test_quick_frontier_and_its_resume(real_model_dir, tmp_path):
    from dpokit.cli import main

    out = tmp_path / "frontier"
    assert main(["run", "frontier", "--quick", f"output_dir={out}", "progress=false"]) == 0
    report = json.loads((out / "frontier.json").read_text())
    points = report["points"]
    by = {}
    for p in points:
        by.setdefault(p["method"], []).append(p)
    # The recipe: 2 β × 2 evaluation steps, 1 PPO + PPO-GT, 1 RLOO, Best-of-N at N = 1, 2, 4;
    # stability seed 0 (the frontier's own runs).
    assert sorted((p["setting"], p["step"]) for p in by["dpo"]) == [("β=0.1", 2), ("β=0.1", 3), ("β=0.5", 2), ("β=0.5", 3)]
    assert [len(by[m]) for m in ("reference", "preferred-ft", "ppo", "ppo-gt", "rloo")] == [1, 1, 1, 1, 1]
    for p in points:
        assert math.isfinite(p["kl"]) and math.isfinite(p["reward_mean"]) and -1 <= p["reward_mean"] <= 1
        assert p["n"] == 6  # the same held-out prompts for every method
        if p["win_rate"] is not None:
            assert 0 <= p["win_rate"] <= 1
    assert by["reference"][0]["kl"] == 0.0
    rm_sel = {p["setting"]: p for p in by["best-of-n (reward model)"]}
    oracle = {p["setting"]: p for p in by["best-of-n (oracle)"]}
    assert sorted(rm_sel) == sorted(oracle) == ["N=1", "N=2", "N=4"]
    for setting, p in oracle.items():
        n = int(setting[2:])
        assert p["kl"] == pytest.approx(math.log(n) - (n - 1) / n)
        # Selecting by the ground truth itself can only do better than selecting by the reward model.
        assert p["reward_mean"] >= rm_sel[setting]["reward_mean"] - 1e-12
    assert oracle["N=1"]["reward_mean"] == pytest.approx(rm_sel["N=1"]["reward_mean"])
    # The reward model's own report, and the implicit reward's rank correlation at every DPO point.
    extra = report["extra"]
    assert 0 <= extra["reward_model"]["heldout_pair_accuracy"] <= 1
    # ... and on the Best-of-N samples: every within-prompt pair (6 prompts × 4 samples: ≤ 36 pairs).
    on_samples = extra["reward_model"]["on_best_of_n_samples"]
    assert 0 < on_samples["pairs"] <= 36 and 0 <= on_samples["accuracy"] <= 1
    assert (on_samples["prompts"], on_samples["samples_per_prompt"]) == (6, 4)
    assert len(extra["dpo_implicit_reward_spearman"]) == len(by["dpo"])
    # PPO logs the learned and the ground-truth reward side by side, every round.
    rows = [json.loads(l) for l in (out / "ppo-kl0.05" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all("reward/model" in r and "reward/ground_truth" in r for r in rows)
    # Stability: seed 0 is the frontier's own run (its final point).
    stability = extra["stability"]
    for method, own_point in (("dpo", ("β=0.1", 3)), ("ppo", ("kl_coef=0.05", 2))):
        runs = stability[method]["runs"]
        assert [r["seed"] for r in runs] == [0]
        own = next(p for p in by[method] if (p["setting"], p["step"]) == own_point)
        assert (runs[0]["reward_mean"], runs[0]["kl"]) == (own["reward_mean"], own["kl"])
        assert stability[method]["collapsed"] == sum(r["collapsed"] for r in runs)
    # The implicit-reward study: pools of 4 and 12 pairs, 2 steps of 4 pairs, ρ after each step (the
    # first from its checkpoint; a pool larger than the toy sweep's pairs trains on all of them).
    study = extra["implicit_reward_study"]
    n_pairs = extra["pairs"]["pairs"]
    assert [(r["pairs"], r["step"]) for r in study] == [(4, 1), (4, 2), (12, 1), (12, 2)]
    for r in study:
        assert r["pairs_seen"] == 4 * r["step"] and r["epochs"] == pytest.approx(r["pairs_seen"] / r["pairs"])
        assert all(v is None or -1 <= v <= 1 for v in (r["spearman"], r["spearman_per_token"]))
    assert len((out / "implicit-beta0.1-pairs4" / "pairs.jsonl").read_text().splitlines()) == min(4, n_pairs)
    assert (out / "implicit_reward.png").exists()
    md = (out / "frontier.md").read_text()
    assert "## When does the implicit reward rank" in md
    assert "## Stability across training seeds" in md and "## Wall time" in md
    with open(out / "frontier.csv") as f:
        assert len(list(csv.DictReader(f))) == len(points)
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| method | setting |" in (out / "frontier.md").read_text()
    # keep_weights: false — no checkpoint or final model is left but the reward model's (PPO, RLOO
    # and Best-of-N load it); the runs' own files stay.
    assert {p.parent.relative_to(out).as_posix() for p in out.rglob("*.safetensors")} == {"rm/final"}
    assert (out / "dpo-beta0.1" / "train_summary.json").exists() and not (out / "dpo-beta0.1" / "final").exists()

    # --resume reuses every finished run, with no weights on disk: the same points, no run redone.
    runs = ["rm", "dpo-beta0.1", "dpo-beta0.5", "sft", "ppo-kl0.05", "ppo-gt-kl0.05", "rloo-kl0.05",
            "implicit-beta0.1-pairs4", "implicit-beta0.1-pairs12", "best-of-n"]
    assert main(["run", "frontier", "--quick", "--resume", f"output_dir={out}", "progress=false"]) == 0
    again = json.loads((out / "frontier.json").read_text())
    assert again["extra"]["reused_runs"] == runs
    assert again["points"] == points
    # Each run's wall time, measured on the first sweep, is reported again by the resumed one.
    assert sorted(extra["run_wall_s"]) == sorted(runs) and all(v > 0 for v in extra["run_wall_s"].values())
    assert again["extra"]["run_wall_s"] == extra["run_wall_s"]
