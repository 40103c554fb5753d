"""benchmarks/rlhf_speed.py: the report's arithmetic on hand-made numbers, the command line's
refusals, and --quick runs (tiny model, each configuration in a subprocess of its own) checking
the JSON contract documented in benchmarks/README.md, never the speed."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import rlhf_report, rlhf_speed

HAS_TRL = importlib.util.find_spec("trl") is not None
ROLLOUT_KEYS = ("tokens_per_s", "seconds_per_call", "generated_tokens", "prompt_tokens", "mean_completion_tokens",
                "sequences_per_call", "peak_rss_mb", "useful_gflops", "fraction_of_matmul_peak", "ratio_to_trl")
STEP_KEYS = ("seconds_per_step", "step_seconds", "peak_rss_mb", "mean_completion_tokens", "speedup_vs_trl",
             "speedup_vs_trl_nogc", "rss_ratio_to_trl", "rss_ratio_to_trl_nogc")


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# -- the arithmetic, on numbers worked out by hand -----------------------------------------------
def _rollout_entry(engine: str, tokens_per_s: float) -> dict:
    return {"engine": engine, "tokens_per_s": tokens_per_s, "prompt_tokens": 300, "generated_tokens": 700,
            "call_seconds": [1.0, 1.0], "seconds_per_call": 1.0, "sequences_per_call": 8, "mean_completion_tokens": 43.75,
            "peak_rss_mb": 900.0, "params_total": 10**8, "params_non_embedding": 5 * 10**7}


def test_report_ratios_flop_share_and_verdicts():
    rollout = {"trl-generate@4x2x16": _rollout_entry("trl", 350.0), "dpokit-sampler@4x2x16": _rollout_entry("dpokit", 700.0)}
    steps = {
        "trl-rloo": {"engine": "trl", "seconds_per_step": 6.0, "peak_rss_mb": 2000.0},
        "dpokit-rloo": {"engine": "dpokit", "seconds_per_step": 2.0, "peak_rss_mb": 1200.0},
        "trl-rloo-nogc": {"engine": "trl", "seconds_per_step": 3.0, "peak_rss_mb": 2400.0},
    }
    report = rlhf_report.enrich(rollout, steps, peak=200.0)
    dp = report["rollout"]["dpokit-sampler@4x2x16"]
    # 2·N per token, prompt once + generated: 2e8 · 1000 tokens / 2 s = 100 GFLOP/s = 50% of 200.
    assert dp["useful_gflops"] == pytest.approx(100.0)
    assert dp["fraction_of_matmul_peak"] == pytest.approx(0.5)
    assert dp["fraction_of_matmul_peak_non_embedding"] == pytest.approx(0.25)
    assert dp["ratio_to_trl"] == pytest.approx(2.0)  # tokens/s, dpokit ÷ TRL of the same shape
    rloo = report["steps"]["dpokit-rloo"]
    assert rloo["speedup_vs_trl"] == pytest.approx(3.0) and rloo["speedup_vs_trl_nogc"] == pytest.approx(1.5)
    assert rloo["rss_ratio_to_trl"] == pytest.approx(0.6) and rloo["rss_ratio_to_trl_nogc"] == pytest.approx(0.5)
    t = report["targets"]
    assert t["rloo_speedup_vs_trl"] == {"target": 2.0, "measured": pytest.approx(3.0), "met": True}
    assert t["rloo_rss_ratio_to_trl"]["met"] is False  # 0.6 > 0.5
    assert t["sampler_fraction_of_matmul_peak"]["met"] == {"4x2x16": True}  # exactly 50% counts as met
    text = rlhf_report.format_report({**report, "matmul": {"size": 8, "gflops_before": 200.0, "gflops_after": 190.0, "gflops_peak": 200.0}})
    assert "| dpokit-rloo | 2.00 |" in text and "3.00×" in text and "(not met)" in text


def test_report_without_trl_has_no_ratios_and_no_verdicts():
    steps = {"dpokit-rloo": {"engine": "dpokit", "seconds_per_step": 2.0, "peak_rss_mb": 1200.0}}
    report = rlhf_report.enrich({"dpokit-sampler@2x2x8": _rollout_entry("dpokit", 700.0)}, steps, peak=200.0)
    assert report["rollout"]["dpokit-sampler@2x2x8"]["ratio_to_trl"] is None
    assert report["steps"]["dpokit-rloo"]["speedup_vs_trl"] is None
    assert report["targets"]["rloo_speedup_vs_trl"]["met"] is None  # not measured, not "not met"


@pytest.mark.parametrize("argv", [["--rollout-shapes", "4x2"], ["--rollout-shapes", "4x0x16"], ["--generations", "1"]])
def test_bad_settings_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        rlhf_speed.parse_args(["--quick", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error:" in err and ("rollout-shapes" in err or "--generations" in err)


# -- --quick runs ----------------------------------------------------------------------------------
def _run(tmp_path, *extra) -> dict:
    out = tmp_path / "rlhf.json"
    rlhf_speed.main(["--quick", "--json", str(out), *extra])
    return json.loads(out.read_text())


def test_quick_dpokit_only_writes_documented_json(tmp_path):
    report = _run(tmp_path, "--no-trl", "--configs", "dpokit-rloo", "dpokit-ppo")
    assert report["trl_skipped"] == "--no-trl"
    sampler = report["rollout"]["dpokit-sampler@2x2x8"]
    assert "error" not in sampler, sampler.get("error")
    for key in ROLLOUT_KEYS:
        assert key in sampler, key
    assert sampler["ratio_to_trl"] is None
    for key in ("tokens_per_s", "useful_gflops", "fraction_of_matmul_peak", "prompt_tokens", "peak_rss_mb"):
        assert _positive_finite(sampler[key]), (key, sampler[key])
    # 2 timed calls of 2 prompts × 2 samples, at most 8 new tokens each
    assert sampler["sequences_per_call"] == 4 and len(sampler["call_seconds"]) == 2
    assert 0 < sampler["generated_tokens"] <= 2 * 4 * 8
    assert set(report["steps"]) == {"dpokit-rloo", "dpokit-ppo"}
    for name, entry in report["steps"].items():
        assert "error" not in entry, entry.get("error")
        for key in STEP_KEYS:
            assert key in entry, (name, key)
        assert len(entry["step_seconds"]) == 1 and len(entry["warmup_seconds"]) == 1
        assert _positive_finite(entry["seconds_per_step"]) and _positive_finite(entry["peak_rss_mb"])
        assert 0 < entry["mean_completion_tokens"] <= 16
        assert entry["config"]["max_new_tokens"] == 16 and entry["config"]["reward"] == "sentiment"
    # PPO samples as many completions per round as RLOO (4 prompts × 2)
    assert report["steps"]["dpokit-ppo"]["config"]["rollout_size"] == 8
    assert report["steps"]["dpokit-rloo"]["config"]["k"] == 2
    assert report["targets"]["rloo_speedup_vs_trl"]["measured"] is None
    assert _positive_finite(report["matmul"]["gflops_peak"])


@pytest.mark.slow  # ~27 s: four processes, two of them building TRL trainers
@pytest.mark.skipif(not HAS_TRL, reason="trl not installed (optional bench extra: pip install -e .[bench])")
def test_quick_with_trl_has_ratios(tmp_path):
    report = _run(tmp_path, "--configs", "trl-rloo", "dpokit-rloo")
    assert report["trl_skipped"] is None
    trl_gen, dp_gen = report["rollout"]["trl-generate@2x2x8"], report["rollout"]["dpokit-sampler@2x2x8"]
    assert "error" not in trl_gen, trl_gen.get("error")
    assert trl_gen["ratio_to_trl"] == pytest.approx(1.0)
    assert _positive_finite(dp_gen["ratio_to_trl"])
    assert trl_gen["prompt_tokens"] == dp_gen["prompt_tokens"]  # same prompts, tokenized alike
    trl, dp = report["steps"]["trl-rloo"], report["steps"]["dpokit-rloo"]
    assert "error" not in trl, trl.get("error")
    assert trl["speedup_vs_trl"] == pytest.approx(1.0) and _positive_finite(dp["speedup_vs_trl"])
    assert _positive_finite(dp["rss_ratio_to_trl"])
    # TRL ran at the benchmark's settings: fp32, 4 prompts × 2 samples, 16 tokens, the same lr and β
    cfg = trl["config"]
    assert cfg["bf16"] is False and cfg["per_device_train_batch_size"] == 8 and cfg["num_generations"] == 2
    assert cfg["max_completion_length"] == 16 and cfg["learning_rate"] == dp["config"]["lr"]
    assert cfg["beta"] == dp["config"]["kl_coef"]
    assert 0 < trl["mean_completion_tokens"] <= 16
