"""Ratios, FLOP shares, target verdicts and the printed tables of `rlhf_speed.py`."""

from __future__ import annotations

from benchmarks.bench_report import _fmt, _ratio

# Issue 9's targets, reported against (never tuned for).
RLOO_SPEEDUP_TARGET = 2.0  # dpokit RLOO step ≥ 2× as fast as TRL's ...
RLOO_RSS_TARGET = 0.5  # ... at ≤ 0.5× its peak RSS
SAMPLER_PEAK_TARGET = 0.5  # sampler FLOPs ≥ 50% of the fp32 matmul peak


def sampler_gflops(entry: dict, params: int) -> float:
    """2·N FLOPs per token the sampler handles: each sequence's prompt once (the prefill) and
    each generated token up to its EOS (what a finished row idles through is not counted)."""
    tokens = entry["prompt_tokens"] + entry["generated_tokens"]
    return 2.0 * params * tokens / sum(entry["call_seconds"]) / 1e9


def _shape_of(name: str) -> str:
    return name.split("@", 1)[1]


def enrich_rollout(rollout: dict, peak: float) -> None:
    trl = {_shape_of(n): e for n, e in rollout.items() if e.get("engine") == "trl" and "tokens_per_s" in e}
    for name, e in rollout.items():
        if "tokens_per_s" not in e:
            continue
        e["useful_gflops"] = sampler_gflops(e, e["params_total"])
        e["fraction_of_matmul_peak"] = e["useful_gflops"] / peak
        e["fraction_of_matmul_peak_non_embedding"] = sampler_gflops(e, e["params_non_embedding"]) / peak
        base = trl.get(_shape_of(name))
        e["ratio_to_trl"] = _ratio(e["tokens_per_s"], base["tokens_per_s"]) if base else None


def enrich_steps(steps: dict) -> None:
    """Speed-up = TRL's s/step ÷ this s/step (> 1: faster than TRL); RSS ratio = this ÷ TRL's."""
    bases = {key: steps.get(name) for key, name in (("trl", "trl-rloo"), ("trl_nogc", "trl-rloo-nogc"))}
    for e in steps.values():
        if "seconds_per_step" not in e:
            continue
        for key, base in bases.items():
            ok = base is not None and "seconds_per_step" in base
            e[f"speedup_vs_{key}"] = _ratio(base["seconds_per_step"], e["seconds_per_step"]) if ok else None
            e[f"rss_ratio_to_{key}"] = _ratio(e["peak_rss_mb"], base["peak_rss_mb"]) if ok else None


def targets(rollout: dict, steps: dict) -> dict:
    """Each target with what was measured (None: not measured) and whether it is met."""
    rloo = steps.get("dpokit-rloo", {})
    speed, rss = rloo.get("speedup_vs_trl"), rloo.get("rss_ratio_to_trl")
    samplers = {_shape_of(n): e["fraction_of_matmul_peak"] for n, e in rollout.items()
                if e.get("engine") == "dpokit" and "fraction_of_matmul_peak" in e}
    verdict = lambda ok, value: None if value is None else ok
    return {
        "rloo_speedup_vs_trl": {"target": RLOO_SPEEDUP_TARGET, "measured": speed,
                                "met": verdict(speed is not None and speed >= RLOO_SPEEDUP_TARGET, speed)},
        "rloo_rss_ratio_to_trl": {"target": RLOO_RSS_TARGET, "measured": rss,
                                  "met": verdict(rss is not None and rss <= RLOO_RSS_TARGET, rss)},
        "sampler_fraction_of_matmul_peak": {"target": SAMPLER_PEAK_TARGET, "measured": samplers,
                                            "met": {s: f >= SAMPLER_PEAK_TARGET for s, f in samplers.items()}},
    }


def enrich(rollout: dict, steps: dict, peak: float) -> dict:
    enrich_rollout(rollout, peak)
    enrich_steps(steps)
    return {"rollout": rollout, "steps": steps, "targets": targets(rollout, steps)}


def rollout_rows(rollout: dict) -> list[str]:
    head = ("| configuration | sequences | max new tokens | s/call | mean completion tokens | generated tokens/s "
            "| × TRL | peak RSS MB | useful GFLOP/s | % matmul peak |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in rollout.items():
        if "tokens_per_s" not in e:
            rows.append(f"| {name} | failed |" + " |" * 8)
            continue
        rows.append(
            f"| {name} | {e['sequences_per_call']} | {name.rsplit('x', 1)[1]} | {e['seconds_per_call']:.2f} "
            f"| {e['mean_completion_tokens']:.1f} | {e['tokens_per_s']:.1f} | {_fmt(e.get('ratio_to_trl'), '.2f')} "
            f"| {e['peak_rss_mb']:.0f} | {e['useful_gflops']:.1f} | {100 * e['fraction_of_matmul_peak']:.0f}% |"
        )
    return rows


def step_rows(steps: dict) -> list[str]:
    head = ("| configuration | s/step | mean completion tokens | peak RSS MB | speed × TRL | speed × TRL-nogc "
            "| RSS × TRL | RSS × TRL-nogc |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in steps.items():
        if "seconds_per_step" not in e:
            rows.append(f"| {name} | failed |" + " |" * 6)
            continue
        rows.append(
            f"| {name} | {e['seconds_per_step']:.2f} | {_fmt(e.get('mean_completion_tokens'), '.1f')} | {e['peak_rss_mb']:.0f} "
            f"| {_fmt(e.get('speedup_vs_trl'), '.2f')} | {_fmt(e.get('speedup_vs_trl_nogc'), '.2f')} "
            f"| {_fmt(e.get('rss_ratio_to_trl'), '.2f')} | {_fmt(e.get('rss_ratio_to_trl_nogc'), '.2f')} |"
        )
    return rows


def format_report(report: dict) -> str:
    mm, t = report["matmul"], report["targets"]
    lines = ["", "Rollout (sampling):", *rollout_rows(report["rollout"]), "", "Training step:", *step_rows(report["steps"]), ""]
    lines.append(f"matmul peak: fp32 {mm['size']}x{mm['size']}: {mm['gflops_before']:.1f} GFLOP/s before, "
                 f"{mm['gflops_after']:.1f} after; the table uses {mm['gflops_peak']:.1f}")
    if report.get("trl_skipped"):
        lines.append(f"TRL rows skipped: {report['trl_skipped']}")
    speed, rss = t["rloo_speedup_vs_trl"], t["rloo_rss_ratio_to_trl"]
    lines.append(f"target: dpokit RLOO ≥ {speed['target']:g}× TRL's speed: {_fmt(speed['measured'], '.2f')}× "
                 f"({'met' if speed['met'] else 'not met' if speed['met'] is False else 'not measured'})")
    lines.append(f"target: dpokit RLOO peak RSS ≤ {rss['target']:g}× TRL's: {_fmt(rss['measured'], '.2f')}× "
                 f"({'met' if rss['met'] else 'not met' if rss['met'] is False else 'not measured'})")
    for shape, frac in t["sampler_fraction_of_matmul_peak"]["measured"].items():
        lines.append(f"target: sampler ≥ {100 * SAMPLER_PEAK_TARGET:.0f}% of the matmul peak at {shape}: {100 * frac:.0f}% "
                     f"({'met' if frac >= SAMPLER_PEAK_TARGET else 'not met'})")
    return "\n".join(lines)
