"""Smoke tests of benchmarks/dpo_throughput.py in --quick mode (tiny model, seconds).

Each configuration runs in a subprocess of its own, as in a real benchmark run; these tests
only check the plumbing and the JSON contract, never the speed."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import dpo_throughput  # noqa: E402

ENTRY_KEYS = ("pairs_per_s", "tokens_per_s", "peak_rss_mb", "ratio_to_trl_defaults")
POSITIVE = ("pairs_per_s", "tokens_per_s", "peak_rss_mb", "seconds_per_step", "amortised_pairs_per_s",
            "useful_gflops", "fraction_of_matmul_peak", "reference_precompute_s")


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _run(tmp_path, *extra) -> dict:
    out = tmp_path / "bench.json"
    dpo_throughput.main(["--quick", "--json", str(out), *extra])
    return json.loads(out.read_text())


def test_quick_dpokit_only_writes_documented_json(tmp_path):
    report = _run(tmp_path, "--no-trl", "--extras", "dpokit-lowmem")
    configs = report["configurations"]
    assert set(configs) == {"dpokit-defaults", "dpokit-best", "dpokit-lowmem"}
    assert configs["dpokit-lowmem"]["options"]["optimizer_in_backward"] is True
    for name, entry in configs.items():
        assert "error" not in entry, entry.get("error")
        for key in ENTRY_KEYS:
            assert key in entry, (name, key)
        for key in POSITIVE:
            assert _positive_finite(entry[key]), (name, key, entry[key])
        assert entry["ratio_to_trl_defaults"] is None  # no TRL row to divide by
        assert entry["data"]["pairs"] == 16 and entry["steps"] == 2
        # Per-phase RSS: a mark per phase and per step (warmup + timed), the final peak set in one of them.
        phases = [m["phase"] for m in entry["rss_phases"]]
        assert phases[:5] == ["start", "model load", "data", "reference precompute", "trainer setup"]
        assert phases[5:] == [f"step {i}" for i in range(len(entry["warmup_seconds"]) + 2)]
        assert entry["peak_rss_phase"] in phases
        assert _positive_finite(entry["rss_after_precompute_mb"])
        assert entry["peak_rss_before_steps_mb"] <= entry["rss_phases"][-1]["peak_mb"] <= entry["peak_rss_mb"] + 1
    assert _positive_finite(report["matmul"]["gflops_peak"])


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (optional bench extra)")
def test_quick_with_trl_has_ratios(tmp_path):
    report = _run(tmp_path)
    configs = report["configurations"]
    assert set(configs) == {"trl-defaults", "trl-best", "dpokit-defaults", "dpokit-best"}
    for name, entry in configs.items():
        assert "error" not in entry, entry.get("error")
        for key in ENTRY_KEYS + ("ratio_to_trl_best",):
            assert _positive_finite(entry[key]), (name, key, entry[key])
    assert configs["trl-defaults"]["ratio_to_trl_defaults"] == pytest.approx(1.0)
    assert configs["trl-best"]["reference_precompute_s"] > 0  # precompute was timed apart
    assert configs["trl-defaults"]["reference_precompute_s"] == 0


def test_quick_scaling_table(tmp_path):
    out = tmp_path / "scaling.json"
    report = dpo_throughput.main(
        ["--quick", "--scaling", "--scale-lengths", "16", "32", "--scale-batches", "1", "--json", str(out)]
    )
    assert [p["x"] for p in report["length_sweep"]] == [16, 32]
    for point in report["length_sweep"] + report["batch_sweep"]:
        assert _positive_finite(point["pairs_per_s"]) and _positive_finite(point["peak_rss_mb"]), point
    assert "| L |" in report["markdown"] and "| batch |" in report["markdown"]
    assert json.loads(out.read_text())["length_sweep"][0]["x"] == 16


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl not installed (optional bench extra)")
def test_quick_lora_pair_compares_lora_with_lora(tmp_path):
    report = _run(tmp_path, "--configs", "--extras", "trl-lora", "dpokit-lora")
    configs = report["configurations"]
    assert set(configs) == {"trl-lora", "dpokit-lora"}
    for name, entry in configs.items():
        assert "error" not in entry, entry.get("error")
        assert entry["lora"]["r"] == 16
        # Only the adapter trains, in both engines: the same number of trainable parameters.
        assert 0 < entry["params_trainable"] < entry["params_total"], (name, entry["params_trainable"])
    assert configs["dpokit-lora"]["params_trainable"] == configs["trl-lora"]["params_trainable"]
    assert _positive_finite(configs["dpokit-lora"]["ratio_to_trl_lora"])
    assert configs["trl-lora"]["ratio_to_trl_lora"] == pytest.approx(1.0)


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao not installed (pip install -e '.[lowmem]')")
def test_quick_8bit_state_reports_its_loss_curve_beside_fp32(tmp_path, capsys):
    report = _run(tmp_path, "--no-trl", "--configs", "dpokit-defaults", "--extras", "dpokit-8bit")
    configs = report["configurations"]
    assert set(configs) == {"dpokit-defaults", "dpokit-8bit"}
    a, b = configs["dpokit-defaults"]["losses"], configs["dpokit-8bit"]["losses"]
    assert len(a) == len(b) == 4 and a[0] == pytest.approx(b[0], abs=1e-6)  # the same first step (same weights, batch)
    assert "dpokit-8bit: training loss vs dpokit-defaults over 4 steps" in capsys.readouterr().out


def test_rss_phases_names_the_first_phase_at_the_final_peak(monkeypatch):
    from benchmarks import bench_workers

    readings = iter([(100.0, 100.0), (900.0, 1500.0), (800.0, 1500.0), (1200.0, 1500.0)])  # (VmRSS, VmHWM)
    now = {}
    monkeypatch.setattr(bench_workers, "_status_mb", lambda field: now[field])
    phases = bench_workers.RssPhases()
    assert phases.peak_phase() is None
    for name in ("start", "precompute", "setup", "step 0"):
        now["VmRSS"], now["VmHWM"] = next(readings)
        phases.mark(name)
    # The precompute set the peak; the later phases only reached it again or stayed below.
    assert phases.peak_phase() == "precompute"
    assert [m["rss_mb"] for m in phases.marks] == [100.0, 900.0, 800.0, 1200.0]


def test_rss_phase_line_says_which_phase_set_the_peak():
    from benchmarks.bench_report import rss_phase_line

    entry = {"peak_rss_mb": 2375.2, "peak_rss_phase": "step 1", "rss_after_model_load_mb": 436.4,
             "rss_after_precompute_mb": 957.0, "peak_rss_before_steps_mb": 1058.3}
    assert rss_phase_line("dpokit-lowmem", entry) == (
        "dpokit-lowmem: peak RSS 2375 MB set in step 1; RSS after model load 436, after reference precompute 957, "
        "peak before the first step 1058")
