"""The frontier's runs on a tiny model, with a stand-in evaluator whose "reward" is a fingerprint
of the policy's weights (equal points ⇔ equal policies): DPO's intermediate points come from its
checkpoints, `keep_weights` keeps or drops the weights of evaluated runs, and the stability study
repeats DPO and PPO under a second training seed (seed 0 being the frontier's own runs, computed
once), counts the collapsed runs, and is reused whole by --resume without any weights on disk.
The real-model `--quick` test (test_frontier_quick.py) runs the stability study with the
frontier's own seed only; the repeats are proven here."""

import math
from pathlib import Path

import yaml

from dpokit.tasks import frontier_methods as fm
from dpokit.tasks.frontier import stability
from dpokit.tasks.frontier_runs import FinishedRuns

ROOT = Path(__file__).resolve().parents[1]


class FingerprintEvaluator:
    """Stands in for frontier.PointEvaluator: reward_mean = Σ of the policy's weights."""

    def __init__(self):
        self.calls = []
        self.stage = lambda *_: None

    def __call__(self, policy, method, setting, step, elapsed_s):
        w = math.fsum(float(p.detach().double().sum()) for p in policy.parameters())
        self.calls.append((method, setting, step))
        return fm.point(method, setting, step, 0.0, w, [w, w], 0.5, 1, elapsed_s)

    def implicit_reward_spearman(self, policy, beta):
        return None


def _sweep(tiny_dirs, run_dir: Path, resume: bool, keep_weights: bool) -> fm.Sweep:
    from dpokit.config import load_config, recipe
    from dpokit.rlhf.reward_model import load_reward_model
    from dpokit.tasks.frontier_config import FrontierConfig

    cfg = load_config(FrontierConfig, recipe("frontier_quick"), [
        f"model={tiny_dirs / 'lm'}", f"output_dir={run_dir}", f"cache_dir={run_dir / 'cache'}", "progress=false",
        "lr=1e-3", "ppo.lr=1e-3", "pairs.max_new_tokens=6", "stability.seeds=[0, 1]", f"keep_weights={str(keep_weights).lower()}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # 8 pairs at batch 4: 2 DPO steps per epoch, in an order the training seed shuffles.
    (run_dir / "pairs.jsonl").write_text("".join((ROOT / "examples" / "pairs.jsonl").read_text().splitlines(keepends=True)[:8]))
    sw = fm.Sweep(cfg, run_dir, FingerprintEvaluator(), FinishedRuns(run_dir, resume=resume, log=lambda *_: None),
                  {"base": 1}, [f"q{i}:" for i in range(8)], lambda texts: [0.0] * len(texts))
    sw.rm_dir, sw.rm_key = tiny_dirs / "rm", "tiny-rm"
    sw.rm = load_reward_model(sw.rm_dir)[0]
    return sw


def test_dpo_intermediate_points_come_from_its_checkpoints_and_keep_weights_keeps_them(tiny_dirs, tmp_path):
    from dpokit.models import load_model

    sw = _sweep(tiny_dirs, tmp_path / "sweep", resume=False, keep_weights=True)
    done = fm.dpo(sw, 0.5, [1, 2])
    run = tmp_path / "sweep" / "dpo-beta0.5"
    assert [p["step"] for p in done["points"]] == [1, 2] and len(done["implicit"]) == 2
    ckpt_policy = load_model(run / "checkpoint-000001" / "model")[0]
    final_policy = load_model(run / "final")[0]
    ev = FingerprintEvaluator()
    assert done["points"][0]["reward_mean"] == ev(ckpt_policy, "", "", 0, 0)["reward_mean"]  # step 1 = the checkpoint
    assert done["points"][1]["reward_mean"] == ev(final_policy, "", "", 0, 0)["reward_mean"]
    assert done["points"][0]["reward_mean"] != done["points"][1]["reward_mean"]


def test_stability_repeats_under_a_second_seed_and_resume_needs_no_weights(tiny_dirs, tmp_path):
    run_dir = tmp_path / "sweep"
    sw = _sweep(tiny_dirs, run_dir, resume=False, keep_weights=False)
    at = [1, 2]
    own_dpo = fm.dpo(sw, 0.1, at)  # the frontier's own runs, as run_frontier makes them before the study
    own_ppo = fm.ppo(sw, "ppo", "model", 0.05, sw.cfg.ppo.points)
    assert sw.evaluator.calls == [("dpo", "β=0.1", 1), ("dpo", "β=0.1", 2), ("ppo", "kl_coef=0.05", 2)]
    everything = {"reward_ci95": [-math.inf, math.inf]}
    out = stability(sw, everything, at)
    # Seed 0 is the frontier's own run, not trained again; seed 1 is one more run, its final point only.
    assert sw.evaluator.calls[3:] == [("dpo", "β=0.1", 2), ("ppo", "kl_coef=0.05", 2)]
    for method, own in (("dpo", own_dpo), ("ppo", own_ppo)):
        runs = out[method]["runs"]
        assert [r["seed"] for r in runs] == [0, 1]
        assert runs[0]["reward_mean"] == own["points"][-1]["reward_mean"]
        assert runs[1]["reward_mean"] != runs[0]["reward_mean"]  # another seed, another policy
        assert out[method]["collapsed"] == 0 and out[method]["reward_mean"]["min"] < out[method]["reward_mean"]["max"]
    assert yaml.safe_load((run_dir / "dpo-beta0.1-seed1" / "config.yaml").read_text())["seed"] == 1
    assert len((run_dir / "ppo-kl0.05-seed1" / "metrics.jsonl").read_text().splitlines()) == sw.cfg.ppo.steps
    # keep_weights=false: the evaluated DPO runs keep no checkpoint and no final model.
    for name in ("dpo-beta0.1", "dpo-beta0.1-seed1"):
        assert (run_dir / name / "frontier_run.json").exists()
        assert not (run_dir / name / "final").exists() and not list((run_dir / name).glob("checkpoint-*"))

    # A final reward below the reference's CI is a collapse: a threshold between the two seeds' rewards.
    for method in ("dpo", "ppo"):
        runs = out[method]["runs"]
        middle = (runs[0]["reward_mean"] + runs[1]["reward_mean"]) / 2
        again = stability(sw, {"reward_ci95": [middle, math.inf]}, at)[method]
        low = min(runs, key=lambda r: r["reward_mean"])["seed"]
        assert [r["collapsed"] for r in again["runs"]] == [r["seed"] == low for r in runs] and again["collapsed"] == 1

    # --resume: every run reused from its frontier_run.json, though its weights are gone.
    resumed = _sweep(tiny_dirs, run_dir, resume=True, keep_weights=False)
    fm.dpo(resumed, 0.1, at)
    fm.ppo(resumed, "ppo", "model", 0.05, resumed.cfg.ppo.points)
    assert stability(resumed, everything, at) == out
    assert resumed.runs.reused == ["dpo-beta0.1", "ppo-kl0.05", "dpo-beta0.1-seed1", "ppo-kl0.05-seed1"]
    assert resumed.evaluator.calls == []


def test_drop_weights_removes_checkpoints_and_final_only(tmp_path):
    for name in ("checkpoint-000002", "final", "metrics"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-000002" / "state.json").write_text("{}")
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    fm.drop_weights(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "metrics"]
    fm.drop_weights(tmp_path / "never-ran")  # nothing to drop: no error
